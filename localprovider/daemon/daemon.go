// Package daemon keeps a local cluster's provider side alive between Terraform runs: the metadata API and
// the component server on the cluster bridge's address (package cluster's Serve), and with Spec.LocalKMS a
// KMS of the AWS KMS API. Nodes need them for as long as they run, but the Terraform provider that creates
// the nodes exits after each `terraform apply`.
//
// The network resource writes the cluster's Spec and starts the daemon; each node resource registers its
// instance before it starts the node and reloads the daemon (SIGHUP), so the metadata API lists the node
// when its bootstrapper first asks. Files, below node.DefaultStateRoot/<cluster>:
//
//	provider.json         the Spec
//	instances/<node>.json a node's metadata.Instance
//	daemon.json           the running daemon (PID and start time)
//	daemon.log            its log (appended)
//	kms.db/               the local KMS's keys (Spec.LocalKMS); kept until Remove
//
// A program that starts the daemon with Start must call Main first thing in main (like node.InitMain).
package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/afero"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/cluster"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/node"
	"github.com/constellation-go/constellation/localprovider/proc"
)

// arg0 marks a process started as the daemon (like the node init, it is the starting program itself).
const arg0 = "constellation-local-daemon"

// startTimeout bounds how long Start waits for the daemon to listen.
const startTimeout = 30 * time.Second

// Spec is the provider side of a cluster.
type Spec struct {
	Cluster           string       `json:"cluster"`
	BridgeCIDR        netip.Prefix `json:"bridgeCIDR"`
	KubernetesVersion string       `json:"kubernetesVersion"`
	// ServicesDir holds the services' image archives (versions.ServiceSet).
	ServicesDir string `json:"servicesDir"`
	// InitSecretHash is the SHA-256 of the init secret (metadata.HashInitSecret).
	InitSecretHash []byte `json:"initSecretHash"`
	// LocalKMS also serves a KMS of the AWS KMS API on the bridge address (cluster.WithLocalKMS), its keys
	// in KMSDir. A reload does not start or stop it: a restart does.
	LocalKMS bool `json:"localKMS,omitempty"`
}

// Network returns the cluster's network (it changes nothing on the machine).
func (s Spec) Network() (*network.Network, error) {
	return network.New(network.Config{Cluster: s.Cluster, BridgeCIDR: s.BridgeCIDR})
}

// Dir is the directory of a cluster's provider files.
func Dir(cluster string) string { return filepath.Join(node.DefaultStateRoot, cluster) }

func specFile(cluster string) string     { return filepath.Join(Dir(cluster), "provider.json") }
func instancesDir(cluster string) string { return filepath.Join(Dir(cluster), "instances") }
func pidFile(cluster string) string      { return filepath.Join(Dir(cluster), "daemon.json") }

// KMSDir holds the local KMS's database (Spec.LocalKMS). Only Remove deletes it: whatever the cluster
// encrypted with its keys is lost with them, so turning the KMS off or restarting the daemon keeps it. Its
// name is not a DNS label, so no node's state directory beside it can be it.
func KMSDir(cluster string) string { return filepath.Join(Dir(cluster), "kms.db") }

// PlatformCA returns the CA that certifies the cluster's vTPMs, kept beside the provider's files
// (platform-ca.key, 0600, and platform-ca.crt; node names are DNS labels and never clash with them). With
// create, a missing CA is made; otherwise it must exist: only the network resource creates it, so that the
// CA in Terraform's state is the one that certified the nodes.
func PlatformCA(cluster string, create bool) (*manufacturer.CA, error) {
	if create {
		if err := os.MkdirAll(Dir(cluster), 0o700); err != nil {
			return nil, err
		}
		return manufacturer.LoadOrCreateCA(Dir(cluster), cluster+" local platform CA")
	}
	return manufacturer.LoadCA(Dir(cluster))
}

// ProviderLogFile is the Terraform provider's log.
func ProviderLogFile(cluster string) string { return filepath.Join(Dir(cluster), "provider.log") }

// LogFile is the daemon's log.
func LogFile(cluster string) string { return filepath.Join(Dir(cluster), "daemon.log") }

// WriteSpec replaces the cluster's Spec atomically.
func WriteSpec(s Spec) error {
	if _, err := s.Network(); err != nil {
		return err
	}
	return writeJSON(specFile(s.Cluster), s)
}

// ReadSpec reads a cluster's Spec; errors.Is(err, os.ErrNotExist) when there is none.
func ReadSpec(cluster string) (Spec, error) {
	var s Spec
	return s, readJSON(specFile(cluster), &s)
}

// AddInstance registers a node with the metadata API (after Reload).
func AddInstance(cluster string, in metadata.Instance) error {
	return writeJSON(filepath.Join(instancesDir(cluster), in.Name+".json"), in)
}

// RemoveInstance unregisters a node (after Reload).
func RemoveInstance(cluster, name string) error {
	if err := os.Remove(filepath.Join(instancesDir(cluster), name+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Instances returns the registered nodes, ordered by name.
func Instances(cluster string) ([]metadata.Instance, error) {
	entries, err := os.ReadDir(instancesDir(cluster))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []metadata.Instance
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		var in metadata.Instance
		if err := readJSON(filepath.Join(instancesDir(cluster), e.Name()), &in); err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b metadata.Instance) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (s Spec) state(cluster string) (metadata.State, error) {
	instances, err := Instances(cluster)
	if err != nil {
		return metadata.State{}, err
	}
	return metadata.State{Instances: instances, InitSecretHash: s.InitSecretHash}, nil
}

func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return file.NewHandler(afero.NewOsFs()).WriteJSON(path, v, file.OptOverwrite, file.OptSecret)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// Running returns the cluster's daemon if it runs.
func Running(cluster string) (proc.Process, bool) {
	var p proc.Process
	if err := readJSON(pidFile(cluster), &p); err != nil {
		return proc.Process{}, false
	}
	return p, p.Alive()
}

// Start starts the cluster's daemon from binary (empty: this program, which must call Main), or, if it
// runs, makes it reload. It returns once the daemon serves.
func Start(ctx context.Context, cluster, binary string) error {
	if p, ok := Running(cluster); ok {
		return p.Signal(syscall.SIGHUP)
	}
	if binary == "" {
		binary = "/proc/self/exe"
	}
	if err := os.MkdirAll(Dir(cluster), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(LogFile(cluster), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	cmd := &exec.Cmd{
		Path: binary, Args: []string{arg0, cluster}, Stdout: logf, Stderr: logf,
		ExtraFiles: []*os.File{readyW},
		// Its own session: it must outlive the Terraform provider that starts it, and a Ctrl-C in the
		// user's terminal must not reach it.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("starting the local provider daemon: %w", err)
	}
	// Nothing here waits for it: it is reaped by init once this program exits.
	_ = cmd.Process.Release()

	type result struct {
		line string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(readyR).ReadString('\n')
		done <- result{line, err}
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case r := <-done:
		if strings.TrimSpace(r.line) == "ready" {
			return nil
		}
		return fmt.Errorf("the local provider daemon did not start (see %s): %s", LogFile(cluster), strings.TrimSpace(r.line))
	case <-timer.C:
		return fmt.Errorf("the local provider daemon did not start within %s (see %s)", startTimeout, LogFile(cluster))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reload makes a running daemon re-read the instances and the Spec's init secret hash.
func Reload(cluster string) error {
	p, ok := Running(cluster)
	if !ok {
		return fmt.Errorf("the local provider daemon of cluster %s is not running (its log: %s)", cluster, LogFile(cluster))
	}
	return p.Signal(syscall.SIGHUP)
}

// Stop stops the cluster's daemon if it runs.
func Stop(ctx context.Context, cluster string) error {
	p, ok := Running(cluster)
	if ok {
		if _, err := p.Terminate(ctx, 10*time.Second); err != nil {
			return fmt.Errorf("stopping the local provider daemon: %w", err)
		}
	}
	if err := os.Remove(pidFile(cluster)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Remove deletes the cluster's provider files, the local KMS's keys among them (the nodes' state
// directories beside them are the nodes'), and the cluster's directory once it is empty. The daemon must be
// stopped.
func Remove(cluster string) error {
	var errs []error
	caKey, caCert := manufacturer.Files(Dir(cluster))
	for _, p := range []string{specFile(cluster), instancesDir(cluster), pidFile(cluster), LogFile(cluster), ProviderLogFile(cluster),
		filepath.Join(Dir(cluster), ".lock"), caKey, caCert, KMSDir(cluster)} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(Dir(cluster)); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Main runs the daemon and exits if this process was started as one; otherwise it returns at once.
func Main() {
	if len(os.Args) != 2 || os.Args[0] != arg0 {
		return
	}
	ready := os.NewFile(3, "ready")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("cluster", os.Args[1])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1], ready, log); err != nil {
		log.Error("daemon failed", "error", err)
		fmt.Fprintf(ready, "error: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func run(ctx context.Context, clusterName string, ready io.WriteCloser, log *slog.Logger) error {
	spec, err := ReadSpec(clusterName)
	if err != nil {
		return err
	}
	nw, err := spec.Network()
	if err != nil {
		return err
	}
	extra, err := versions.ServiceSet(spec.ServicesDir)
	if err != nil {
		return err
	}
	st, err := spec.state(clusterName)
	if err != nil {
		return err
	}
	var opts []cluster.Option
	if spec.LocalKMS {
		opts = append(opts, cluster.WithLocalKMS(KMSDir(clusterName)))
	}
	servers, err := cluster.Serve(ctx, nw.BridgeAddr(), st, spec.KubernetesVersion, []versions.ExtraSet{extra}, log, opts...)
	if err != nil {
		return err
	}
	defer servers.Close()
	self, err := proc.New(os.Getpid())
	if err != nil {
		return err
	}
	if err := writeJSON(pidFile(clusterName), self); err != nil {
		return err
	}
	// Before "ready": a SIGHUP's default action would end the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log.Info("serving", "bridge", nw.BridgeAddr(), "instances", len(st.Instances), "localKMS", spec.LocalKMS)
	fmt.Fprintln(ready, "ready")
	ready.Close()

	for {
		select {
		case <-ctx.Done():
			log.Info("stopping")
			return nil
		case <-hup:
			if err := reload(clusterName, servers); err != nil {
				log.Error("reload failed; still serving the previous state", "error", err)
				continue
			}
			log.Info("reloaded")
		}
	}
}

func reload(clusterName string, servers *cluster.Servers) error {
	spec, err := ReadSpec(clusterName)
	if err != nil {
		return err
	}
	st, err := spec.state(clusterName)
	if err != nil {
		return err
	}
	return servers.Metadata.Update(st)
}
