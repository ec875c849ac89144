// Package deploy sets up the cluster's Constellation services on the first control plane, right after
// `kubeadm init`. It creates the cluster's state, which belongs to no chart: the master secret (a Secret;
// its salt is also the measurement salt), the attestation config the JoinService enforces, the join config
// (the Kubernetes version and components joining nodes install), and with user-managed keys the KMS
// credentials and the Secret of wrapped keys. It then installs the services themselves as the Helm release
// of internal/constellation/services (the JoinService, KeyService, VerificationService and upgrade
// controller), and trims CoreDNS's configuration for nodes without an upstream resolver. Deploy is
// idempotent: it creates what is missing and updates what exists, so an interrupted init can run again.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// Names of the objects Deploy creates, all in Namespace, and of the services it installs.
const (
	Namespace               = services.Namespace
	MasterSecretName        = "constellation-mastersecret"
	AttestationConfigName   = attestconfig.ConfigMapName
	JoinConfigName          = joinproto.ConfigMapName
	JoinServiceName         = services.JoinServiceName
	KeyServiceName          = services.KeyServiceName
	VerificationServiceName = services.VerificationServiceName
	OperatorName            = services.OperatorName
	MeasurementSaltKey      = "measurementSalt"
	ComponentsKey           = joinproto.ComponentsKey
	partOfLabel             = "app.kubernetes.io/part-of"
	partOf                  = "constellation"
)

// Config is what the services need.
type Config struct {
	// Kubeconfig is an admin kubeconfig of the cluster, for Helm.
	Kubeconfig []byte
	// KubernetesVersion and Components are what joining nodes install.
	KubernetesVersion string
	Components        []*components.Component
	// MasterSecret is the cluster's master secret and salt; the salt is also the measurement salt.
	MasterSecret crypto.MasterSecret
	// KMSCredentials, with user-managed keys, go into a Secret the KeyService takes its AWS environment
	// from; nil: the node's own (e.g. an instance role).
	KMSCredentials *awskms.Credentials
	// AttestationConfig is the JoinService's attestation config (see AttestationConfig).
	AttestationConfig []byte
	// Services configure the chart: the API server endpoint, the key backend, how services attest, and
	// their images (zero fields: the chart's own).
	Services services.Values
}

func (c *Config) complete() error {
	var errs []error
	if len(c.Kubeconfig) == 0 {
		errs = append(errs, errors.New("no kubeconfig"))
	}
	if c.KubernetesVersion == "" {
		errs = append(errs, errors.New("no Kubernetes version"))
	}
	if err := c.MasterSecret.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("master secret: %w", err))
	}
	if len(c.AttestationConfig) == 0 {
		errs = append(errs, errors.New("no attestation config"))
	}
	if err := c.Services.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ErrAttestationConfig marks an attestation config from the CLI that the cluster cannot use.
var ErrAttestationConfig = errors.New("unusable attestation config")

// AttestationConfig checks the attestation config the CLI sent with Init (the attestation section of the
// admin's constellation-conf.yaml) and returns it in the canonical form the JoinService reads
// (attestconfig.Parse): the JoinService then enforces exactly what the admin configured, every extra PCR
// and the platform CA included. The config must be for this node's variant, and this node must show every
// enforced value it names (pcrs, except PCR 15, which a joining node shows as zero): otherwise no node of
// this image could ever join.
func AttestationConfig(raw []byte, variant string, pcrs map[uint32][]byte) ([]byte, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: the request carries none (a CLI older than this node?)", ErrAttestationConfig)
	}
	var att config.AttestationConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&att); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAttestationConfig, err)
	}
	if att.Variant != variant {
		return nil, fmt.Errorf("%w: it is for variant %q, this node attests as %q", ErrAttestationConfig, att.Variant, variant)
	}
	var differ []string
	for _, idx := range att.Measurements.Indices() {
		m := att.Measurements[idx]
		if idx == measurements.PCRClusterID || m.WarnOnly {
			continue
		}
		if got, ok := pcrs[idx]; !ok || !bytes.Equal(got, m.Expected) {
			differ = append(differ, fmt.Sprintf("PCR %d: configured %s, this node %s", idx, m.Expected, measurements.Digest(got)))
		}
	}
	if len(differ) > 0 {
		return nil, fmt.Errorf("%w: this node does not show the configured measurements (%s)", ErrAttestationConfig, strings.Join(differ, "; "))
	}
	out, err := yaml.Marshal(att)
	if err != nil {
		return nil, err
	}
	if _, err := attestconfig.Parse(out, nil); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAttestationConfig, err)
	}
	return out, nil
}

// Deploy creates or updates the cluster's state and installs (or updates) the services' release.
func Deploy(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	if err := cfg.complete(); err != nil {
		return fmt.Errorf("deploying services: %w", err)
	}
	masterJSON, err := json.Marshal(cfg.MasterSecret)
	if err != nil {
		return err
	}
	componentsJSON, err := components.MarshalList(cfg.Components)
	if err != nil {
		return err
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"master secret", func() error {
			return applySecret(ctx, client, &corev1.Secret{
				ObjectMeta: meta(MasterSecretName),
				Type:       corev1.SecretTypeOpaque,
				Data:       map[string][]byte{crypto.MasterSecretFileName: masterJSON, MeasurementSaltKey: cfg.MasterSecret.Salt},
			})
		}},
		{"attestation config", func() error {
			return applyConfigMap(ctx, client, &corev1.ConfigMap{
				ObjectMeta: meta(AttestationConfigName),
				Data:       map[string]string{attestconfig.FileName: string(cfg.AttestationConfig)},
			})
		}},
		{"join config", func() error {
			return applyConfigMap(ctx, client, &corev1.ConfigMap{
				ObjectMeta: meta(JoinConfigName),
				Data:       map[string]string{ComponentsKey: string(componentsJSON), joinproto.KubernetesVersionKey: cfg.KubernetesVersion},
			})
		}},
		{"KeyService KMS access", func() error { return applyKeyServiceKMSAccess(ctx, client, cfg) }},
		{"services' release", func() error {
			helm, err := services.NewClient(cfg.Kubeconfig, slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			_, err = helm.Install(ctx, cfg.Services)
			return err
		}},
		{"CoreDNS configuration", func() error { return dropUpstreamDNS(ctx, client) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("deploying the %s: %w", s.what, err)
		}
	}
	return nil
}

func meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: Namespace,
		Labels:    map[string]string{partOfLabel: partOf},
	}
}

func applySecret(ctx context.Context, client kubernetes.Interface, s *corev1.Secret) error {
	api := client.CoreV1().Secrets(Namespace)
	_, err := api.Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = api.Update(ctx, s, metav1.UpdateOptions{})
	}
	return err
}

func applyConfigMap(ctx context.Context, client kubernetes.Interface, cm *corev1.ConfigMap) error {
	api := client.CoreV1().ConfigMaps(Namespace)
	_, err := api.Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = api.Update(ctx, cm, metav1.UpdateOptions{})
	}
	return err
}

// KMSCredentialsName is the Secret with the KeyService's AWS credentials (user-managed keys).
const KMSCredentialsName = "keyservice-kms-credentials"

// applyKeyServiceKMSAccess creates what a user-managed KeyService needs beside its chart: its AWS
// credentials, if the admin gave some, and the Secret of wrapped data keys (created empty here, so that the
// KeyService's account needs no right to create Secrets: in kube-system that would include bootstrap
// tokens).
func applyKeyServiceKMSAccess(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	if !services.UserManagedKeys(cfg.Services.KMSURI) {
		return nil
	}
	if c := cfg.KMSCredentials; c != nil {
		if err := applySecret(ctx, client, &corev1.Secret{
			ObjectMeta: meta(KMSCredentialsName), Type: corev1.SecretTypeOpaque, Data: c.Env(),
		}); err != nil {
			return err
		}
	}
	// Never replaced: a deploy again must keep the wrapped keys it holds.
	wrapped := &corev1.Secret{ObjectMeta: meta(awskms.DefaultSecret), Type: corev1.SecretTypeOpaque}
	if _, err := client.CoreV1().Secrets(Namespace).Create(ctx, wrapped, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// dropUpstreamDNS removes the forward block from kubeadm's CoreDNS configuration: nodes have no upstream
// resolver (no nameserver in their resolv.conf, no route off the machine), and CoreDNS refuses to start with
// a forward plugin that has no upstreams. Cluster names still resolve.
func dropUpstreamDNS(ctx context.Context, client kubernetes.Interface) error {
	cms := client.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, "coredns", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil // CoreDNS disabled
	}
	if err != nil {
		return err
	}
	corefile, changed := withoutForward(cm.Data["Corefile"])
	if !changed {
		return nil
	}
	cm.Data["Corefile"] = corefile
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// withoutForward returns corefile without its "forward" directives (a one-line directive or a block).
func withoutForward(corefile string) (string, bool) {
	var out []string
	depth, skipping, changed := 0, false, false
	for _, line := range strings.Split(corefile, "\n") {
		trimmed := strings.TrimSpace(line)
		if !skipping && strings.HasPrefix(trimmed, "forward ") {
			changed = true
			if strings.HasSuffix(trimmed, "{") {
				skipping, depth = true, 1
			}
			continue
		}
		if skipping {
			depth += strings.Count(trimmed, "{") - strings.Count(trimmed, "}")
			if depth <= 0 {
				skipping = false
			}
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n"), changed
}
