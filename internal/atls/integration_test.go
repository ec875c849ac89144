package atls_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/verify/verifytest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

const (
	envServerMode   = "ATLS_TEST_SERVER_MODE"
	envServerTamper = "ATLS_TEST_SERVER_TAMPER"
)

// A boot whose kernel command line was changed to get a root shell.
var tamperedBoot = vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})

// measuredParty returns the issuer of a node booted with events and a validator expecting the published boot.
func measuredParty(t testing.TB, events []vtpmtest.Event) (attestation.Issuer, []attestation.Validator) {
	t.Helper()
	n := vtpmtest.NewNode(t, events)
	log := n.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return log, nil }))
	t.Cleanup(issuer.Close)
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot),
		AKRoots:      vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	return issuer, []attestation.Validator{validator}
}

// TestServerProcess is the server side of TestTwoProcesses, run in a child process. It prints its address
// and serves until its standard input closes.
func TestServerProcess(t *testing.T) {
	mode := os.Getenv(envServerMode)
	if mode == "" {
		t.Skip("runs only as the child process of TestTwoProcesses")
	}
	events := vtpmtest.Boot
	if os.Getenv(envServerTamper) != "" {
		events = tamperedBoot
	}
	issuer, validators := measuredParty(t, events)
	switch mode {
	case "server-attests":
		validators = nil
	case "client-attests":
		issuer = nil
	}
	for i, v := range validators {
		validators[i] = reportingValidator{v}
	}
	creds, err := atls.NewCredentials(issuer, validators)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	fmt.Printf("LISTENING %s\n", lis.Addr())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	srv.Stop()
}

// reportingValidator tells the parent process why the server refused a client, since the client itself only
// sees a closed connection.
type reportingValidator struct{ attestation.Validator }

func (v reportingValidator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	userData, err := v.Validator.Validate(ctx, doc, nonce)
	if err != nil {
		fmt.Printf("REFUSED %q\n", err.Error())
	}
	return userData, err
}

func startServerProcess(t *testing.T, mode string, tamper bool) (string, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestServerProcess$", "-test.v")
	cmd.Env = append(os.Environ(), envServerMode+"="+mode)
	if tamper {
		cmd.Env = append(cmd.Env, envServerTamper+"=1")
	}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	scanner := bufio.NewScanner(stdout)
	addr := make(chan string, 1)
	refusals := make(chan string, 16)
	go func() {
		for scanner.Scan() {
			line := scanner.Text()
			if rest, ok := strings.CutPrefix(line, "LISTENING "); ok {
				addr <- rest
			}
			if rest, ok := strings.CutPrefix(line, "REFUSED "); ok {
				msg, err := strconv.Unquote(rest)
				if err != nil {
					msg = rest
				}
				refusals <- msg
			}
		}
		close(addr)
		close(refusals)
	}()
	select {
	case a, ok := <-addr:
		require.True(t, ok, "server process exited before listening")
		return a, refusals
	case <-time.After(30 * time.Second):
		t.Fatal("server process did not start")
	}
	return "", nil
}

func check(t *testing.T, addr string, issuer attestation.Issuer, validators []attestation.Validator) error {
	t.Helper()
	creds, err := atls.NewCredentials(issuer, validators)
	require.NoError(t, err)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestTwoProcesses(t *testing.T) {
	if os.Getenv(envServerMode) != "" {
		t.Skip("child process")
	}
	testCases := map[string]struct {
		mode         string
		serverTamper bool
		clientEvents []vtpmtest.Event
		// wantErr must appear in the client's error; wantRefusal in the server's reason.
		wantErr     []string
		wantRefusal []string
	}{
		"server attests":  {mode: "server-attests"},
		"client attests":  {mode: "client-attests"},
		"mutual":          {mode: "mutual"},
		"tampered server": {mode: "server-attests", serverTamper: true, wantErr: []string{"PCR 9 (enforced)", "init=/bin/sh"}},
		"tampered client": {mode: "client-attests", clientEvents: tamperedBoot, wantRefusal: []string{"PCR 9 (enforced)", "init=/bin/sh"}},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			addr, refusals := startServerProcess(t, tc.mode, tc.serverTamper)
			events := tc.clientEvents
			if events == nil {
				events = vtpmtest.Boot
			}
			issuer, validators := measuredParty(t, events)
			switch tc.mode {
			case "server-attests":
				issuer = nil
			case "client-attests":
				validators = nil
			}
			err := check(t, addr, issuer, validators)
			if len(tc.wantErr) == 0 && len(tc.wantRefusal) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, want := range tc.wantErr {
				assert.Contains(t, err.Error(), want)
			}
			if len(tc.wantRefusal) > 0 {
				select {
				case reason := <-refusals:
					for _, want := range tc.wantRefusal {
						assert.Contains(t, reason, want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the server did not report why it refused the client")
				}
			}
		})
	}
}

// oracle is the attack on a VerificationService that signs whatever it is asked: a man in the middle makes
// its own TLS key and asks a genuine node's VerificationService for an attestation of that key, bound to the
// client's nonce.
type oracle struct{ srv verifyproto.APIServer }

func (o oracle) Variant() variant.Variant { return variant.QEMUVTPM }

func (o oracle) Issue(ctx context.Context, userData, nonce []byte) ([]byte, error) {
	resp, err := o.srv.GetAttestation(ctx, &verifyproto.GetAttestationRequest{Nonce: nonce, UserData: userData})
	if err != nil {
		return nil, err
	}
	return resp.GetAttestation(), nil
}

// An answer of the VerificationService never passes as an aTLS attestation: the two bind their documents to
// different domains.
func TestVerificationServiceIsNoATLSOracle(t *testing.T) {
	genuine, validators := measuredParty(t, vtpmtest.Boot)
	srv := verifytest.New(genuine, "cp-0")
	serverCfg, err := atls.NewServerConfig(oracle{srv}, nil)
	require.NoError(t, err)
	clientCfg, err := atls.NewClientConfig(nil, validators)
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		s := tls.Server(c, serverCfg)
		done <- s.Handshake()
		_ = s.Close()
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	require.NoError(t, err)
	cli := tls.Client(c, clientCfg)
	err = cli.Handshake()
	_ = cli.Close()
	<-done
	require.Error(t, err, "the client accepted a VerificationService answer as the server's attestation")
	assert.ErrorIs(t, err, atls.ErrKeyMismatch)
}
