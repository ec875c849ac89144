// Package deploy installs the cluster's Constellation services on the first control plane, right after
// `kubeadm init`: the KeyService (with the master secret as a Kubernetes Secret), the JoinService (with the
// attestation config it validates joining nodes against) and the VerificationService, each as a
// DaemonSet in kube-system, with client-go. Deploy is idempotent: it creates what is missing and updates
// what exists.
//
// All three run with host networking, from images imported into containerd under the references in
// Images (there is no registry, so they are never pulled):
//
//   - KeyService on control planes, its API on a unix socket (KeyServiceAddr) in a host directory that only
//     it and the JoinService mount: the API has no authentication of its own, so it must not be reachable
//     by anyone else. A loopback port would be reachable by every process in the node's network namespace,
//     including any hostNetwork pod; the socket's directory is root's, 0700, and not in any other pod's
//     mount namespace. Only /healthz and /metrics stay on the loopback (keyServiceHTTPPort).
//   - JoinService on control planes, on :30090 (aTLS) and :30091 (health, metrics). It reads the cluster CA
//     from the node's /etc/kubernetes/pki and reaches the API server on its own node (status.hostIP:6443),
//     which does not depend on kube-proxy or CoreDNS being up.
//   - VerificationService on every node, on :30081 (gRPC) and :30080 (HTTP), with the node's vTPM socket (or
//     device) and its event log directory mounted from the node.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// Names of the objects Deploy creates, all in Namespace.
const (
	Namespace                     = metav1.NamespaceSystem
	MasterSecretName              = "constellation-mastersecret"
	AttestationConfigName         = attestconfig.ConfigMapName
	JoinConfigName                = joinproto.ConfigMapName
	JoinServiceName               = joinproto.DaemonSetName
	KeyServiceName                = keyserviceproto.DaemonSetName
	VerificationServiceName       = "verificationservice"
	OperatorName                  = "operator"
	operatorHealthPort            = 30093
	MeasurementSaltKey            = "measurementSalt"
	ComponentsKey                 = joinproto.ComponentsKey
	controlPlaneLabel             = "node-role.kubernetes.io/control-plane"
	componentLabel                = "app.kubernetes.io/name"
	partOfLabel                   = "app.kubernetes.io/part-of"
	partOf                        = "constellation"
	mastersecretMount             = "/var/run/constellation/mastersecret"
	attestationMount              = "/var/run/constellation/attestation"
	joinConfigMount               = "/var/run/constellation/join"
	pkiDir                        = "/etc/kubernetes/pki"
	apiServerPort                 = 6443
	joinServiceGRPCPort           = joinproto.Port
	joinServiceHTTPPort           = joinproto.HTTPPort
	verificationServiceGRPCPort   = verifyproto.Port
	verificationServiceHTTPPort   = verifyproto.HTTPPort
	keyServiceHTTPPort            = 9011
	keyServiceSocketDir           = "/run/constellation/keyservice"
	tpmSchemeSwtpm, tpmSchemeDev  = "swtpm:", "device:"
	priorityClusterCritical       = "system-cluster-critical"
	priorityNodeCritical          = "system-node-critical"
	attestationConfigFile         = attestconfig.FileName
	keyServiceLoopback            = "127.0.0.1"
	verificationEventLogMountName = "eventlog"
)

// KeyServiceAddr is the KeyService's API on each control plane: a unix socket, in gRPC's target syntax.
var KeyServiceAddr = service.UnixPrefix + path.Join(keyServiceSocketDir, "keyservice.sock")

// Images are the services' image references, as the images were imported into containerd.
type Images struct {
	JoinService, KeyService, VerificationService, Operator string
}

// DefaultImages are the references of the images Bazel builds (//joinservice/cmd/joinservice:image etc.),
// as containerd names them after `ctr images import`.
var DefaultImages = Images{
	JoinService:         "docker.io/constellation/joinservice:v0.1.0-dev",
	KeyService:          "docker.io/constellation/keyservice:v0.1.0-dev",
	VerificationService: "docker.io/constellation/verificationservice:v0.1.0-dev",
	Operator:            "docker.io/constellation/operator:v0.1.0-dev",
}

// Config is what the services need.
type Config struct {
	// APIServerEndpoint is host:port of the API server that joining nodes use.
	APIServerEndpoint string
	// KubernetesVersion and Components are what joining nodes install.
	KubernetesVersion string
	Components        []*components.Component
	// MasterSecret is the cluster's master secret and salt; the salt is also the measurement salt.
	MasterSecret crypto.MasterSecret
	// KMSURI selects the KeyService's backend; empty means kms://cluster-kms.
	KMSURI string
	// KMSCredentials, with user-managed keys, go into a Secret the KeyService takes its AWS environment
	// from; nil: the node's own (e.g. an instance role).
	KMSCredentials *awskms.Credentials
	// AttestationConfig is the JoinService's attestation config (see AttestationConfig).
	AttestationConfig []byte
	// Variant is the attestation variant the VerificationService issues.
	Variant string
	// TPMAddress is the node's TPM ("swtpm:<socket>" or "device:<path>"); every node must have it at the
	// same path.
	TPMAddress string
	// EventLogPath is the node's TCG event log; every node must have it at the same path.
	EventLogPath string
	// Images are the services' images; zero fields mean DefaultImages.
	Images Images
}

func (c *Config) complete() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.APIServerEndpoint); err != nil {
		errs = append(errs, fmt.Errorf("API server endpoint %q is not host:port", c.APIServerEndpoint))
	}
	if c.KubernetesVersion == "" {
		errs = append(errs, errors.New("no Kubernetes version"))
	}
	if err := c.MasterSecret.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("master secret: %w", err))
	}
	if c.KMSURI == "" {
		c.KMSURI = kmsuri.Default
	}
	if len(c.AttestationConfig) == 0 {
		errs = append(errs, errors.New("no attestation config"))
	}
	if _, err := variant.FromString(c.Variant); err != nil {
		errs = append(errs, err)
	}
	if !strings.HasPrefix(c.TPMAddress, tpmSchemeSwtpm) && !strings.HasPrefix(c.TPMAddress, tpmSchemeDev) {
		errs = append(errs, fmt.Errorf("TPM address %q: expected swtpm:<socket> or device:<path>", c.TPMAddress))
	}
	if !path.IsAbs(c.EventLogPath) {
		errs = append(errs, fmt.Errorf("event log path %q is not absolute", c.EventLogPath))
	}
	if c.Images.JoinService == "" {
		c.Images.JoinService = DefaultImages.JoinService
	}
	if c.Images.KeyService == "" {
		c.Images.KeyService = DefaultImages.KeyService
	}
	if c.Images.VerificationService == "" {
		c.Images.VerificationService = DefaultImages.VerificationService
	}
	if c.Images.Operator == "" {
		c.Images.Operator = DefaultImages.Operator
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

// Deploy creates or updates the services and their configuration.
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
				Data:       map[string]string{attestationConfigFile: string(cfg.AttestationConfig)},
			})
		}},
		{"join config", func() error {
			return applyConfigMap(ctx, client, &corev1.ConfigMap{
				ObjectMeta: meta(JoinConfigName),
				Data:       map[string]string{ComponentsKey: string(componentsJSON)},
			})
		}},
		{"JoinService RBAC", func() error { return applyJoinServiceRBAC(ctx, client) }},
		{"KeyService KMS access", func() error { return applyKeyServiceKMSAccess(ctx, client, cfg) }},
		{"KeyService", func() error { return applyDaemonSet(ctx, client, keyService(cfg)) }},
		{"JoinService", func() error { return applyDaemonSet(ctx, client, joinService(cfg)) }},
		{"VerificationService", func() error { return applyDaemonSet(ctx, client, verificationService(cfg)) }},
		{"upgrade controller's resource type", func() error { return applyCRD(ctx, client, v1alpha1.CRD) }},
		{"upgrade controller RBAC", func() error { return applyOperatorRBAC(ctx, client) }},
		{"upgrade controller", func() error { return applyDaemonSet(ctx, client, operator(cfg)) }},
		{"CoreDNS configuration", func() error { return dropUpstreamDNS(ctx, client) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("deploying %s: %w", s.what, err)
		}
	}
	return nil
}

// marshalComponents writes the JoinService's --components file: {"components": [...]}, each element in
// the API's JSON form.
func meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: Namespace,
		Labels:    map[string]string{partOfLabel: partOf},
	}
}

func labels(name string) map[string]string {
	return map[string]string{componentLabel: name, partOfLabel: partOf}
}

func applyJoinServiceRBAC(ctx context.Context, client kubernetes.Interface) error {
	// In kube-system the JoinService creates bootstrap tokens (Secrets) and holds the re-attestation lease.
	if err := applyServiceAccount(ctx, client, JoinServiceName, []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
		// The lease that makes one JoinService the re-attesting one.
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
	}); err != nil {
		return err
	}
	// Re-attestation (joinservice/internal/reattest): list the nodes, set their condition, cordon one that
	// fails, record Events on them. (The JoinService holds the cluster CA's key already; these rights add
	// nothing an attacker of the JoinService could not mint.)
	return applyClusterRole(ctx, client, reattestRoleName, JoinServiceName, []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	})
}

// applyClusterRole creates or updates a ClusterRole and binds it to the service account in Namespace.
func applyClusterRole(ctx context.Context, client kubernetes.Interface, name, serviceAccount string, rules []rbacv1.PolicyRule) error {
	clusterRole := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels(serviceAccount)}, Rules: rules}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, clusterRole, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := client.RbacV1().ClusterRoles().Update(ctx, clusterRole, metav1.UpdateOptions{}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	clusterBinding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels(serviceAccount)},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: serviceAccount, Namespace: Namespace}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, clusterBinding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// operatorRoleName is the upgrade controller's ClusterRole (and binding).
const operatorRoleName = "constellation-operator"

// applyOperatorRBAC gives the upgrade controller what kubeupgrade's passes need: the nodes (instructions,
// cordons), the pods and evictions of a drain, the JoinService's DaemonSet and components ConfigMap (the
// version joining nodes get), its own resource and status, and its leader Lease.
func applyOperatorRBAC(ctx context.Context, client kubernetes.Interface) error {
	if err := applyServiceAccount(ctx, client, OperatorName, []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{JoinConfigName}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{JoinServiceName}, Verbs: []string{"update"}},
	}); err != nil {
		return err
	}
	return applyClusterRole(ctx, client, operatorRoleName, OperatorName, []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch", "update"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/eviction"}, Verbs: []string{"create"}},
		// A drain looks up the DaemonSet of each DaemonSet pod.
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
		{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"kubernetesupgrades"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"kubernetesupgrades/status"}, Verbs: []string{"get", "patch", "update"}},
	})
}

// applyCRD creates or updates a CustomResourceDefinition (YAML) by server-side apply, through the
// clientset's REST client (the typed apiextensions client would be a second client for one object).
func applyCRD(ctx context.Context, client kubernetes.Interface, crdYAML []byte) error {
	var crd struct {
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
	}
	if err := yaml.Unmarshal(crdYAML, &crd); err != nil || crd.Metadata.Name == "" {
		return fmt.Errorf("the CustomResourceDefinition has no name (%v)", err)
	}
	rc := client.Discovery().RESTClient()
	if rc == nil {
		return errors.New("the Kubernetes client has no REST client")
	}
	return rc.Patch(types.ApplyYAMLPatchType).
		AbsPath("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd.Metadata.Name).
		Param("fieldManager", "constellation-bootstrapper").Param("force", "true").
		Body(crdYAML).Do(ctx).Error()
}

// operator is the upgrade controller on every control plane; one leads (a Lease). Like the JoinService it
// reaches the API server on its own node, so it keeps working while kube-proxy is upgraded, and as a
// DaemonSet pod a drain leaves it in place.
func operator(cfg Config) *appsv1.DaemonSet {
	container := corev1.Container{
		Name:  OperatorName,
		Image: cfg.Images.Operator,
		Args:  []string{"--health-addr=:" + strconv.Itoa(operatorHealthPort)},
		Env: []corev1.EnvVar{
			{Name: "KUBERNETES_SERVICE_HOST", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(apiServerPort)},
		},
		Ports:         []corev1.ContainerPort{hostPort(operatorHealthPort)},
		LivenessProbe: healthProbe("", operatorHealthPort),
	}
	return daemonSet(OperatorName, priorityClusterCritical, corev1.PodSpec{
		NodeSelector:       controlPlanesOnly(),
		ServiceAccountName: OperatorName,
		Containers:         []corev1.Container{container},
	})
}

// auditDir holds the JoinService's audit log on the control plane.
const auditDir = "/etc/kubernetes/audit"

// reattestRoleName is the ClusterRole (and binding) of the JoinService's re-attestation.
const reattestRoleName = "constellation-reattestation"

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

func applyDaemonSet(ctx context.Context, client kubernetes.Interface, ds *appsv1.DaemonSet) error {
	api := client.AppsV1().DaemonSets(Namespace)
	_, err := api.Create(ctx, ds, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = api.Update(ctx, ds, metav1.UpdateOptions{})
	}
	return err
}

// daemonSet is the common part: host network, every taint tolerated (these are node agents, like
// kube-proxy), images never pulled.
func daemonSet(name, priority string, pod corev1.PodSpec) *appsv1.DaemonSet {
	pod.HostNetwork = true
	pod.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	pod.PriorityClassName = priority
	pod.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	for i := range pod.Containers {
		pod.Containers[i].ImagePullPolicy = corev1.PullNever
	}
	return &appsv1.DaemonSet{
		ObjectMeta: meta(name),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels(name)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(name)},
				Spec:       pod,
			},
		},
	}
}

func healthProbe(host string, port int) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Host: host, Path: "/healthz", Port: intstr.FromInt32(int32(port)),
		}},
		PeriodSeconds: 10,
	}
}

func hostPort(port int) corev1.ContainerPort {
	return corev1.ContainerPort{ContainerPort: int32(port), HostPort: int32(port), Protocol: corev1.ProtocolTCP}
}

func controlPlanesOnly() map[string]string {
	return map[string]string{controlPlaneLabel: ""}
}

// keyServiceSocketVolume is the host directory of the KeyService's socket, which only the KeyService and the
// JoinService mount.
func keyServiceSocketVolume() (corev1.Volume, corev1.VolumeMount) {
	return corev1.Volume{Name: "keyservice-socket", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: keyServiceSocketDir, Type: ptr(corev1.HostPathDirectoryOrCreate),
		}}},
		corev1.VolumeMount{Name: "keyservice-socket", MountPath: keyServiceSocketDir}
}

func keyService(cfg Config) *appsv1.DaemonSet {
	socketVolume, socketMount := keyServiceSocketVolume()
	userManaged := userManagedKeys(cfg.KMSURI)
	var env []corev1.EnvVar
	var envFrom []corev1.EnvFromSource
	if userManaged {
		// The wrapped data keys live in a Secret: the API server on this very node, as for the JoinService.
		env = []corev1.EnvVar{
			{Name: "KUBERNETES_SERVICE_HOST", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(apiServerPort)},
		}
		envFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: KMSCredentialsName}, Optional: ptr(true),
		}}}
	}
	pod := corev1.PodSpec{
		NodeSelector:                 controlPlanesOnly(),
		AutomountServiceAccountToken: ptr(userManaged),
		Containers: []corev1.Container{{
			Name:  KeyServiceName,
			Image: cfg.Images.KeyService,
			Args: []string{
				"--grpc-addr=" + KeyServiceAddr,
				"--http-addr=" + net.JoinHostPort(keyServiceLoopback, strconv.Itoa(keyServiceHTTPPort)),
				keyserviceproto.KMSURIFlag + cfg.KMSURI,
				"--master-secret=" + path.Join(mastersecretMount, crypto.MasterSecretFileName),
			},
			LivenessProbe: healthProbe(keyServiceLoopback, keyServiceHTTPPort),
			VolumeMounts:  []corev1.VolumeMount{{Name: "mastersecret", MountPath: mastersecretMount, ReadOnly: true}, socketMount},
			// Root owns the socket's host directory, and only root (the JoinService) may connect.
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(0)), RunAsGroup: ptr(int64(0))},
		}},
		Volumes: []corev1.Volume{{Name: "mastersecret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: MasterSecretName,
			Items:      []corev1.KeyToPath{{Key: crypto.MasterSecretFileName, Path: crypto.MasterSecretFileName}},
		}}}, socketVolume},
	}
	pod.Containers[0].Env, pod.Containers[0].EnvFrom = env, envFrom
	if userManaged {
		pod.ServiceAccountName = KeyServiceName
	}
	return daemonSet(KeyServiceName, priorityClusterCritical, pod)
}

// KMSCredentialsName is the Secret with the KeyService's AWS credentials (user-managed keys).
const KMSCredentialsName = "keyservice-kms-credentials"

func userManagedKeys(uri string) bool {
	u, err := kmsuri.Parse(uri)
	return err == nil && u.Host != kmsuri.ClusterKMS
}

// applyKeyServiceKMSAccess gives a user-managed KeyService what it needs: its AWS credentials, if the admin
// gave some, the Secret of wrapped data keys (created empty here, so that the KeyService needs no right to
// create Secrets: in kube-system that would include bootstrap tokens), and a service account that reads and
// writes only that Secret.
func applyKeyServiceKMSAccess(ctx context.Context, client kubernetes.Interface, cfg Config) error {
	if !userManagedKeys(cfg.KMSURI) {
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
	return applyServiceAccount(ctx, client, KeyServiceName, []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "update"}, ResourceNames: []string{awskms.DefaultSecret}},
	})
}

// applyServiceAccount creates the service account name with a Role of rules in Namespace, bound to it.
func applyServiceAccount(ctx context.Context, client kubernetes.Interface, name string, rules []rbacv1.PolicyRule) error {
	sa := &corev1.ServiceAccount{ObjectMeta: meta(name)}
	if _, err := client.CoreV1().ServiceAccounts(Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	role := &rbacv1.Role{ObjectMeta: meta(name), Rules: rules}
	if _, err := client.RbacV1().Roles(Namespace).Create(ctx, role, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := client.RbacV1().Roles(Namespace).Update(ctx, role, metav1.UpdateOptions{}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: meta(name),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: Namespace}},
	}
	if _, err := client.RbacV1().RoleBindings(Namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

func joinService(cfg Config) *appsv1.DaemonSet {
	socketVolume, socketMount := keyServiceSocketVolume()
	container := corev1.Container{
		Name:  JoinServiceName,
		Image: cfg.Images.JoinService,
		Args: []string{
			"--grpc-addr=:" + strconv.Itoa(joinServiceGRPCPort),
			"--http-addr=:" + strconv.Itoa(joinServiceHTTPPort),
			"--keyservice-addr=" + KeyServiceAddr,
			"--attestation-config=" + path.Join(attestationMount, attestationConfigFile),
			"--pki-dir=" + pkiDir,
			"--api-endpoint=" + cfg.APIServerEndpoint,
			"--measurement-salt=" + path.Join(mastersecretMount, MeasurementSaltKey),
			joinproto.KubernetesVersionFlag + "=" + cfg.KubernetesVersion,
			"--components=" + path.Join(joinConfigMount, ComponentsKey),
			"--audit-log=" + path.Join(auditDir, "joinservice.log"),
		},
		// In-cluster configuration, but with the API server on this very node rather than the
		// kubernetes Service, which needs kube-proxy.
		Env: []corev1.EnvVar{
			{Name: "KUBERNETES_SERVICE_HOST", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(apiServerPort)},
			// The identity in the re-attestation lease.
			{Name: "JOINSERVICE_NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		},
		Ports:          []corev1.ContainerPort{hostPort(joinServiceGRPCPort), hostPort(joinServiceHTTPPort)},
		ReadinessProbe: healthProbe("", joinServiceHTTPPort),
		// The cluster CA's key is readable by root only (kubeadm writes it 0600); the image's default
		// user is unprivileged.
		SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(0)), RunAsGroup: ptr(int64(0))},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "pki", MountPath: pkiDir, ReadOnly: true},
			{Name: "attestation", MountPath: attestationMount, ReadOnly: true},
			{Name: "salt", MountPath: mastersecretMount, ReadOnly: true},
			{Name: "join", MountPath: joinConfigMount, ReadOnly: true},
			// The audit log, on the control plane's encrypted state disk (/etc/kubernetes is on it).
			{Name: "audit", MountPath: auditDir},
			socketMount,
		},
	}
	// The JoinService attests to joining nodes too (mutual aTLS): a node accepts a disk key and components
	// only from a control plane of its own image that belongs to a cluster.
	attestationVolumes := withAttestation(cfg, &container)
	return daemonSet(JoinServiceName, priorityClusterCritical, corev1.PodSpec{
		NodeSelector:       controlPlanesOnly(),
		ServiceAccountName: JoinServiceName,
		Containers:         []corev1.Container{container},
		Volumes: append([]corev1.Volume{
			{Name: "pki", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: pkiDir, Type: ptr(corev1.HostPathDirectory)}}},
			{Name: "attestation", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: AttestationConfigName},
			}}},
			// Only the salt: the JoinService never sees the master secret.
			{Name: "salt", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: MasterSecretName,
				Items:      []corev1.KeyToPath{{Key: MeasurementSaltKey, Path: MeasurementSaltKey}},
			}}},
			{Name: "join", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: JoinConfigName},
			}}},
			{Name: "audit", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: auditDir, Type: ptr(corev1.HostPathDirectoryOrCreate)}}},
			socketVolume,
		}, attestationVolumes...),
	})
}

func verificationService(cfg Config) *appsv1.DaemonSet {
	container := corev1.Container{
		Name:  VerificationServiceName,
		Image: cfg.Images.VerificationService,
		Args: []string{
			"--grpc-addr=:" + strconv.Itoa(verificationServiceGRPCPort),
			"--http-addr=:" + strconv.Itoa(verificationServiceHTTPPort),
		},
		// Every answer is bound to the node's name (verifyproto.Binding).
		Env: []corev1.EnvVar{{Name: "VERIFICATIONSERVICE_NODE_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
		}}},
		Ports:         []corev1.ContainerPort{hostPort(verificationServiceGRPCPort), hostPort(verificationServiceHTTPPort)},
		LivenessProbe: healthProbe("", verificationServiceHTTPPort),
	}
	volumes := withAttestation(cfg, &container)
	return daemonSet(VerificationServiceName, priorityNodeCritical, corev1.PodSpec{
		AutomountServiceAccountToken: ptr(false),
		Containers:                   []corev1.Container{container},
		Volumes:                      volumes,
	})
}

// withAttestation gives a container the node's TPM and event log, and the flags to issue attestations with
// them (--variant, --tpm, --event-log); it returns the volumes the pod needs for that.
func withAttestation(cfg Config, container *corev1.Container) []corev1.Volume {
	eventLogDir := path.Dir(cfg.EventLogPath)
	container.Args = append(container.Args, "--variant="+cfg.Variant, "--tpm="+cfg.TPMAddress, "--event-log="+cfg.EventLogPath)
	// The event log's directory, not the file: the node runtime replaces the file as boot progresses.
	container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: verificationEventLogMountName, MountPath: eventLogDir, ReadOnly: true})
	volumes := []corev1.Volume{{Name: verificationEventLogMountName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
		Path: eventLogDir, Type: ptr(corev1.HostPathDirectory),
	}}}}
	if sock, ok := strings.CutPrefix(cfg.TPMAddress, tpmSchemeSwtpm); ok {
		// The socket's directory, so that a restarted swtpm's new socket is seen.
		dir := path.Dir(sock)
		container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: "tpm", MountPath: dir})
		volumes = append(volumes, corev1.Volume{Name: "tpm", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: dir, Type: ptr(corev1.HostPathDirectory),
		}}})
	} else {
		dev := strings.TrimPrefix(cfg.TPMAddress, tpmSchemeDev)
		container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: "tpm", MountPath: dev})
		volumes = append(volumes, corev1.Volume{Name: "tpm", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: dev, Type: ptr(corev1.HostPathCharDev),
		}}})
		// A device node is only usable from a container that the device cgroup lets at it.
		if container.SecurityContext == nil {
			container.SecurityContext = &corev1.SecurityContext{}
		}
		container.SecurityContext.Privileged = ptr(true)
	}
	// The TPM and the event log belong to root on every node (as securityfs' log does on real hosts).
	if container.SecurityContext == nil {
		container.SecurityContext = &corev1.SecurityContext{}
	}
	container.SecurityContext.RunAsUser, container.SecurityContext.RunAsGroup = ptr(int64(0)), ptr(int64(0))
	return volumes
}

func ptr[T any](v T) *T { return &v }

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
