package cmd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/clusterupgrade"
	"github.com/constellation-go/constellation/internal/constellation/services"
)

// deps are the commands' connections to the world; tests replace them with fakes.
type deps struct {
	// infra returns the infrastructure of the workspace at the absolute path ws.
	infra func(ws string, progress func(string)) (infrastructure, error)
	// artifacts locates the files shipped beside the CLI.
	artifacts func() (cloudcmd.Artifacts, error)
	initer    clusterclient.Initer
	attester  clusterclient.Attester
	recoverer clusterclient.Recoverer
	// booting bounds the wait for a node's API that does not listen yet.
	booting clusterclient.Booting
	// auditLog fetches a control plane's audit log.
	auditLog func(ctx context.Context, ip string) ([]byte, error)
	// reachable tells whether a TCP address accepts connections.
	reachable func(ctx context.Context, addr string) bool
	// kube returns a client of the cluster of an admin kubeconfig.
	kube func(kubeconfig []byte) (kubernetes.Interface, error)
	// upgrades returns a client of the cluster's KubernetesUpgrade (the upgrade controller's resource).
	upgrades func(kubeconfig []byte) (client.Client, error)
	// services returns the services' Helm release in the cluster of an admin kubeconfig.
	services func(kubeconfig []byte) (servicesRelease, error)
	// isTerminal tells whether the user can answer a question on stdin.
	isTerminal func() bool
	// kubeconfigPath is the user's kubeconfig, which `apply --merge-kubeconfig` extends.
	kubeconfigPath func() string
}

func defaultDeps() deps {
	return deps{
		infra: func(ws string, progress func(string)) (infrastructure, error) {
			a, err := cloudcmd.FindArtifacts()
			if err != nil {
				return nil, err
			}
			return &cloudcmd.Terraform{Workspace: ws, Artifacts: a, Progress: progress}, nil
		},
		artifacts: cloudcmd.FindArtifacts,
		initer:    clusterclient.GRPC{},
		attester:  clusterclient.GRPC{},
		recoverer: clusterclient.GRPC{},
		booting:   clusterclient.DefaultBooting,
		auditLog:  fetchAuditLog,
		reachable: clusterclient.DialReachable,
		kube:      clusterupgrade.NewKubeClient,
		upgrades:  clusterupgrade.NewUpgradeClient,
		services: func(kubeconfig []byte) (servicesRelease, error) {
			return services.NewClient(kubeconfig, slog.New(slog.DiscardHandler))
		},
		isTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
		kubeconfigPath: func() string {
			if p := os.Getenv("KUBECONFIG"); p != "" {
				return strings.Split(p, string(os.PathListSeparator))[0]
			}
			home, _ := os.UserHomeDir()
			return filepath.Join(home, ".kube", "config")
		},
	}
}

// servicesRelease is the services' Helm release (internal/constellation/services).
type servicesRelease interface {
	Current(ctx context.Context) (services.Release, error)
	Upgrade(ctx context.Context, change services.Change) (services.Release, bool, error)
}

// progress prints what a long command is doing to stderr, one line per step with its duration, so
// stdout stays for results (and -o json).
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	step  string
	at    time.Time
}

func (e *env) progress() *progress {
	return &progress{w: e.errOut, start: time.Now()}
}

// Step ends the current step and starts a new one.
func (p *progress) Step(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finish()
	p.step, p.at = fmt.Sprintf(format, args...), time.Now()
	fmt.Fprintf(p.w, "• %s ...\n", p.step)
}

// Detail prints a line that belongs to the current step.
func (p *progress) Detail(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "    %s\n", fmt.Sprintf(format, args...))
}

// Done ends the current step.
func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finish()
}

func (p *progress) finish() {
	if p.step == "" {
		return
	}
	fmt.Fprintf(p.w, "✓ %s (%s)\n", p.step, time.Since(p.at).Round(100*time.Millisecond))
	p.step = ""
}

// Total is the time since the command started.
func (p *progress) Total() time.Duration { return time.Since(p.start).Round(100 * time.Millisecond) }
