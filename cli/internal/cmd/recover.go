package cmd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// recoverer unlocks a restarted node over aTLS (the handshake checks the node first): it asks the node to
// describe its disk, prepares the request from that, and sends it.
type recoverer interface {
	Recover(ctx context.Context, endpoint string, validator attestation.Validator, prepare prepareRecovery) error
}

// prepareRecovery makes the request that unlocks the node a DescribeResponse describes.
type prepareRecovery = func(ctx context.Context, desc *recoverproto.DescribeResponse) (*recoverproto.RecoverRequest, error)

func newRecoverCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Unlock restarted control planes with the master secret",
		Long: `When every control plane restarted, none can hand the others their state disk keys: their
state disks stay locked and Kubernetes does not come back. recover checks each control plane's
attestation (the configured measurements, and PCR 15 zero: a node that has not unlocked yet) and then
sends it the master secret from constellation-mastersecret.json over attested TLS. The node unlocks its
state disk, locks itself to the cluster again (PCR 15), reinstalls its components and restarts its
Kubernetes services from the encrypted disk. recover then waits for the Kubernetes API.

With user-managed keys (kms.awsKMS), a disk's key exists only wrapped by your KMS key: recover reads the
wrapped key each control plane keeps beside its disk, has the KMS unwrap it (with the credentials of
kms.awsKMS.credentialsFile, else your AWS environment), and sends the key with the master secret, which
still gives the cluster's identity. A KMS that refuses (a disabled key, no permission) leaves the disks
locked.

Nodes that do not wait for recovery (running normally, or recovered already) are reported and left
alone; re-running recover is safe.`,
		Example: `  constellation recover
  constellation recover --node cp-0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := cmd.Flags().GetStringSlice(flagNode)
			if err != nil {
				return err
			}
			return e.recover(cmd.Context(), nodes)
		},
	}
	cmd.Flags().StringSlice(flagNode, nil, "control plane to recover, by name or address (repeatable; default: every control plane)")
	_ = cmd.RegisterFlagCompletionFunc(flagNode, e.completeNodes)
	return cmd
}

func (e *env) recover(ctx context.Context, only []string) error {
	cfg, st, err := e.loadInitialized("recover")
	if err != nil {
		return err
	}
	ms, err := crypto.ReadMasterSecret(e.files, crypto.MasterSecretFileName)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing: without the master secret the nodes cannot be unlocked", e.path(crypto.MasterSecretFileName))
	}
	if err != nil {
		return err
	}
	validator, err := e.validator(cfg, cfg.Attestation.Measurements.WithFreshNode())
	if err != nil {
		return err
	}
	prepare, err := e.recoverRequest(ctx, cfg, ms)
	if err != nil {
		return err
	}
	targets, err := selectNodes(st, only)
	if err != nil {
		return err
	}
	if len(only) == 0 {
		targets = slices.DeleteFunc(targets, func(t clusterclient.Target) bool { return t.Role != config.RoleControlPlane })
	}

	p := e.progress()
	recovered, failed := 0, 0
	for _, t := range targets {
		endpoint := net.JoinHostPort(t.IP, strconv.Itoa(recoverproto.Port))
		p.Step("Recovering %s (%s)", t.Name, endpoint)
		running, err := e.recoverNode(ctx, p, t, endpoint, validator, prepare)
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(e.errOut, "✗ %s: %v\n", t.Name, err)
		case running:
			p.Detail("%s runs normally (its VerificationService answers); left alone", t.Name)
			p.Done()
		default:
			recovered++
			p.Done()
		}
	}
	if failed > 0 {
		err := fmt.Errorf("%d of %d control planes could not be recovered: if a node failed attestation, nothing was sent to it", failed, len(targets))
		return err
	}
	if recovered > 0 {
		p.Step("Waiting for the Kubernetes API")
		if err := e.waitForAPI(ctx, 10*time.Minute); err != nil {
			return fmt.Errorf("the nodes are unlocked, but the Kubernetes API does not answer yet: %w\nCheck again with 'constellation status'", err)
		}
		p.Done()
	}
	fmt.Fprintf(e.out, "Recovered %d control plane(s) (%s).\n", recovered, p.Total())
	return nil
}

// recoverNode sends the master secret to one node. A node whose VerificationService answers runs normally (it
// is a pod, which needs the unlocked state disk): it is left alone. A node whose Recovery API refuses
// connections is still booting: wait for it.
// waitingFor tells the user that a command waits for a booting node's API.
func waitingFor(p *progress) func(what string) {
	return func(what string) { p.Detail("waiting for %s (the node is still booting)", what) }
}

func (e *env) recoverNode(ctx context.Context, p *progress, t clusterclient.Target, endpoint string, validator attestation.Validator,
	prepare prepareRecovery,
) (running bool, err error) {
	runs := func() bool { return e.deps.reachable(ctx, net.JoinHostPort(t.IP, strconv.Itoa(verifyproto.Port))) }
	if runs() {
		return true, nil
	}
	return e.deps.booting.Do(ctx, t.Name+"'s Recovery API", waitingFor(p), func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		return e.deps.recoverer.Recover(cctx, endpoint, validator, prepare)
	}, runs)
}

// waitForAPI waits until the cluster's API server lists its nodes.
func (e *env) waitForAPI(ctx context.Context, timeout time.Duration) error {
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		_, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(2 * time.Second):
		}
	}
}
