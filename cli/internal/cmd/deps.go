package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// deps are the commands' connections to the world; tests replace them with fakes.
type deps struct {
	// infra returns the infrastructure of the workspace at the absolute path ws.
	infra func(ws string, progress func(string)) (infrastructure, error)
	// artifacts locates the files shipped beside the CLI.
	artifacts func() (artifacts, error)
	initer    initer
	attester  attester
	recoverer recoverer
	// reachable tells whether a TCP address accepts connections.
	reachable func(ctx context.Context, addr string) bool
	// kube returns a client of the cluster of an admin kubeconfig.
	kube func(kubeconfig []byte) (kubernetes.Interface, error)
	// isTerminal tells whether the user can answer a question on stdin.
	isTerminal func() bool
	// kubeconfigPath is the user's kubeconfig, which `apply --merge-kubeconfig` extends.
	kubeconfigPath func() string
}

func defaultDeps() deps {
	return deps{
		infra: func(ws string, progress func(string)) (infrastructure, error) {
			a, err := findArtifacts()
			if err != nil {
				return nil, err
			}
			return &terraformInfra{workspace: ws, artifacts: a, progress: progress}, nil
		},
		artifacts: findArtifacts,
		initer:    grpcIniter{},
		attester:  grpcAttester{},
		recoverer: grpcRecoverer{},
		reachable: func(ctx context.Context, addr string) bool {
			conn, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return false
			}
			_ = conn.Close()
			return true
		},
		kube: func(kubeconfig []byte) (kubernetes.Interface, error) {
			cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
			if err != nil {
				return nil, err
			}
			cfg.Timeout = 30 * time.Second
			return kubernetes.NewForConfig(cfg)
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

// initer sends the init request to the first control plane over aTLS: the handshake validates the node's
// attestation with validator before anything is sent.
type initer interface {
	Init(ctx context.Context, endpoint string, validator attestation.Validator, req *initproto.InitRequest,
		progress func(step, message string)) (*initproto.InitSuccessResponse, error)
}

// initFailedError is a failure the node reported, with its logs.
type initFailedError struct {
	message string
	logs    []byte
}

func (e *initFailedError) Error() string { return "the node reported: " + e.message }

type grpcIniter struct{}

func (grpcIniter) Init(ctx context.Context, endpoint string, validator attestation.Validator, req *initproto.InitRequest,
	progress func(step, message string),
) (*initproto.InitSuccessResponse, error) {
	creds, err := atls.NewCredentials(nil, []attestation.Validator{validator})
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := initproto.NewAPIClient(conn).Init(ctx, req)
	if err != nil {
		return nil, err
	}
	var failure *initFailedError
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if failure != nil {
				return nil, failure
			}
			return nil, err
		}
		switch {
		case resp.GetProgress() != nil:
			progress(resp.GetProgress().GetStep(), resp.GetProgress().GetMessage())
		case resp.GetInitSuccess() != nil:
			return resp.GetInitSuccess(), nil
		case resp.GetInitFailure() != nil:
			failure = &initFailedError{message: resp.GetInitFailure().GetError()}
		case resp.GetLog() != nil && failure != nil:
			failure.logs = append(failure.logs, resp.GetLog().GetLog()...)
		}
	}
	if failure != nil {
		return nil, failure
	}
	return nil, errors.New("the node closed the init stream without a result")
}

// attester asks a node's VerificationService for an attestation bound to nonce; it returns the document
// and the name of the node that says it answered.
type attester interface {
	GetAttestation(ctx context.Context, endpoint string, nonce []byte) (doc []byte, node string, err error)
}

type grpcAttester struct{}

func (grpcAttester) GetAttestation(ctx context.Context, endpoint string, nonce []byte) ([]byte, string, error) {
	// No transport security needed: the document is signed by the node's TPM and bound to the nonce and,
	// through verifyproto.Binding, to the node's name.
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, "", err
	}
	defer conn.Close()
	resp, err := verifyproto.NewAPIClient(conn).GetAttestation(ctx, &verifyproto.GetAttestationRequest{Nonce: nonce})
	if err != nil {
		return nil, "", err
	}
	return resp.GetAttestation(), resp.GetNodeName(), nil
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
