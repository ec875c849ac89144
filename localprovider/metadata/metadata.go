// Package metadata is the `local` provider's instance metadata API (issue 6, item 4): what a cloud's
// metadata server tells a VM, served by the provider on the cluster bridge's address, for the nodes only.
//
// The bootstrapper (with Client) learns from it the cluster's instances with their roles, addresses and pod
// prefixes, which instance it is itself, the control-plane endpoints to join through, and the SHA-256 of
// the init secret that `constellation apply` must prove to know.
//
// # API
//
// JSON over HTTP, GET only, at the base URL http://<bridge address>:<port> (DefaultPort):
//
//	GET /v1/instances         [{"name","role","ip","podCIDR"}, ...], ordered by name
//	GET /v1/self              the instance whose address the request comes from
//	GET /v1/init-secret-hash  {"sha256": "<hex>"}
//	GET /v1/endpoints         {"controlPlanes": ["10.42.0.2", ...], "kubernetesAPI": "10.42.0.2:6443"}
//
// Errors are {"error": "..."} with a 4xx or 5xx status.
//
// # Who may ask
//
// Only the cluster's nodes: the server listens on the bridge's address only (not reachable from other
// machines: nothing routes to the bridge prefix from outside), and answers 403 to a request whose source
// address is not a node's, including the host itself (which connects from the bridge's address). The
// source address is what the kernel reports; a node, being root on the host in all but name (see package
// node), could forge another node's. Nothing here is secret: the init secret's hash protects the secret.
package metadata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/constellation-go/constellation/internal/role"
)

// DefaultPort is the port the metadata API listens on, on the bridge's address.
const DefaultPort = 9080

// KubernetesAPIPort is the port of a control plane's Kubernetes API server.
const KubernetesAPIPort = 6443

// Paths of the API.
const (
	PathInstances      = "/v1/instances"
	PathSelf           = "/v1/self"
	PathInitSecretHash = "/v1/init-secret-hash"
	PathEndpoints      = "/v1/endpoints"
)

// Instance is a node as the metadata API describes it.
type Instance struct {
	// Name is the node's name (its hostname and Kubernetes node name).
	Name string `json:"name"`
	// Role is control-plane or worker.
	Role role.Role `json:"role"`
	// IP is the node's address on the bridge.
	IP netip.Addr `json:"ip"`
	// PodCIDR is the node's pod prefix (network.Allocation).
	PodCIDR netip.Prefix `json:"podCIDR"`
}

// Endpoints are where the control planes are.
type Endpoints struct {
	// ControlPlanes are the control planes' addresses, ordered by name (the JoinService listens on each).
	ControlPlanes []netip.Addr `json:"controlPlanes"`
	// KubernetesAPI is the Kubernetes API endpoint (host:port): the first control plane's, as there is no
	// load balancer. Empty without control planes.
	KubernetesAPI string `json:"kubernetesAPI"`
}

// State is what the server serves.
type State struct {
	// Instances are the cluster's nodes.
	Instances []Instance
	// InitSecretHash is the SHA-256 of the init secret (HashInitSecret); empty until set.
	InitSecretHash []byte
}

// HashInitSecret returns the hash of an init secret that State.InitSecretHash holds.
func HashInitSecret(secret []byte) []byte {
	sum := sha256.Sum256(secret)
	return sum[:]
}

// Validate checks a state: names and addresses unique, roles known, a hash of SHA-256's size or none.
func (st State) Validate() error {
	var errs []error
	names, ips := map[string]bool{}, map[netip.Addr]bool{}
	for _, in := range st.Instances {
		switch {
		case in.Name == "":
			errs = append(errs, errors.New("an instance has no name"))
		case names[in.Name]:
			errs = append(errs, fmt.Errorf("instance name %s is used twice", in.Name))
		}
		names[in.Name] = true
		if !in.IP.IsValid() {
			errs = append(errs, fmt.Errorf("instance %s has no address", in.Name))
		} else if ips[in.IP] {
			errs = append(errs, fmt.Errorf("address %s is used twice", in.IP))
		}
		ips[in.IP] = true
		if in.Role != role.ControlPlane && in.Role != role.Worker {
			errs = append(errs, fmt.Errorf("instance %s: role %q is neither %s nor %s", in.Name, in.Role, role.ControlPlane, role.Worker))
		}
		if !in.PodCIDR.IsValid() {
			errs = append(errs, fmt.Errorf("instance %s has no pod prefix", in.Name))
		}
	}
	if n := len(st.InitSecretHash); n != 0 && n != sha256.Size {
		errs = append(errs, fmt.Errorf("the init secret hash has %d bytes, want %d", n, sha256.Size))
	}
	return errors.Join(errs...)
}

// Server serves the metadata API. It is safe for concurrent use; Update replaces what it serves.
type Server struct {
	log *slog.Logger

	mu    sync.RWMutex
	state State
}

// NewServer returns a server of st. A nil log discards messages.
func NewServer(st State, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log}
	if err := s.Update(st); err != nil {
		return nil, err
	}
	return s, nil
}

// Update replaces the served state (e.g. when a node is added).
func (s *Server) Update(st State) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	st.Instances = slices.Clone(st.Instances)
	slices.SortFunc(st.Instances, func(a, b Instance) int { return strings.Compare(a.Name, b.Name) })
	st.InitSecretHash = slices.Clone(st.InitSecretHash)
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	return nil
}

// Handler returns the API's HTTP handler, which answers nodes only.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathInstances, func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		writeJSON(w, http.StatusOK, s.state.Instances)
	})
	mux.HandleFunc("GET "+PathSelf, func(w http.ResponseWriter, r *http.Request) {
		in, _ := s.instanceAt(sourceAddr(r))
		writeJSON(w, http.StatusOK, in)
	})
	mux.HandleFunc("GET "+PathInitSecretHash, func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if len(s.state.InitSecretHash) == 0 {
			writeError(w, http.StatusNotFound, "no init secret hash is set")
			return
		}
		writeJSON(w, http.StatusOK, initSecretHash{SHA256: hex.EncodeToString(s.state.InitSecretHash)})
	})
	mux.HandleFunc("GET "+PathEndpoints, func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		ep := Endpoints{ControlPlanes: []netip.Addr{}}
		for _, in := range s.state.Instances {
			if in.Role == role.ControlPlane {
				ep.ControlPlanes = append(ep.ControlPlanes, in.IP)
			}
		}
		if len(ep.ControlPlanes) > 0 {
			ep.KubernetesAPI = net.JoinHostPort(ep.ControlPlanes[0].String(), strconv.Itoa(KubernetesAPIPort))
		}
		writeJSON(w, http.StatusOK, ep)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceAddr(r)
		if _, ok := s.instanceAt(src); !ok {
			s.log.Warn("metadata request refused: not from a node", "source", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, fmt.Sprintf("%s is not a node of this cluster", src))
			return
		}
		if r.Method != http.MethodGet {
			writeError(w, http.StatusMethodNotAllowed, "only GET")
			return
		}
		h, pattern := mux.Handler(r)
		if pattern == "" {
			writeError(w, http.StatusNotFound, "no such path: "+r.URL.Path)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) instanceAt(ip netip.Addr) (Instance, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, in := range s.state.Instances {
		if in.IP == ip {
			return in, true
		}
	}
	return Instance{}, false
}

// sourceAddr is the request's source address (the zero Addr if unparsable).
func sourceAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

type initSecretHash struct {
	SHA256 string `json:"sha256"`
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

// ListenAndServe serves the API on addr (the bridge's address and DefaultPort) until ctx ends, then shuts
// down gracefully. It refuses an unspecified or loopback address: the API is for the bridge only.
func (s *Server) ListenAndServe(ctx context.Context, addr netip.AddrPort) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Listen opens the API's listener on addr (see ListenAndServe).
func Listen(addr netip.AddrPort) (net.Listener, error) {
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() || addr.Addr().IsLoopback() {
		return nil, fmt.Errorf("metadata: listen address %s: must be the bridge's address", addr)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return ln, nil
}

// Serve serves the API on ln until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metadata: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	return err
}
