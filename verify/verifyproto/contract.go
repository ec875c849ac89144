package verifyproto

const (
	// Port is the VerificationService's gRPC port on every node.
	Port = 30081
	// HTTPPort serves the VerificationService's HTTP API (GET /?nonce=<hex>), /healthz and /metrics.
	HTTPPort = 30080
)
