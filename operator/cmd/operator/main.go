// Command operator is the in-cluster upgrade controller (operator/internal/controller): it carries the
// cluster's KubernetesUpgrade out, so that a Kubernetes upgrade goes on without the CLI that started it. It
// runs on the control planes; one of them leads at a time (a Lease in kube-system).
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/operator/internal/controller"
	"github.com/constellation-go/constellation/operator/internal/leader"
)

// HealthPort serves /healthz and /readyz on every control plane.
const HealthPort = 30093

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "operator:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("operator", flag.ContinueOnError)
	healthAddr := fs.String("health-addr", ":"+strconv.Itoa(HealthPort), "address of /healthz and /readyz")
	leaderElect := fs.Bool("leader-elect", true, "take the kube-system Lease before acting (more than one control plane runs the controller)")
	identity := fs.String("leader-identity", "", "the name this replica holds the Lease in: its pod's name, so a restarted container leads again at once (empty: hostname and a random ID, as controller-runtime does)")
	interval := fs.Duration("interval", 0, "how often a moving upgrade is looked at (0: 2s)")
	logLevel, logFormat := service.LogFlags(fs)
	if err := service.ParseFlags(fs, "OPERATOR", args); err != nil {
		return err
	}
	log, err := service.NewLogger(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	restConfig, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("the in-cluster configuration: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	const leaseNamespace, leaseName, renewDeadline = "kube-system", "constellation-operator", 100 * time.Second
	var lock resourcelock.Interface
	if *leaderElect && *identity != "" {
		if lock, err = leader.Lock(restConfig, leaseNamespace, leaseName, *identity, renewDeadline); err != nil {
			return err
		}
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:  *healthAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        leaseName,
		LeaderElectionNamespace: leaseNamespace,
		// Named by the pod (leader.Lock): the leader exits while kubeadm moves etcd and the API server on a
		// single control plane, and its restarted container must not wait out its own Lease.
		LeaderElectionResourceLockInterface: lock,
		// A new leader must not act while the old one may still finish a pass.
		LeaderElectionReleaseOnCancel: true,
		// The API server is away for tens of seconds while kubeadm moves it (one control plane): a leader that
		// cannot renew for that long exits. Only a dead leader's node makes the others wait this long.
		LeaseDuration: ptr.To(2 * time.Minute), RenewDeadline: ptr.To(renewDeadline), RetryPeriod: ptr.To(5 * time.Second),
	})
	if err != nil {
		return fmt.Errorf("starting the controller manager: %w", err)
	}
	kube, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	if err := (&controller.Reconciler{Client: mgr.GetClient(), Kube: kube, Interval: *interval}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	log.Info("upgrade controller starting", "leaderElection", *leaderElect)
	return mgr.Start(ctrl.SetupSignalHandler())
}
