package reattest

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the kube-system Lease that makes one JoinService (of one per control plane) the one that
// re-attests.
const LeaseName = "constellation-reattestation"

// RunAsLeader runs r while identity holds the Lease in namespace, until ctx ends; another control plane's
// JoinService takes over within the lease duration when this one stops.
func RunAsLeader(ctx context.Context, k8s kubernetes.Interface, namespace, identity string, r *Reattester) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: namespace},
		Client:     k8s.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   30 * time.Second,
		RenewDeadline:   20 * time.Second,
		RetryPeriod:     5 * time.Second,
		ReleaseOnCancel: true,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				r.log.Info("re-attesting the cluster's nodes", "interval", r.cfg.Interval, "cordon", !r.cfg.NoCordon)
				r.Run(ctx)
			},
			OnStoppedLeading: func() { r.log.Info("no longer the re-attesting JoinService") },
		},
	})
	if err != nil {
		return fmt.Errorf("re-attestation leader election: %w", err)
	}
	// Run returns when leadership is lost; stand for election again until ctx ends.
	for ctx.Err() == nil {
		le.Run(ctx)
	}
	return nil
}
