// Package kubeadm runs `kubeadm init`, `kubeadm join` and `kubeadm reset` on the node with a configuration from
// kubeadmconfig. The configuration (it holds the bootstrap token) is written to a private temporary file
// that is removed afterwards; kubeadm's output is streamed to the caller's writer line by line.
//
// kubeadm expects an init system to (re)start the kubelet: there is none here, so the kubelet supervisor
// (package kubelet) must be running while kubeadm runs; it starts the kubelet as soon as kubeadm has written
// its configuration, and kubeadm then finds it up.
package kubeadm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadmconfig"
)

// Executor runs a command with environment env, writing its combined output to out.
type Executor interface {
	Run(ctx context.Context, name string, args, env []string, out io.Writer) error
}

// Runner runs kubeadm.
type Runner struct {
	// Exec runs commands; nil means OSExecutor.
	Exec Executor
	// Kubeadm is the kubeadm binary.
	Kubeadm string
	// Env is kubeadm's environment; its PATH must include the kubelet (preflight runs `kubelet --version`).
	Env []string
	// TempDir holds the configuration while kubeadm runs; "" means os.TempDir().
	TempDir string
	// ProcSys is the node's /proc/sys; "" means /proc/sys.
	ProcSys string
	// Out receives kubeadm's output.
	Out io.Writer
	// Kubelet, if set, stops the kubelet while `kubeadm reset` runs (kubelet.Supervisor): kubeadm cannot
	// stop it without an init system.
	Kubelet interface {
		WhileStopped(ctx context.Context, f func(context.Context) error) error
	}
}

// Init runs `kubeadm init` with config.
func (r *Runner) Init(ctx context.Context, config []byte) error {
	return r.run(ctx, "init", config, "--skip-token-print", "--skip-certificate-key-print")
}

// Join runs `kubeadm join` with config.
func (r *Runner) Join(ctx context.Context, config []byte) error {
	return r.run(ctx, "join", config)
}

// Reset runs `kubeadm reset --force`: it removes what a failed or cut-off `kubeadm join` or init left (the
// kubelet's configuration and credentials, static pod manifests, a control plane's etcd data), so that it
// can run again. kubeadm cannot stop the kubelet without an init system: Kubelet stops it meanwhile, and
// the supervisor then waits for the configuration the next join or init writes.
func (r *Runner) Reset(ctx context.Context) error {
	reset := func(ctx context.Context) error { return r.kubeadm(ctx, "reset", "--force", "--v=1") }
	if r.Kubelet == nil {
		return reset(ctx)
	}
	return r.Kubelet.WhileStopped(ctx, reset)
}

// UpgradeApply runs `kubeadm upgrade apply <version>` on a control plane: it moves the cluster's control plane
// (this node's static pods, etcd, the cluster's kubeadm and kubelet configuration, kube-proxy and CoreDNS) to
// version. It is the first step of a Kubernetes upgrade and runs on one control plane only; run again after
// an interruption, it finishes the move. The images must be in containerd already: nodes reach no registry.
func (r *Runner) UpgradeApply(ctx context.Context, version string) error {
	return r.kubeadm(ctx, "upgrade", "apply", version, "--yes", ignoreUpgradePreflight(), "--v=1")
}

// UpgradeNode runs `kubeadm upgrade node`: on another control plane it moves the static pods to the
// cluster's version; on every node it writes the kubelet's new configuration.
func (r *Runner) UpgradeNode(ctx context.Context) error {
	return r.kubeadm(ctx, "upgrade", "node", ignoreUpgradePreflight(), "--v=1")
}

// kubeadm runs kubeadm with args, its output to Out.
func (r *Runner) kubeadm(ctx context.Context, args ...string) error {
	exe := r.Exec
	if exe == nil {
		exe = OSExecutor{}
	}
	out := r.Out
	if out == nil {
		out = io.Discard
	}
	if err := exe.Run(ctx, r.Kubeadm, args, r.Env, out); err != nil {
		return fmt.Errorf("kubeadm %s: %w", strings.Join(subcommand(args), " "), err)
	}
	return nil
}

func (r *Runner) run(ctx context.Context, cmd string, config []byte, flags ...string) error {
	// Pods are routed through the node: kubeadm's preflight requires IPv4 forwarding, which is a setting
	// of the node's own network namespace.
	if err := r.enableIPForwarding(); err != nil {
		return err
	}
	f, err := os.CreateTemp(r.TempDir, "kubeadm-"+cmd+"-*.yaml")
	if err != nil {
		return fmt.Errorf("kubeadm %s: writing configuration: %w", cmd, err)
	}
	path := f.Name()
	defer os.Remove(path)
	// CreateTemp makes the file 0600; the token in it stays private.
	if _, err := f.Write(config); err != nil {
		_ = f.Close()
		return fmt.Errorf("kubeadm %s: writing configuration: %w", cmd, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("kubeadm %s: writing configuration: %w", cmd, err)
	}
	return r.kubeadm(ctx, append([]string{cmd, "--config=" + path, "--v=1"}, flags...)...)
}

func (r *Runner) enableIPForwarding() error {
	procSys := r.ProcSys
	if procSys == "" {
		procSys = "/proc/sys"
	}
	path := filepath.Join(procSys, "net/ipv4/ip_forward")
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling IPv4 forwarding: %w", err)
	}
	return nil
}

// OSExecutor runs commands as child processes, each in its own process group. On cancellation the group
// gets SIGTERM and, 10 s later, the command SIGKILL.
type OSExecutor struct{}

// Run runs name with args.
func (OSExecutor) Run(ctx context.Context, name string, args, env []string, out io.Writer) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		return errors.Join(err, ctx.Err())
	}
	return err
}

// subcommand returns the leading words of args that are not flags ("upgrade apply v1.34.10").
func subcommand(args []string) []string {
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			return args[:i]
		}
	}
	return args
}

func ignoreUpgradePreflight() string {
	return "--ignore-preflight-errors=" + strings.Join(kubeadmconfig.IgnoredUpgradePreflightErrors, ",")
}
