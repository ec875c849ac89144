// Package controller is the in-cluster upgrade controller: it carries the cluster's KubernetesUpgrade out
// with kubeupgrade's passes and reports where it stands in the object's status, so that an upgrade goes on
// when the CLI that started it disconnects or is killed.
//
// The controller holds no state: each reconcile reads the KubernetesUpgrade and the Nodes and runs one pass.
// It runs again every Interval while the upgrade moves, on every change of a Node (an agent's report) and of
// the KubernetesUpgrade, and, once the upgrade is done or failed, every IdleInterval.
package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
)

// Reconciler reconciles the KubernetesUpgrade named v1alpha1.Name.
type Reconciler struct {
	// Client reads the KubernetesUpgrade and writes its status.
	Client client.Client
	// Kube is what kubeupgrade's passes use (uncached reads: a pass acts on what the API server says now).
	Kube kubernetes.Interface
	// Interval is how often a moving upgrade is looked at; default 2 s. IdleInterval is the same once it is
	// done or failed; default 1 minute.
	Interval, IdleInterval time.Duration
}

// SetupWithManager registers the controller: it watches the KubernetesUpgrade and every Node.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	toUpgrade := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: v1alpha1.Name}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("kubernetesupgrade").
		// The classic work queue: one object needs no priorities, and controller-runtime v0.24's priority
		// queue can leave a goroutine behind after the manager stopped (a goleak failure of this package's
		// test, once in CI).
		WithOptions(controller.Options{UsePriorityQueue: ptr.To(false)}).
		For(&v1alpha1.KubernetesUpgrade{}).
		Watches(&corev1.Node{}, toUpgrade).
		Complete(r)
}

// Reconcile runs one pass of the upgrade and writes its report.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	if req.Name != v1alpha1.Name {
		// Only the one object describes the cluster; others are reported and left alone.
		log.Info("ignoring a KubernetesUpgrade that is not the cluster's", "name", req.Name, "want", v1alpha1.Name)
		return ctrl.Result{}, nil
	}
	var u v1alpha1.KubernetesUpgrade
	if err := r.Client.Get(ctx, req.NamespacedName, &u); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	status := u.Status.DeepCopy()
	status.ObservedGeneration = u.Generation

	spec, err := u.Spec.Decode()
	if err != nil {
		status.Phase, status.Error = string(kubeupgrade.PhaseFailed), err.Error()
		return r.idle(ctx, &u, status)
	}
	if u.Spec.Retry > u.Status.Retried {
		cleared, err := kubeupgrade.ClearFailures(ctx, r.Kube, spec.Version)
		if err != nil {
			return ctrl.Result{}, err
		}
		log.Info("nodes retry their failed step", "nodes", cleared, "retry", u.Spec.Retry)
		status.Retried = u.Spec.Retry
	}

	prog, err := (&kubeupgrade.Reconciler{Client: r.Kube}).Reconcile(ctx, spec)
	if err != nil {
		// The API server restarts during the control plane's step: report and try again.
		log.Info("upgrade pass failed; trying again", "error", err.Error())
		status.Error = err.Error()
		if werr := r.writeStatus(ctx, &u, status); werr != nil && !apierrors.IsNotFound(werr) {
			log.Info("writing the status failed", "error", werr.Error())
		}
		return ctrl.Result{RequeueAfter: r.interval()}, nil
	}
	for _, d := range prog.Did {
		log.Info(d, "version", spec.Version)
	}
	status.SetProgress(prog)
	if prog.Phase == kubeupgrade.PhaseDone || prog.Phase == kubeupgrade.PhaseFailed {
		return r.idle(ctx, &u, status)
	}
	return ctrl.Result{RequeueAfter: r.interval()}, r.writeStatus(ctx, &u, status)
}

func (r *Reconciler) idle(ctx context.Context, u *v1alpha1.KubernetesUpgrade, status *v1alpha1.KubernetesUpgradeStatus) (ctrl.Result, error) {
	idle := r.IdleInterval
	if idle == 0 {
		idle = time.Minute
	}
	return ctrl.Result{RequeueAfter: idle}, r.writeStatus(ctx, u, status)
}

func (r *Reconciler) interval() time.Duration {
	if r.Interval == 0 {
		return 2 * time.Second
	}
	return r.Interval
}

// writeStatus patches the status if it changed (the time of the report alone is no change).
func (r *Reconciler) writeStatus(ctx context.Context, u *v1alpha1.KubernetesUpgrade, status *v1alpha1.KubernetesUpgradeStatus) error {
	status.UpdateTime = u.Status.UpdateTime
	if equalStatus(&u.Status, status) {
		return nil
	}
	status.UpdateTime = metav1.Now()
	base := u.DeepCopy()
	u.Status = *status
	if err := r.Client.Status().Patch(ctx, u, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("writing the status of KubernetesUpgrade %s: %w", u.Name, err)
	}
	return nil
}

func equalStatus(a, b *v1alpha1.KubernetesUpgradeStatus) bool {
	// Semantic: an empty list equals a missing one, and times are compared to the second the API keeps.
	return equality.Semantic.DeepEqual(a, b)
}
