// Command joinservice issues join tickets to attested nodes. It runs on every control plane.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/audit"
	cryptoutil "github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/joinservice/internal/kubeadm"
	"github.com/constellation-go/constellation/joinservice/internal/reattest"
	"github.com/constellation-go/constellation/joinservice/internal/server"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "joinservice:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("joinservice", flag.ContinueOnError)
	grpcAddr := fs.String("grpc-addr", ":"+strconv.Itoa(joinproto.Port), "address of the aTLS gRPC API")
	httpAddr := fs.String("http-addr", ":"+strconv.Itoa(joinproto.HTTPPort), "address of /healthz and /metrics")
	keyServiceAddr := fs.String("keyservice-addr", "unix:///run/constellation/keyservice/keyservice.sock", "KeyService address (gRPC target)")
	attestationConfig := fs.String("attestation-config", "/var/run/constellation/attestation/"+attestconfig.FileName, "attestation config (mounted ConfigMap)")
	reloadInterval := fs.Duration("reload-interval", 5*time.Second, "how often to check the attestation config for changes")
	pkiDir := fs.String("pki-dir", "/etc/kubernetes/pki", "directory of the cluster CA (kubeadm layout)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default: in-cluster)")
	apiEndpoint := fs.String("api-endpoint", "", "Kubernetes API endpoint host:port for joining nodes")
	saltFile := fs.String("measurement-salt", "/var/run/constellation/mastersecret/measurementSalt", "measurement salt file")
	k8sVersion := fs.String("kubernetes-version", "", "Kubernetes version joining nodes install")
	componentsFile := fs.String("components", "", "JSON list of components (url, hash, installPath, extract)")
	variantName := fs.String("variant", variant.QEMUVTPM.String(), "attestation variant of this node, which attests to joining nodes")
	tpmAddr := fs.String("tpm", "device:"+tpm.DefaultDevice, "this node's TPM (device:<path> or swtpm:<socket>)")
	eventLog := fs.String("event-log", vtpm.DefaultEventLogPath, "this node's TCG event log")
	nodeName := fs.String("node-name", "", "this control plane's node name (default: the host name)")
	reattestInterval := fs.Duration("reattest-interval", 30*time.Second, "how often every node is attested again")
	reattestNoCordon := fs.Bool("reattest-no-cordon", false, "report nodes that fail re-attestation without cordoning them")
	auditPath := fs.String("audit-log", "/etc/kubernetes/audit/joinservice.log", "the hash-chained audit log of every attestation decision (on the encrypted state disk)")
	// Every aTLS handshake costs this node a TPM quote; a joining node needs one connection and retries
	// every few seconds.
	rateLimit := service.RateLimitFlags(fs, 1, 10)
	logLevel, logFormat := service.LogFlags(fs)
	if err := service.ParseFlags(fs, "JOINSERVICE", args); err != nil {
		return err
	}
	limit, err := rateLimit()
	if err != nil {
		return err
	}
	log, err := service.NewLogger(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *apiEndpoint == "" || *k8sVersion == "" {
		return errors.New("--api-endpoint and --kubernetes-version are required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ca, caKey, err := loadCA(*pkiDir)
	if err != nil {
		return err
	}
	salt, err := os.ReadFile(*saltFile)
	if err != nil {
		return fmt.Errorf("reading measurement salt: %w", err)
	}
	comps, err := loadComponents(*componentsFile)
	if err != nil {
		return err
	}
	restCfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	keyConn, err := grpc.NewClient(*keyServiceAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer keyConn.Close()
	validator, err := attestconfig.NewValidator(*attestationConfig, log)
	if err != nil {
		return err
	}
	go validator.Watch(ctx, *reloadInterval)

	reg := service.NewRegistry()
	// One KeyService client for tickets and for re-attestation's cluster ID.
	keys := server.NewKeyServiceClient(keyserviceproto.NewAPIClient(keyConn))
	srv := server.New(server.Config{
		APIServerEndpoint: *apiEndpoint, DiscoveryHash: kubeadm.DiscoveryHash(ca), MeasurementSalt: salt,
		KubernetesVersion: *k8sVersion, Components: comps, PKIDir: *pkiDir,
	}, keys, kubeadm.NewTokenIssuer(client),
		kubeadm.NewCSRSigner(ca, caKey), log, reg)
	// Mutual aTLS: the joining node attests to the JoinService, and the JoinService (its control plane's
	// vTPM) to the joining node, which accepts a disk key and components only from a control plane of its
	// own image that belongs to a cluster (bootstrapper/internal/joinclient.ServiceValidator).
	node, err := choose.OpenNode(*variantName, *tpmAddr, *eventLog)
	if err != nil {
		return err
	}
	defer node.Close()
	issuer := node.Issuer
	creds, err := atls.NewCredentials(issuer, []attestation.Validator{srv.CountingValidator(validator)})
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(limit.UnaryServerInterceptor()))
	srv.Register(g)

	auditLog, err := audit.Open(*auditPath)
	switch {
	case errors.Is(err, audit.ErrBroken):
		// Decisions keep being recorded; `constellation audit verify` reports the break too.
		log.Error("the audit log was tampered with", "path", *auditPath, "error", err)
	case err != nil:
		return fmt.Errorf("opening the audit log: %w", err)
	}
	defer auditLog.Close()
	srv.RecordTo(auditLog)

	if *nodeName == "" {
		if *nodeName, err = os.Hostname(); err != nil {
			return err
		}
	}
	go reattestNodes(ctx, log, client, keys, salt, validator, *nodeName, reattest.Config{Interval: *reattestInterval, NoCordon: *reattestNoCordon, Audit: auditLog}, reg)

	return service.ListenAndRun(ctx, *grpcAddr, *httpAddr, service.Servers{
		GRPC: g, ConnLimit: limit, Registry: reg, Log: log,
		// Integrity comes from the chain and the verifier's anchor, not from the transport.
		Handlers: map[string]http.Handler{joinproto.AuditPath: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/jsonl")
			http.ServeFile(w, r, *auditPath)
		})},
	})
}

// reattestNodes re-attests the cluster's nodes while this JoinService holds the re-attestation lease. Nodes
// of this cluster show PCR 15 = the cluster ID, which follows from the measurement secret (KeyService) and
// salt; the KeyService may start after the JoinService, so it is asked until it answers.
func reattestNodes(ctx context.Context, log *slog.Logger, client kubernetes.Interface, keys server.KeyGetter, salt []byte,
	validator *attestconfig.Validator, nodeName string, cfg reattest.Config, reg prometheus.Registerer,
) {
	var clusterID []byte
	for {
		secret, _, err := keys.GetDataKey(ctx, cryptoutil.MeasurementSecretID, 32)
		if err == nil {
			if clusterID, err = cryptoutil.ClusterID(secret, salt); err == nil {
				break
			}
		}
		log.Warn("re-attestation waits for the KeyService", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
	r := reattest.New(client, verifyproto.Client{}, validator.Joined(clusterID), cfg, log, reg)
	if err := reattest.RunAsLeader(ctx, client, metav1.NamespaceSystem, nodeName, r); err != nil {
		log.Error("re-attestation stopped", "error", err)
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// loadCA reads kubeadm's ca.crt and ca.key.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("reading cluster CA: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, nil, errors.New("ca.crt is not PEM")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing ca.crt: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("reading cluster CA key: %w", err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing ca.key: %w", err)
	}
	return ca, key, nil
}

func parsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("not PEM")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key of type %T cannot sign", k)
		}
		return signer, nil
	}
	return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
}

func loadComponents(path string) ([]*components.Component, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading components: %w", err)
	}
	return components.UnmarshalList(data)
}
