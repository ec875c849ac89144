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
