package joinclient

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadmconfig"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubelet"
	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// PKIDir is kubeadm's certificate directory.
const PKIDir = "/etc/kubernetes/pki"

// StateDisk is the node's encrypted state disk.
type StateDisk interface {
	Unlock(key []byte) error
	wrappedKeyKeeper
}

// wrappedKeyKeeper keeps the disk key wrapped by the user's KMS key beside the disk.
type wrappedKeyKeeper interface {
	SaveWrappedKey(blob []byte) error
}

// keepWrappedKey keeps a ticket's wrapped disk key (user-managed keys) beside the disk: the blob the admin
// needs to recover the node. A join keeps it before it encrypts the disk, so that no encrypted disk lacks
// one; a rejoin only after the key opened the disk.
func keepWrappedKey(disk wrappedKeyKeeper, blob []byte) error {
	if len(blob) == 0 {
		return nil // constellation-managed: the master secret recovers the disk
	}
	return disk.SaveWrappedKey(blob)
}

// Installer downloads, verifies (sha256) and installs components.
type Installer interface {
	Install(ctx context.Context, comps []*components.Component) error
}

// Kubeadm runs `kubeadm join`, and `kubeadm reset` after a join failed.
type Kubeadm interface {
	Join(ctx context.Context, config []byte) error
	Reset(ctx context.Context) error
}

// NodeJoiner sets up a node from a join ticket.
type NodeJoiner struct {
	Disk      StateDisk
	Installer Installer
	Kubeadm   Kubeadm
	// Node is this node's kubeadm registration (name and IP come from metadata in Join).
	Node kubeadmconfig.Node
	// Kubelet locates the kubelet's files (Root for tests).
	Kubelet kubelet.Paths
}

// Join unlocks the state disk with the ticket's key, installs the ticket's components, puts the control-plane
// certificates in place (control planes), writes the kubelet's kubeconfig with the certificate the
// JoinService signed, and runs `kubeadm join`. The kubelet supervisor must be running: kubeadm waits for
// the kubelet it configures.
func (j *NodeJoiner) Join(ctx context.Context, ticket *joinproto.IssueJoinTicketResponse, self metadata.Instance, kubeletKey *ecdsa.PrivateKey) error {
	if len(ticket.GetStateDiskKey()) != joinproto.StateDiskKeyLength {
		return fmt.Errorf("the join ticket's state disk key is %d bytes, expected %d", len(ticket.GetStateDiskKey()), joinproto.StateDiskKeyLength)
	}
	controlPlane := self.Role == role.ControlPlane
	if controlPlane && len(ticket.GetControlPlaneFiles()) == 0 {
		return errors.New("the join ticket of a control plane has no control-plane certificates")
	}
	node := j.Node
	node.Name, node.IP = self.Name, self.IP
	config, err := kubeadmconfig.GenerateJoin(kubeadmconfig.Join{
		Node:              node,
		APIServerEndpoint: ticket.GetApiServerEndpoint(),
		Token:             ticket.GetToken(),
		CACertHash:        ticket.GetDiscoveryTokenCaCertHash(),
		ControlPlane:      controlPlane,
	})
	if err != nil {
		return fmt.Errorf("the join ticket: %w", err)
	}
	if err := keepWrappedKey(j.Disk, ticket.GetWrappedStateDiskKey()); err != nil {
		return err
	}
	if err := j.Disk.Unlock(ticket.GetStateDiskKey()); err != nil {
		return err
	}
	if err := j.Installer.Install(ctx, ticket.GetKubernetesComponents()); err != nil {
		return fmt.Errorf("installing components: %w", err)
	}
	if controlPlane {
		if err := j.writeControlPlaneFiles(ticket.GetControlPlaneFiles()); err != nil {
			return err
		}
	}
	if err := j.Kubelet.WriteKubeconfig("https://"+ticket.GetApiServerEndpoint(), ticket.GetKubeletCert(), kubeletKey); err != nil {
		return err
	}
	return j.Kubeadm.Join(ctx, config)
}

// Reset undoes what a failed Join did to Kubernetes' files (`kubeadm reset`), so that Join can run again with
// the same ticket. The state disk stays unlocked with the ticket's key and the components installed.
func (j *NodeJoiner) Reset(ctx context.Context) error {
	return j.Kubeadm.Reset(ctx)
}

// writeControlPlaneFiles writes the cluster's CA files. Only the files the JoinService hands out are
// accepted, so a ticket cannot write anywhere else.
func (j *NodeJoiner) writeControlPlaneFiles(files []*joinproto.ControlPlaneCertOrKey) error {
	dir := j.Kubelet.Path(PKIDir)
	for _, f := range files {
		if !slices.Contains(joinproto.ControlPlaneFiles, f.GetName()) {
			return fmt.Errorf("the join ticket has an unexpected control-plane file %q", f.GetName())
		}
		path := filepath.Join(dir, f.GetName())
		mode := os.FileMode(0o644)
		if strings.HasSuffix(f.GetName(), ".key") {
			mode = 0o600
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, f.GetData(), mode); err != nil {
			return fmt.Errorf("writing control-plane file %s: %w", f.GetName(), err)
		}
	}
	return nil
}
