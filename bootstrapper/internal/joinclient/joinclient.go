// Package joinclient joins the node to an existing cluster. It asks the provider's metadata for the control
// planes, calls the JoinService's IssueJoinTicket on each (over aTLS: this node attests with its vTPM; the
// JoinService's validator expects PCR 15 zero, i.e. a node that has not taken its lock) and retries with
// backoff until a ticket arrives, the node lock is taken by the init flow, or the context ends.
//
// With a ticket it takes the node lock for the ticket's cluster ID (HKDF(measurement secret, measurement
// salt, "key-clusterID")); if init took the lock first, the ticket is dropped. Then Joiner.Join sets up the
// node: state disk, components, the kubelet's credentials and `kubeadm join`. A Join that fails is undone
// (Joiner.Reset: `kubeadm reset`) and retried with the same ticket while its token is valid.
//
// Once the join succeeded, the disk records that the node is a member (nodestate's MarkMember).
//
// A restarted node (its state disk was set up in an earlier boot) rejoins instead: IssueRejoinTicket gives
// it the disk key and the cluster ID, it unlocks the disk, takes the node lock and installs the components
// it recorded; its Kubernetes credentials and configuration are on the disk, so the kubelet, started when
// the lock is taken, brings the same node back. If the unlocked disk does not record membership, the
// earlier boot was cut off during its join (power loss, a crash): the node joins again on the same disk
// (IssueJoinTicket gives the same disk key, derived from the disk's UUID), after `kubeadm reset` has removed
// what the cut-off join left.
package joinclient

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/constellation-go/constellation/bootstrapper/internal/nodestate"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/constellation-go/constellation/bootstrapper/internal/kubelet"
	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// ErrLocked is returned by Run when the node lock was taken by the init flow (or was taken before).
var ErrLocked = errors.New("the node lock is taken: this node is being initialised, not joined")

// Metadata describes this node and its peers.
type Metadata interface {
	Self(ctx context.Context) (metadata.Instance, error)
	List(ctx context.Context) ([]metadata.Instance, error)
}

// Locker is the node lock.
type Locker interface {
	TryLock(clusterID []byte) (bool, error)
	// Taken is closed once the lock is taken in this process.
	Taken() <-chan struct{}
}

// Joiner sets up the node with a ticket, after the node lock was taken; Reset undoes a failed Join so that
// it can run again with the same ticket.
type Joiner interface {
	Join(ctx context.Context, ticket *joinproto.IssueJoinTicketResponse, self metadata.Instance, kubeletKey *ecdsa.PrivateKey) error
	Reset(ctx context.Context) error
}

// Disk is the node's state disk: its UUID identifies it for the JoinService (its key is derived from it); a
// disk set up in an earlier boot is unlocked and its recorded components installed again on rejoin.
type Disk interface {
	UUID() (string, error)
	Initialized() bool
	Unlock(key []byte) error
	LoadComponents() ([]byte, error)
	// Member tells whether the unlocked disk records a completed join; MarkMember records it.
	Member() bool
	MarkMember() error
	wrappedKeyKeeper
}

// Backoff is the retry delay: Initial, doubling up to Max.
type Backoff struct {
	Initial, Max time.Duration
}

// DefaultBackoff keeps join latency low: the first control plane's JoinService usually appears while
// workers are already trying.
var DefaultBackoff = Backoff{Initial: time.Second, Max: 5 * time.Second}

// Client obtains a join ticket and joins.
type Client struct {
	metadata Metadata
	lock     Locker
	disk     Disk
	joiner   Joiner
	// installer reinstalls a restarted node's recorded components.
	installer nodestate.Installer
	creds     credentials.TransportCredentials
	log       *slog.Logger

	// Backoff is the retry policy.
	Backoff Backoff
	// Port is the JoinService's port.
	Port int
	// AttemptTimeout bounds one IssueJoinTicket call.
	AttemptTimeout time.Duration
	// TicketLifetime is how long a join ticket can be retried after the lock was taken: within the
	// JoinService's bootstrap token lifetime (15 minutes).
	TicketLifetime time.Duration
	// DialOptions are added to every connection (tests).
	DialOptions []grpc.DialOption
}

// New returns a join client; creds are the node's aTLS client credentials (the node attests).
func New(md Metadata, lock Locker, disk Disk, joiner Joiner, installer nodestate.Installer, creds credentials.TransportCredentials, log *slog.Logger) *Client {
	return &Client{
		metadata: md, lock: lock, disk: disk, joiner: joiner, installer: installer, creds: creds, log: log,
		Backoff: DefaultBackoff, Port: joinproto.Port, AttemptTimeout: 30 * time.Second, TicketLifetime: 10 * time.Minute,
	}
}

// Run tries to join until it succeeds (nil), the lock is taken by init (ErrLocked), the ticket could not be
// used while it was valid (an error after the lock was taken: the node is then locked to the cluster but not
// in it, until it restarts), or ctx ends (ctx.Err()).
func (c *Client) Run(ctx context.Context) error {
	var self metadata.Instance
	var diskUUID string
	if err := c.retry(ctx, "reading this node's metadata and state disk", func() error {
		var err error
		if self, err = c.metadata.Self(ctx); err != nil {
			return err
		}
		if err := self.Validate(); err != nil {
			return err
		}
		diskUUID, err = c.disk.UUID()
		return err
	}); err != nil {
		return err
	}
	if c.disk.Initialized() {
		return c.rejoin(ctx, self, diskUUID)
	}
	return c.join(ctx, self, diskUUID, false)
}

// join gets a join ticket and joins; redo means the state disk holds what a cut-off join left, which goes
// first.
func (c *Client) join(ctx context.Context, self metadata.Instance, diskUUID string, redo bool) error {
	key, csr, err := kubelet.NewClientKey(self.Name)
	if err != nil {
		return err
	}
	req := &joinproto.IssueJoinTicketRequest{
		DiskUuid:           diskUUID,
		NodeName:           self.Name,
		IsControlPlane:     self.Role == role.ControlPlane,
		CertificateRequest: csr,
	}
	log := c.log.With("node", self.Name, "controlPlane", req.IsControlPlane)

	var ticket *joinproto.IssueJoinTicketResponse
	if err := c.retry(ctx, "getting a join ticket", func() error {
		return c.issue(ctx, self, func(ctx context.Context, api joinproto.APIClient) (err error) {
			ticket, err = api.IssueJoinTicket(ctx, req)
			return err
		})
	}); err != nil {
		return err
	}
	clusterID, err := ticketClusterID("join", ticket.GetMeasurementSecret(), ticket.GetMeasurementSalt())
	if err != nil {
		return err
	}
	locked, err := c.lock.TryLock(clusterID)
	if err != nil {
		return fmt.Errorf("taking the node lock: %w", err)
	}
	if !locked {
		log.Info("got a join ticket, but the node lock is taken; dropping it")
		return ErrLocked
	}
	log.Info("node lock taken for join", "clusterID", fmt.Sprintf("%x", clusterID), "apiServer", ticket.GetApiServerEndpoint())
	if redo {
		// kubeadm comes with the ticket's components: the node's /var did not survive the restart.
		log.Info("undoing what the cut-off join left (kubeadm reset) before joining again")
		err := c.installer.Install(ctx, ticket.GetKubernetesComponents())
		if err == nil {
			err = c.joiner.Reset(ctx)
		}
		if err != nil {
			// The join may still succeed, or fail and be undone and retried (kubeadm join says what is in
			// its way).
			log.Warn("undoing the cut-off join failed", "error", err)
		}
	}
	if err := c.joinWithTicket(ctx, ticket, self, key, log); err != nil {
		return err
	}
	// Until this is recorded, the next boot would join again: retry rather than leave a working node that
	// the next boot resets (a full disk frees up; nothing else can be done here).
	if err := c.retryLocked(ctx, "recording the completed join on the state disk", c.disk.MarkMember); err != nil {
		return err
	}
	log.Info("joined the cluster")
	return nil
}

// joinWithTicket runs the Joiner until it succeeds. After the lock the node cannot get another ticket (the
// JoinService wants PCR 15 zero), so a failed join is undone and retried with the same ticket, its disk key
// included, for as long as the ticket's bootstrap token lives; then the error is final and a restart of
// the node (which clears PCR 15) starts over.
func (c *Client) joinWithTicket(ctx context.Context, ticket *joinproto.IssueJoinTicketResponse, self metadata.Instance,
	key *ecdsa.PrivateKey, log *slog.Logger,
) error {
	deadline := time.Now().Add(c.TicketLifetime)
	delay := c.Backoff.Initial
	for attempt := 1; ; attempt++ {
		err := c.joiner.Join(ctx, ticket, self, key)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("joining the cluster: %w", err)
		}
		if time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("joining the cluster failed %d time(s) while its join ticket was valid: %w; restart the node "+
				"to join again", attempt, err)
		}
		log.Warn("joining the cluster failed; undoing it and retrying with the same ticket", "attempt", attempt,
			"retryIn", delay, "error", err)
		if rerr := c.joiner.Reset(ctx); rerr != nil {
			// The next Join may still succeed (kubeadm join checks what is in its way and says so).
			log.Warn("undoing the failed join failed", "error", rerr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("joining the cluster: %w (then %w)", err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, c.Backoff.Max)
	}
}

// ticketClusterID is the cluster a ticket of kind (join or rejoin) locks the node to.
func ticketClusterID(kind string, secret, salt []byte) ([]byte, error) {
	if len(secret) == 0 || len(salt) == 0 {
		return nil, fmt.Errorf("the %s ticket has no measurement secret or salt", kind)
	}
	clusterID, err := crypto.ClusterID(secret, salt)
	if err != nil {
		return nil, fmt.Errorf("deriving the cluster ID: %w", err)
	}
	return clusterID, nil
}

// rejoin brings a restarted node back: see the package documentation.
func (c *Client) rejoin(ctx context.Context, self metadata.Instance, diskUUID string) error {
	log := c.log.With("node", self.Name, "diskUUID", diskUUID)
	log.Info("restarted node: rejoining")
	var ticket *joinproto.IssueRejoinTicketResponse
	if err := c.retry(ctx, "getting a rejoin ticket", func() error {
		return c.issue(ctx, self, func(ctx context.Context, api joinproto.APIClient) (err error) {
			ticket, err = api.IssueRejoinTicket(ctx, &joinproto.IssueRejoinTicketRequest{DiskUuid: diskUUID})
			return err
		})
	}); err != nil {
		return err
	}
	clusterID, err := ticketClusterID("rejoin", ticket.GetMeasurementSecret(), ticket.GetMeasurementSalt())
	if err != nil {
		return err
	}
	// Before the lock: a key that does not unlock the disk leaves the node as it was.
	if err := c.disk.Unlock(ticket.GetStateDiskKey()); err != nil {
		return fmt.Errorf("the JoinService's disk key does not unlock this node's state disk: %w", err)
	}
	// Only a blob whose key unlocked the disk replaces the kept one (the KMS key may have moved since).
	if err := keepWrappedKey(c.disk, ticket.GetWrappedStateDiskKey()); err != nil {
		return err
	}
	if !c.disk.Member() {
		log.Warn("the state disk was set up in an earlier boot whose join never completed (cut off by a power loss " +
			"or crash); joining again with the same disk")
		return c.join(ctx, self, diskUUID, true)
	}
	locked, err := c.lock.TryLock(clusterID)
	if err != nil {
		return fmt.Errorf("taking the node lock: %w", err)
	}
	if !locked {
		log.Info("got a rejoin ticket, but the node lock is taken (the node was recovered); dropping it")
		return ErrLocked
	}
	log.Info("state disk unlocked and node lock taken for rejoin", "clusterID", fmt.Sprintf("%x", clusterID))
	// The component server may be restarting too: retry until the components are installed.
	var n int
	if err := c.retryLocked(ctx, "installing the recorded components", func() error {
		n, err = nodestate.Reinstall(ctx, c.disk, c.installer)
		return err
	}); err != nil {
		return fmt.Errorf("rejoining: %w", err)
	}
	log.Info("rejoined the cluster", "components", n)
	return nil
}

// retry calls f until it succeeds, waiting with backoff between attempts, and stops when the node lock is
// taken or ctx ends.
func (c *Client) retry(ctx context.Context, what string, f func() error) error {
	return c.retryUntil(ctx, c.lock.Taken(), what, f)
}

// retryLocked is retry for work after this client took the lock: only ctx stops it.
func (c *Client) retryLocked(ctx context.Context, what string, f func() error) error {
	return c.retryUntil(ctx, nil, what, f)
}

// retryUntil calls f until it succeeds, waiting with backoff between attempts; it stops with ErrLocked
// when stop is closed, or when ctx ends.
func (c *Client) retryUntil(ctx context.Context, stop <-chan struct{}, what string, f func() error) error {
	delay := c.Backoff.Initial
	for attempt := 1; ; attempt++ {
		select {
		case <-stop:
			return ErrLocked
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		err := f()
		if err == nil {
			return nil
		}
		c.log.Info("join: "+what+" failed; retrying", "attempt", attempt, "retryIn", delay, "error", err)
		select {
		case <-stop:
			return ErrLocked
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, c.Backoff.Max)
	}
}

// issue calls each control plane's JoinService in turn until call succeeds.
func (c *Client) issue(ctx context.Context, self metadata.Instance, call func(ctx context.Context, api joinproto.APIClient) error) error {
	instances, err := c.metadata.List(ctx)
	if err != nil {
		return fmt.Errorf("listing instances: %w", err)
	}
	var errs []error
	for _, in := range instances {
		if in.Role != role.ControlPlane || in.Name == self.Name || !in.IP.IsValid() {
			continue
		}
		endpoint := net.JoinHostPort(in.IP.String(), strconv.Itoa(c.Port))
		err := c.callAt(ctx, endpoint, call)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s (%s): %w", in.Name, endpoint, err))
	}
	if len(errs) == 0 {
		return errors.New("no control plane to join through yet")
	}
	return errors.Join(errs...)
}

func (c *Client) callAt(ctx context.Context, endpoint string, call func(ctx context.Context, api joinproto.APIClient) error) error {
	conn, err := grpc.NewClient("passthrough:///"+endpoint, append([]grpc.DialOption{grpc.WithTransportCredentials(c.creds)}, c.DialOptions...)...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, c.AttemptTimeout)
	defer cancel()
	return call(ctx, joinproto.NewAPIClient(conn))
}
