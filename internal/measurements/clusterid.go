package measurements

import (
	"crypto/sha256"
	"errors"
)

// Zero is the value of a PCR nothing has extended, e.g. PCR 15 on a node that has not taken its node lock.
var Zero = Digest(make([]byte, DigestSize))

// ClusterIDEvent is the digest a node extends into PCR 15 when it takes its node lock: SHA-256 of the
// cluster ID. It is extended exactly once, so a node can belong to one cluster only.
func ClusterIDEvent(clusterID []byte) Digest {
	d := sha256.Sum256(clusterID)
	return d[:]
}

// PCR15ForCluster is the PCR 15 value of a node that took its node lock for clusterID.
func PCR15ForCluster(clusterID []byte) Digest {
	ev := ClusterIDEvent(clusterID)
	d := sha256.Sum256(append(Zero.clone(), ev...))
	return d[:]
}

// ErrNoClusterID is returned when a cluster ID is required but empty.
var ErrNoClusterID = errors.New("cluster ID is empty")

// WithClusterID returns a copy of m that expects PCR 15 to hold clusterID, enforced. An empty cluster ID
// is an error rather than silently expecting the value of SHA-256 of nothing.
func (m M) WithClusterID(clusterID []byte) (M, error) {
	if len(clusterID) == 0 {
		return nil, ErrNoClusterID
	}
	out := m.Clone()
	out[PCRClusterID] = Measurement{Expected: PCR15ForCluster(clusterID)}
	return out, nil
}

// WithFreshNode returns a copy of m that expects PCR 15 to be zero, enforced: a node that has not yet joined
// any cluster.
func (m M) WithFreshNode() M {
	out := m.Clone()
	out[PCRClusterID] = Measurement{Expected: Zero.clone()}
	return out
}

// Clone returns a deep copy of m.
func (m M) Clone() M {
	out := make(M, len(m))
	for k, v := range m {
		out[k] = Measurement{Expected: v.Expected.clone(), WarnOnly: v.WarnOnly}
	}
	return out
}

func (d Digest) clone() Digest {
	return append(Digest(nil), d...)
}
