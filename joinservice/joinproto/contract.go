package joinproto

const (
	// Port is the JoinService's aTLS gRPC port on every control plane.
	Port = 30090
	// HTTPPort serves the JoinService's /healthz and /metrics.
	HTTPPort = 30091
	// StateDiskKeyLength is the size of the state disk key a ticket carries (fscrypt v2 takes 64-byte
	// keys); every node derives or checks keys of this size.
	StateDiskKeyLength = 64
)

// ControlPlaneFiles are the kubeadm PKI files, relative to the PKI directory, that a ticket for a control
// plane carries; a joining node writes these names and no others.
var ControlPlaneFiles = []string{
	"ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key",
}

// The JoinService in the cluster: a DaemonSet on the control planes (in the services' chart), which hands
// joining nodes the Kubernetes version and the components of its join config, a ConfigMap that is cluster
// state rather than part of the chart. A Kubernetes upgrade moves both once the control plane runs the new
// version, then restarts the JoinService's pods (RestartAnnotation), which read the config when they start.
const (
	DaemonSetName = "joinservice"
	// ConfigMapName is the join config: the version (KubernetesVersionKey) and the components
	// (ComponentsKey: components.MarshalList).
	ConfigMapName        = "join-config"
	ComponentsKey        = "components.json"
	KubernetesVersionKey = "kubernetesVersion"
	// RestartAnnotation, on the DaemonSet's pod template, holds a digest of the join config the pods were
	// started for: changing it restarts them.
	RestartAnnotation = "constellation.io/join-config-sha256"
)

const (
	// AttestedCondition is the node condition the JoinService's re-attestation sets on every node (True:
	// verified in the last round; False: refused, with the reason and the differing PCRs; Unknown:
	// unreachable). `constellation status` shows it.
	AttestedCondition = "ConstellationAttested"
	// CordonedByAnnotation marks a node that re-attestation cordoned (value "reattestation"); only such a
	// node is uncordoned again when it verifies.
	CordonedByAnnotation = "constellation.io/cordoned-by"
	// AuditPath serves the JoinService's audit log (package audit) on HTTPPort.
	AuditPath = "/audit"
)
