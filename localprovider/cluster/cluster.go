// Package cluster serves what a local cluster's nodes need from the provider, on the cluster bridge's
// address: the metadata API and the component server (Serve), and, on request, a KMS of the AWS KMS API
// (WithLocalKMS). The daemon runs them between Terraform runs; this package's test starts whole clusters
// in-process with them.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/componentserver"
	"github.com/constellation-go/constellation/localprovider/metadata"
)

// ComponentPort is where the component server listens on the bridge address.
const ComponentPort = 9081

// MetadataURL is the base URL of the metadata API on the bridge address, as nodes reach it.
func MetadataURL(bridge netip.Addr) string {
	return "http://" + netip.AddrPortFrom(bridge, metadata.DefaultPort).String()
}

// ComponentURL is the base URL of the component server on the bridge address.
func ComponentURL(bridge netip.Addr) string {
	return "http://" + netip.AddrPortFrom(bridge, ComponentPort).String()
}

// KMSURL is the base URL of the local KMS (WithLocalKMS) on the bridge address.
func KMSURL(bridge netip.Addr) string {
	return "http://" + netip.AddrPortFrom(bridge, localkms.Port).String()
}

// ensureKeyTimeout bounds making the local KMS's key: the KMS runs in this process.
const ensureKeyTimeout = 30 * time.Second

// Servers are the provider's servers on the bridge address: the metadata API (metadata.DefaultPort), the
// component server (ComponentPort) and, with WithLocalKMS, the local KMS (localkms.Port).
type Servers struct {
	Metadata *metadata.Server
	// kms is the local KMS, nil without WithLocalKMS.
	kms     *localkms.Server
	cancels []context.CancelFunc
	wg      sync.WaitGroup
	log     *slog.Logger
}

// Option adds to what Serve serves.
type Option func(*options)

type options struct {
	kmsDir string
}

// WithLocalKMS also serves a KMS of the AWS KMS API on the bridge address at localkms.Port, with its
// database in dataDir, and makes sure it has a key under localkms.DefaultAlias. The directory must outlive
// the servers for as long as anything is encrypted with its keys.
func WithLocalKMS(dataDir string) Option {
	return func(o *options) { o.kmsDir = dataDir }
}

// Serve starts the metadata API with st and the component server for the Kubernetes version's pinned set
// (and those of the other versions built on this machine) and the extra sets, both on the bridge address, and what the options add. They run until Close.
func Serve(ctx context.Context, bridge netip.Addr, st metadata.State, kubernetesVersion string, extra []versions.ExtraSet, log *slog.Logger, opts ...Option) (_ *Servers, retErr error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Servers{log: log}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()
	var err error
	if s.Metadata, err = metadata.NewServer(st, log); err != nil {
		return nil, err
	}
	metaLn, err := metadata.Listen(netip.AddrPortFrom(bridge, metadata.DefaultPort))
	if err != nil {
		return nil, fmt.Errorf("metadata API: %w", err)
	}
	s.serve(ctx, metaLn, func(ctx context.Context, ln net.Listener) error { return s.Metadata.Serve(ctx, ln) })

	set, notices, err := versions.LocalComponents(kubernetesVersion)
	if err != nil {
		return nil, err
	}
	for _, n := range notices {
		log.Warn("serving a locally built component", "notice", n)
	}
	sets := []versions.ComponentSet{set}
	dirs := map[string]string{set.Kubernetes: versions.CacheDir(set.Kubernetes)}
	// Every other version built on this machine too: during a Kubernetes upgrade, nodes of both versions
	// install their components (a node that restarts reinstalls the version it recorded).
	for _, v := range versions.SupportedKubernetes() {
		if v == set.Kubernetes || !versions.Built(v) {
			continue
		}
		other, notices, err := versions.LocalComponents(v)
		if err != nil {
			log.Warn("not serving the components of another Kubernetes version", "version", v, "error", err)
			continue
		}
		for _, n := range notices {
			log.Warn("serving a locally built component", "notice", n)
		}
		sets = append(sets, other)
		dirs[v] = versions.CacheDir(v)
	}
	for _, e := range extra {
		sets = append(sets, e.Set)
		dirs[e.Set.Kubernetes] = e.Dir
	}
	comps, err := componentserver.New(componentserver.Config{Sets: sets, CacheDir: func(v string) string { return dirs[v] }, Log: log})
	if err != nil {
		return nil, err
	}
	compLn, err := net.Listen("tcp", netip.AddrPortFrom(bridge, ComponentPort).String())
	if err != nil {
		return nil, fmt.Errorf("component server: %w", err)
	}
	s.serve(ctx, compLn, func(ctx context.Context, ln net.Listener) error { return comps.Serve(ctx, ln) })

	if o.kmsDir != "" {
		if err := s.serveKMS(ctx, bridge, o.kmsDir); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Servers) serveKMS(ctx context.Context, bridge netip.Addr, dataDir string) error {
	addr := netip.AddrPortFrom(bridge, localkms.Port).String()
	var err error
	if s.kms, err = localkms.Start(addr, dataDir, s.log.With("server", "local-kms")); err != nil {
		return fmt.Errorf("starting the local KMS on %s: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, ensureKeyTimeout)
	defer cancel()
	// Its errors name the KMS and its endpoint.
	keyID, err := localkms.EnsureKey(ctx, s.kms.Endpoint(), localkms.DefaultAlias)
	if err != nil {
		return err
	}
	s.log.Info("local KMS ready", "endpoint", s.kms.Endpoint(), "alias", localkms.DefaultAlias, "keyID", keyID)
	return nil
}

func (s *Servers) serve(ctx context.Context, ln net.Listener, serve func(context.Context, net.Listener) error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("server stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	s.cancels = append(s.cancels, cancel)
}

// Close stops the servers and waits for them.
func (s *Servers) Close() {
	for _, cancel := range s.cancels {
		cancel()
	}
	s.wg.Wait()
	if s.kms != nil {
		if err := s.kms.Close(); err != nil {
			s.log.Error("stopping the local KMS", "error", err)
		}
	}
}
