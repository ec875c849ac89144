// Package leader is the Lease the control planes' upgrade controllers take turns on.
//
// controller-runtime names each process it elects by hostname and a random UUID. On one control plane that
// costs a whole lease duration per upgrade: while kubeadm moves etcd and the API server, the leader cannot renew
// for longer than its renew deadline, exits, and its restarted container (a new UUID) waits until its own
// predecessor's Lease expires. Here a replica is named by its pod instead: the restarted container holds the same
// name, so client-go's elector treats the Lease as its own and renews it at once. Two live processes never share
// a name: a pod runs one container of a name at a time, and a replacement pod has a new name.
package leader

import (
	"errors"
	"fmt"
	"time"

	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Lock returns the Lease namespace/name, held in the name of identity (the pod's name). Its API calls time out
// after half the renew deadline, as controller-runtime's own lock does, so one hung request cannot cost the lease.
func Lock(cfg *rest.Config, namespace, name, identity string, renewDeadline time.Duration) (resourcelock.Interface, error) {
	if identity == "" {
		return nil, errors.New("the leader identity is empty (set it to the pod's name)")
	}
	if namespace == "" || name == "" {
		return nil, errors.New("the Lease needs a namespace and a name")
	}
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	cfg.Timeout = max(renewDeadline/2, time.Second)
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a client for the Lease: %w", err)
	}
	coordination, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a client for the Lease: %w", err)
	}
	return resourcelock.New(resourcelock.LeasesResourceLock, namespace, name, core, coordination,
		resourcelock.ResourceLockConfig{Identity: identity})
}
