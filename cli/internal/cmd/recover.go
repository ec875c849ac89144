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

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/crypto"
)

// prepareRecovery makes the request that unlocks the node a DescribeResponse describes.
type prepareRecovery = clusterclient.PrepareRecovery

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
	recovery := e.recovery(p, validator, prepare)
	recovered, failed := 0, 0
	for _, t := range targets {
		p.Step("Recovering %s (%s)", t.Name, net.JoinHostPort(t.IP, strconv.Itoa(recoverproto.Port)))
		running, err := recovery.RecoverNode(ctx, t)
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

// waitingFor tells the user that a command waits for a booting node's API.
func waitingFor(p *progress) func(what string) {
	return func(what string) { p.Detail("waiting for %s (the node is still booting)", what) }
}

// recovery unlocks restarted control planes whose attestation validator accepts.
func (e *env) recovery(p *progress, validator attestation.Validator, prepare prepareRecovery) clusterclient.Recovery {
	return clusterclient.Recovery{
		API: e.deps.recoverer, Booting: e.deps.booting, Reachable: e.deps.reachable,
		Validator: validator, Prepare: prepare, Waiting: waitingFor(p),
	}
}

// waitForAPI waits until the cluster's API server lists its nodes.
func (e *env) waitForAPI(ctx context.Context, timeout time.Duration) error {
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	return imagerollout.WaitForAPI(ctx, k8s, timeout, 2*time.Second)
}
