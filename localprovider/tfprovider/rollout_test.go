package tfprovider

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout/imagerollouttest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// imageValidator accepts documents "img:<PCR 4 in hex>:<node>" whose PCR 4 is the one its reference values
// expect: a node of another image fails.
type imageValidator struct{ pcr4 string }

func (imageValidator) Variant() variant.Variant { return variant.QEMUVTPM }

func (v imageValidator) Validate(_ context.Context, doc, _ []byte) ([]byte, error) {
	parts := strings.SplitN(string(doc), ":", 3)
	if len(parts) == 3 && parts[0] == "img" && parts[1] == v.pcr4 {
		return verifyproto.Binding(parts[2], nil), nil
	}
	return nil, &attestation.ValidationError{Variant: "qemu-vtpm", Mismatches: []attestation.PCRMismatch{{PCR: 4}}}
}

// rolloutNodes are local nodes that boot images: a moved node shows its new image's PCR 4 and reports a
// Ready heartbeat from after its reboot.
type rolloutNodes struct {
	t        *testing.T
	k8s      kubernetes.Interface
	attester fakeAttester
	pcr4     map[string]string // image → PCR 4
	running  map[string]string
	moves    []string
	failOn   string
	claimed  string
}

func (n *rolloutNodes) RunningImages([]string) map[string]string {
	out := map[string]string{}
	for k, v := range n.running {
		out[k] = v
	}
	return out
}

func (n *rolloutNodes) MoveNode(ctx context.Context, name, image string) error {
	if name == n.failOn {
		return errors.New("the node did not come up")
	}
	if n.running[name] == image {
		return nil
	}
	n.moves = append(n.moves, name+"="+image)
	n.running[name] = image
	n.attester[name] = "img:" + n.pcr4[image] + ":" + name
	node, err := n.k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(n.t, err)
	node.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Second))
	_, err = n.k8s.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (n *rolloutNodes) Claim(owner string) error {
	n.claimed = owner
	return nil
}

// memPrivate is a resource's private state.
type memPrivate map[string][]byte

func (p memPrivate) GetKey(_ context.Context, key string) ([]byte, diag.Diagnostics) {
	return p[key], nil
}

func (p memPrivate) SetKey(_ context.Context, key string, value []byte) diag.Diagnostics {
	if len(value) == 0 {
		delete(p, key)
	} else {
		p[key] = value
	}
	return nil
}

// unlocked counts the control planes the master secret unlocked.
type unlocked struct{ n int }

func (u *unlocked) Recover(context.Context, string, attestation.Validator, clusterclient.PrepareRecovery) error {
	u.n++
	return nil
}

// enforced are the PCRs a qemu-vtpm validator needs reference values of; in these tests only PCR 4 differs
// between images.
var enforced = []uint32{4, 9, 11, 12, 13}

// imageMeasurements are the measurements of an image whose PCR 4 is pcr4 (hex).
func imageMeasurements(t *testing.T, pcr4 string) measurements.M {
	t.Helper()
	m := measurements.M{}
	for _, i := range enforced {
		v := strings.Repeat("aa", 32)
		if i == 4 {
			v = pcr4
		}
		d, err := hex.DecodeString(v)
		require.NoError(t, err)
		m[i] = measurements.Measurement{Expected: d}
	}
	return m
}

// pcrAttestation is the resource's attestation of an image whose PCR 4 is pcr4.
func pcrAttestation(t *testing.T, pcr4, ca string) types.Object {
	t.Helper()
	values := map[string]attr.Value{}
	for i, v := range imageMeasurements(t, pcr4) {
		values[fmt.Sprint(i)] = types.ObjectValueMust(measurementType.AttrTypes, map[string]attr.Value{
			"expected": types.StringValue(hex.EncodeToString(v.Expected)), "warn_only": types.BoolValue(false),
		})
	}
	return types.ObjectValueMust(clusterAttestationType.AttrTypes, map[string]attr.Value{
		"variant": types.StringValue("qemu-vtpm"), "measurements": types.MapValueMust(measurementType, values),
		"platform_ca_certificate": types.StringValue(ca),
	})
}

// TestClusterImageRollout: new measurements with the image_dir they belong to roll the nodes out, control
// planes first; an image that does not boot to them is refused before anything moves; a roll-out that stops
// halfway keeps the state from before (so the next apply continues) and records its target privately, which
// Read accepts meanwhile.
func TestClusterImageRollout(t *testing.T) {
	ctx := context.Background()
	oldPCR, newPCR, otherPCR := strings.Repeat("11", 32), strings.Repeat("22", 32), strings.Repeat("33", 32)
	ca := string(vtpmtest.PlatformCA(t).CertificatePEM())
	testCases := map[string]struct {
		image, pcr4  string
		failOn       string
		wantMoves    []string
		wantUnlocked int
		wantErr      string
		wantPending  bool
	}{
		"a roll-out to the new image": {
			image: "/images/b", pcr4: newPCR,
			wantMoves: []string{"cp-0=/images/b", "worker-0=/images/b"}, wantUnlocked: 1,
		},
		"an image that does not boot to the measurements": {
			image: "/images/c", pcr4: newPCR, wantErr: "does not boot to the attestation's measurements",
		},
		"a node that does not come up": {
			image: "/images/b", pcr4: newPCR, failOn: "worker-0",
			wantMoves: []string{"cp-0=/images/b"}, wantUnlocked: 1, wantErr: "run terraform apply again", wantPending: true,
		},
		"new measurements without an image": {pcr4: otherPCR, wantErr: "set image_dir"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			attester := fakeAttester{}
			r := testClusterResource(t, &fakeIniter{}, attester, &bytes.Buffer{})
			r.validator = func(_ config.AttestationConfig, refs measurements.M) (attestation.Validator, error) {
				return imageValidator{pcr4: hex.EncodeToString(refs[4].Expected)}, nil
			}
			plan := testClusterPlan(t)
			plan.Attestation = pcrAttestation(t, oldPCR, ca)
			plan.ImageDir = types.StringValue("/images/a")
			created, d := create(t, r, plan)
			require.False(t, d.HasError(), "%v", d)

			k8s := rolloutCluster(t, oldPCR, ca)
			nodes := &rolloutNodes{
				t: t, k8s: k8s, attester: attester, failOn: tc.failOn,
				pcr4:    map[string]string{"/images/a": oldPCR, "/images/b": newPCR, "/images/c": otherPCR},
				running: map[string]string{"cp-0": "/images/a", "worker-0": "/images/a"},
			}
			for _, n := range []string{"cp-0", "worker-0"} {
				attester[n] = "img:" + oldPCR + ":" + n
			}
			rec := &unlocked{}
			r.kube = func([]byte) (kubernetes.Interface, error) { return k8s, nil }
			r.infra = func([]clusterclient.Target) (clusterInfra, error) { return nodes, nil }
			r.recoverer, r.reachable = rec, func(context.Context, string) bool { return false }
			r.measure = func(dir string) (measurements.M, string, error) {
				return imageMeasurements(t, nodes.pcr4[dir]), "sha256:" + dir, nil
			}
			r.rollout = imagerollout.Options{Wait: time.Second, Poll: 5 * time.Millisecond, DrainTimeout: time.Second}

			next := created
			next.Attestation = pcrAttestation(t, tc.pcr4, ca)
			next.ImageDir = types.StringValue(tc.image)
			if tc.image == "" {
				next.ImageDir = types.StringNull()
				created.ImageDir = types.StringNull()
			}
			planned, st := clusterSchema(t, r)
			require.False(t, st.Set(ctx, &created).HasError())
			require.False(t, planned.Set(ctx, &next).HasError())

			// What the plan refuses, the apply refuses too.
			mp := &resource.ModifyPlanResponse{Plan: planned}
			r.ModifyPlan(ctx, resource.ModifyPlanRequest{Plan: planned, State: st}, mp)
			planRefused := mp.Diagnostics.HasError()

			// Update's part, with its private state (which only Terraform's server can make).
			private := memPrivate{}
			got, prior := next, created
			diags := r.update(ctx, &got, &prior, private)
			assert.Equal(t, tc.wantMoves, nodes.moves)
			assert.Equal(t, tc.wantUnlocked, rec.n, "control planes unlocked with the master secret")
			assert.Equal(t, tc.wantPending, len(private[rolloutKey]) > 0, "the unfinished roll-out's private record")
			f := imagerollouttest.File(t, k8s)
			if tc.wantErr != "" {
				require.True(t, diags.HasError())
				assert.Contains(t, diagText(diags), tc.wantErr)
				if !tc.wantPending {
					assert.True(t, planRefused, "refused at plan time already")
					assert.Nil(t, f.Rollout, "nothing changed in the cluster")
					return
				}
				require.NotNil(t, f.Rollout, "both images stay trusted")

				// Terraform keeps the state from before: Read accepts the moved control plane through the private
				// record, and only through it.
				before := created
				d := r.refresh(ctx, &before, private)
				assert.False(t, d.HasError(), "%v", d)
				assert.Contains(t, fmt.Sprint(d.Warnings()), "did not finish")
				d = r.refresh(ctx, &before, memPrivate{})
				assert.Contains(t, diagText(d), "Node cp-0 no longer verifies")
				// Going back instead of finishing is refused in the plan; finishing is planned.
				assert.True(t, errorOn(unfinishedRollout(ctx, &before, private), "attestation"))
				assert.False(t, unfinishedRollout(ctx, &next, private).HasError())
				assert.False(t, unfinishedRollout(ctx, &before, memPrivate{}).HasError())

				// The next apply continues with the node that did not move.
				nodes.failOn = ""
				got, prior = next, created
				diags = r.update(ctx, &got, &prior, private)
				require.False(t, diags.HasError(), "%v", diags)
				assert.Equal(t, []string{"cp-0=/images/b", "worker-0=/images/b"}, nodes.moves)
				f = imagerollouttest.File(t, k8s)
			} else {
				assert.False(t, planRefused, "%v", mp.Diagnostics)
				require.False(t, diags.HasError(), "%v", diags)
			}
			assert.Empty(t, private[rolloutKey], "a finished roll-out leaves no private record")
			assert.Nil(t, f.Rollout, "afterwards only the new image is trusted")
			assert.Equal(t, newPCR, hex.EncodeToString(f.Measurements[4].Expected))
			assert.Equal(t, created.MasterSecret, got.MasterSecret)
			assert.Equal(t, "constellation_cluster tf", nodes.claimed)
			d = r.refresh(ctx, &got, memPrivate{})
			assert.False(t, d.HasError(), "every node verifies with the new measurements alone: %v", d)
		})
	}
}

// TestClusterAttestationChangeRefused: a running cluster's variant or platform CA does not change through
// Terraform; the plan says so.
func TestClusterAttestationChangeRefused(t *testing.T) {
	ctx := context.Background()
	r := testClusterResource(t, &fakeIniter{}, fakeAttester{}, &bytes.Buffer{})
	created, d := create(t, r, testClusterPlan(t))
	require.False(t, d.HasError(), "%v", d)
	next := created
	next.Attestation = testAttestation(t, testPCR, "another CA")
	planned, st := clusterSchema(t, r)
	require.False(t, st.Set(ctx, &created).HasError())
	require.False(t, planned.Set(ctx, &next).HasError())
	mp := &resource.ModifyPlanResponse{Plan: planned}
	r.ModifyPlan(ctx, resource.ModifyPlanRequest{Plan: planned, State: st}, mp)
	assert.True(t, errorOn(mp.Diagnostics, "attestation"), "%v", mp.Diagnostics)
	assert.Contains(t, diagText(mp.Diagnostics), "platform_ca_certificate back")
}

// rolloutCluster is a cluster whose JoinService trusts PCR 4 pcr4, with a Ready control plane and worker.
func rolloutCluster(t *testing.T, pcr4, ca string) *k8sfake.Clientset {
	t.Helper()
	return imagerollouttest.Cluster(t, attestconfig.File{AttestationConfig: config.AttestationConfig{
		Variant: "qemu-vtpm", Measurements: imageMeasurements(t, pcr4), PlatformCA: ca,
	}})
}
