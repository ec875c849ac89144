package clusterclient

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// Initer sends one init request (GRPC does; tests fake it).
type Initer interface {
	Init(ctx context.Context, endpoint string, validator attestation.Validator, req *initproto.InitRequest,
		progress func(step, message string)) (*initproto.InitSuccessResponse, error)
}

// InitRequest is one attempt to initialize the cluster at Endpoint.
type InitRequest struct {
	Endpoint string
	Request  *initproto.InitRequest
	// Fresh accepts the node as it must be before init: the configured measurements, PCR 15 zero.
	Fresh attestation.Validator
	// Resume, if set, accepts the node as a node of this cluster (PCR 15 = its cluster ID): one that an
	// interrupted init of the same master secret left initializing or initialized. Set it only when the
	// master secret existed before this attempt.
	Resume attestation.Validator
	// Identity is what the node must derive from the master secret and salt sent.
	Identity crypto.Identity
	// Progress receives the node's steps; Notice what the client decides along the way.
	Progress func(step, message string)
	Notice   func(message string)
}

// ErrWrongIdentity is returned for a node that answered with a cluster or owner ID that does not follow from
// the master secret: it does not run the project's bootstrapper.
var ErrWrongIdentity = errors.New("the node answered with a cluster ID or owner ID that does not follow from the master secret; do not use this cluster")

// ErrInitCutOff is returned when the connection to the node ended after its init had begun and before it
// reported the result, and asking it again did not resume it: the node restarted or lost power (or the
// network failed). Its next boot redoes the cut-off init when it is asked again.
var ErrInitCutOff = errors.New("the connection to the node ended during its init")

// Init initializes the cluster, waiting while the node boots. A node that is not fresh is asked again as a
// node of this cluster (r.Resume), so that an interrupted init resumes instead of failing; a failure the
// node reported (InitFailedError) is final.
func Init(ctx context.Context, api Initer, b Booting, r InitRequest) (*initproto.InitSuccessResponse, error) {
	notice := r.Notice
	if notice == nil {
		notice = func(string) {}
	}
	// Whether the node reported progress: then a failure without a result cut the init off.
	began := false
	progress := func(step, message string) {
		began = true
		if r.Progress != nil {
			r.Progress(step, message)
		}
	}
	var resp *initproto.InitSuccessResponse
	_, err := b.Do(ctx, "the node's Init API", func(what string) { notice(fmt.Sprintf("waiting for %s (the node is still booting)", what)) },
		func() error {
			var err error
			resp, err = api.Init(ctx, r.Endpoint, r.Fresh, r.Request, progress)
			return err
		}, nil)
	var failed *InitFailedError
	if err != nil && r.Resume != nil && !errors.As(err, &failed) && ctx.Err() == nil {
		notice("the node is not fresh; checking whether it is this cluster's, initialized by an interrupted apply")
		var resumeErr error
		if resp, resumeErr = api.Init(ctx, r.Endpoint, r.Resume, r.Request, progress); resumeErr == nil {
			err = nil
		} else if errors.As(resumeErr, &failed) {
			err = resumeErr
		} else {
			err = fmt.Errorf("%w\n(checked as a node of this cluster too: %v)", err, resumeErr)
		}
	}
	if err != nil && began && !errors.As(err, &failed) && ctx.Err() == nil {
		return nil, fmt.Errorf("%w: %w", ErrInitCutOff, err)
	}
	if err != nil {
		return nil, err
	}
	// The node derived them from what we sent; different values mean it is not running our bootstrapper.
	if subtle.ConstantTimeCompare(resp.GetClusterId(), r.Identity.ClusterID) != 1 || subtle.ConstantTimeCompare(resp.GetOwnerId(), r.Identity.OwnerID) != 1 {
		return nil, ErrWrongIdentity
	}
	return resp, nil
}

// InitConfig is what an init of the first control plane sends and checks, as the admin configured it.
type InitConfig struct {
	// Endpoint is the cluster endpoint's host (the first control plane); APIServerCertSANs are the API
	// server certificate's further names (the endpoint is added).
	Endpoint          string
	APIServerCertSANs []string
	MasterSecret      crypto.MasterSecret
	// Resuming says the master secret existed before this attempt: a node of this cluster, which an
	// interrupted init left initializing or initialized, is accepted too.
	Resuming bool
	// InitSecret proves the request comes from the admin who created the node (its hash is in the node's
	// metadata).
	InitSecret        []byte
	ClusterName       string
	KubernetesVersion string
	Components        []*components.Component
	// Attestation is the admin's attestation section: the node is validated against it before anything is
	// sent, and the JoinService enforces it.
	Attestation    config.AttestationConfig
	KMSURI         string
	KMSCredentials *awskms.Credentials
	// Validator makes the validator of the attestation section's variant for reference values.
	Validator func(refs measurements.M) (attestation.Validator, error)
}

// NewInitRequest builds the init request of c: the node must show the configured measurements with PCR 15
// zero, or, when resuming, this cluster's ID in PCR 15.
func NewInitRequest(c InitConfig) (InitRequest, error) {
	id, err := c.MasterSecret.Identity()
	if err != nil {
		return InitRequest{}, err
	}
	fresh, err := c.Validator(c.Attestation.Measurements.WithFreshNode())
	if err != nil {
		return InitRequest{}, err
	}
	resumeRefs, err := c.Attestation.Measurements.WithClusterID(id.ClusterID)
	if err != nil {
		return InitRequest{}, err
	}
	resume, err := c.Validator(resumeRefs)
	if err != nil {
		return InitRequest{}, err
	}
	sans := slices.Clone(c.APIServerCertSANs)
	if !slices.Contains(sans, c.Endpoint) {
		sans = append(sans, c.Endpoint)
	}
	attestationConfig, err := yaml.Marshal(c.Attestation)
	if err != nil {
		return InitRequest{}, err
	}
	req := &initproto.InitRequest{
		InitSecret: c.InitSecret, MasterSecret: c.MasterSecret.Key, Salt: c.MasterSecret.Salt, KubernetesVersion: c.KubernetesVersion,
		KubernetesComponents: c.Components, ClusterName: c.ClusterName, ApiserverCertSans: sans,
		AttestationConfig: attestationConfig, KmsUri: c.KMSURI,
	}
	if k := c.KMSCredentials; k != nil {
		req.KmsCredentials = &initproto.AWSCredentials{AccessKeyId: k.AccessKeyID, SecretAccessKey: k.SecretAccessKey, SessionToken: k.SessionToken}
	}
	r := InitRequest{Endpoint: net.JoinHostPort(c.Endpoint, strconv.Itoa(initproto.Port)), Request: req, Fresh: fresh, Identity: id}
	if c.Resuming {
		r.Resume = resume
	}
	return r, nil
}
