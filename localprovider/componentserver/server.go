// Package componentserver is the component server nodes download their Kubernetes components from: an HTTP server
// that serves exactly the pinned files (internal/versions) of the given Kubernetes versions from the cache
// bazel/kubernetes/build.sh fills, and nothing else.
//
// A file is served at /<kubernetes version>/<component name> (versions.URLPath, e.g. /v1.33.13/kubelet or
// /v1.33.13/pause.tar) and at /sha256/<hex>. Every other path is 404: there is no directory listing and no
// request path is ever joined to a file path. GET and HEAD only. The caller chooses the address (the local
// provider binds it to its bridge address, never to all interfaces).
//
//	srv, err := server.New(server.Config{Versions: []string{"v1.33.13"}})
//	ln, err := net.Listen("tcp", "10.42.0.1:0")
//	go srv.Serve(ctx, ln)
//	comps := set.Proto(server.BaseURL(ln.Addr()), set.NodeComponents(true))
package componentserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	fileio "github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/versions"
)

// Config configures a Server.
type Config struct {
	// Versions are the Kubernetes versions to serve (full or minor; see versions.ResolveKubernetes).
	Versions []string
	// CacheDir returns the directory of a version's built components; default versions.CacheDir.
	CacheDir func(kubernetesVersion string) string
	// Sets overrides the pinned components (tests); Versions is ignored then.
	Sets []versions.ComponentSet
	// Log defaults to a discarding logger.
	Log *slog.Logger
}

type file struct {
	version string
	comp    versions.Component
	path    string
}

// Server serves pinned component files.
type Server struct {
	byPath map[string]file
	bySum  map[string]file
	log    *slog.Logger
}

// New prepares a server for the given versions. It checks that every file exists with its pinned size but
// does not hash them (see Verify).
func New(cfg Config) (*Server, error) {
	cacheDir := cfg.CacheDir
	if cacheDir == nil {
		cacheDir = versions.CacheDir
	}
	sets := cfg.Sets
	if sets == nil {
		if len(cfg.Versions) == 0 {
			return nil, errors.New("no Kubernetes versions to serve")
		}
		for _, v := range cfg.Versions {
			set, err := versions.Components(v)
			if err != nil {
				return nil, err
			}
			sets = append(sets, set)
		}
	}
	s := &Server{byPath: map[string]file{}, bySum: map[string]file{}, log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var missing []string
	for _, set := range sets {
		dir := cacheDir(set.Kubernetes)
		for _, c := range set.Components {
			if c.Name == "" || strings.Contains(c.Name, "/") || filepath.IsAbs(c.File) || strings.Contains(c.File, "..") {
				return nil, fmt.Errorf("component %q of %s has an unsafe name or file %q", c.Name, set.Kubernetes, c.File)
			}
			f := file{version: set.Kubernetes, comp: c, path: filepath.Join(dir, filepath.FromSlash(c.File))}
			fi, err := os.Stat(f.path)
			switch {
			case err != nil:
				missing = append(missing, f.path)
				continue
			case c.Size != 0 && fi.Size() != c.Size:
				return nil, fmt.Errorf("%s has %d bytes, the pin says %d: the cache holds a different build (rebuild with bazel/kubernetes/build.sh --version %s all, or fix the pin)",
					f.path, fi.Size(), c.Size, set.Kubernetes)
			}
			s.byPath[versions.URLPath(set.Kubernetes, c.Name)] = f
			s.bySum[strings.ToLower(c.SHA256)] = f
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("the component cache lacks %s (build it with bazel/kubernetes/build.sh --version %s all)",
				strings.Join(missing, ", "), set.Kubernetes)
		}
	}
	return s, nil
}

// Verify hashes every served file and fails on the first that differs from its pin.
func (s *Server) Verify(ctx context.Context) error {
	for _, f := range s.byPath {
		if err := ctx.Err(); err != nil {
			return err
		}
		sum, err := fileio.SHA256(f.path)
		if err != nil {
			return err
		}
		if sum != strings.ToLower(f.comp.SHA256) {
			return fmt.Errorf("%s (component %s of Kubernetes %s) has sha256 %s, the pin is %s: rebuild with bazel/kubernetes/build.sh --version %s all, or fix the pin",
				f.path, f.comp.Name, f.version, sum, f.comp.SHA256, f.version)
		}
	}
	return nil
}

// ServeHTTP serves a pinned file or 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// The raw path: a file is found by exact match only, so "..", "//" or escapes never reach the disk.
	p := r.URL.EscapedPath()
	f, ok := s.byPath[p]
	if !ok {
		if sum, found := strings.CutPrefix(p, "/sha256/"); found {
			f, ok = s.bySum[sum]
		}
	}
	if !ok {
		s.log.Info("not found", "path", p, "remote", r.RemoteAddr)
		http.NotFound(w, r)
		return
	}
	fh, err := os.Open(f.path)
	if err != nil {
		s.log.Error("opening component", "path", f.path, "error", err)
		http.Error(w, "component unavailable", http.StatusInternalServerError)
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.Error(w, "component unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"sha256:`+f.comp.SHA256+`"`)
	s.log.Info("serving", "component", f.comp.Name, "version", f.version, "remote", r.RemoteAddr)
	http.ServeContent(w, r, "", time.Time{}, fh)
}

// Serve serves on ln until ctx ends, then shuts down gracefully (at most 5 s).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(shutdownCtx)
		case <-done:
		}
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// BaseURL is the URL prefix of a server listening on addr, for versions.ComponentSet.Proto.
func BaseURL(addr net.Addr) string {
	return "http://" + addr.String()
}
