// Package bootstrap is the bootstrapper's top-level flow on a node:
//
//   - If PCR 15 is set, the node took its node lock earlier in this boot (a restarted bootstrapper): it
//     belongs to a cluster already, so only the kubelet is started and supervised.
//   - Otherwise the Init API is served (over aTLS) and, at the same time, the join client tries to join
//     through the JoinService. Whichever takes the node lock first wins; the moment it is taken, the kubelet
//     supervisor starts (kubeadm init/join wait for the kubelet they configure), the Init API stops
//     accepting calls (an Init in progress runs to its end) and the join client stops unless it is the
//     winner.
//   - A restarted node (its state disk was set up in an earlier boot, the node lock is not taken) also
//     serves the Recovery API, through which the admin's `recover` hands over the disk key when no control
//     plane is left to rejoin through. It serves until shutdown.
//
// After the winning flow ends, successfully or not, the kubelet stays supervised until shutdown: a node that
// failed after taking its lock cannot take it again in this boot, and its state is best inspected as it is.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/constellation-go/constellation/bootstrapper/internal/joinclient"
)

// Lock is the node lock.
type Lock interface {
	IsLocked() (bool, error)
	Taken() <-chan struct{}
}

// Server is the Init API's gRPC server.
type Server interface {
	Serve(lis net.Listener) error
	GracefulStop()
	Stop()
}

// Runner is a flow that runs until it is done or ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Bootstrapper wires the flows.
type Bootstrapper struct {
	Lock         Lock
	InitServer   Server
	InitListener net.Listener
	Join         Runner
	Kubelet      Runner
	// PrepareNode, if set, runs before the kubelet supervisor starts (e.g. writing the pod network's
	// configuration); a failure is logged and the kubelet started anyway, kubeadm then reports the problem.
	PrepareNode func() error
	Log         *slog.Logger
	// StopGrace bounds how long an Init in progress may take to finish after shutdown was requested; zero
	// means 30 s.
	StopGrace time.Duration
	// KeepServing, if set and true when the node lock is taken, keeps the Init API serving until shutdown:
	// an Init took the lock, and its caller may come back to resume (initserver.Server.KeepServing).
	KeepServing func() bool
	// Recovery, if set, is served on a restarted node.
	Recovery *Recovery
	// Agent, if set, runs beside the kubelet supervisor until shutdown: it carries out Kubernetes upgrades
	// (bootstrapper/internal/nodeagent).
	Agent interface{ Run(ctx context.Context) }
}

// Recovery is the Recovery API of a restarted node.
type Recovery struct {
	Server Server
	// Restarted tells whether the node's state disk was set up in an earlier boot.
	Restarted func() bool
	// Listen opens the API's listener; it is called only on a restarted node.
	Listen func() (net.Listener, error)
}

// Run runs the node until ctx ends. It returns an error only if the node cannot start at all (the TPM is
// unreadable, the Init API cannot be served).
func (b *Bootstrapper) Run(ctx context.Context) error {
	locked, err := b.Lock.IsLocked()
	if err != nil {
		_ = b.InitListener.Close()
		return fmt.Errorf("checking the node lock: %w", err)
	}
	if locked {
		_ = b.InitListener.Close()
		b.Log.Info("PCR 15 is set: this node already belongs to a cluster; supervising the kubelet")
		b.prepareNode()
		stopAgent := b.startAgent(ctx)
		defer stopAgent()
		return b.Kubelet.Run(ctx)
	}
	stopRecovery, err := b.serveRecovery()
	if err != nil {
		_ = b.InitListener.Close()
		return err
	}
	defer stopRecovery()
	b.Log.Info("no node lock yet: serving Init and trying to join", "initAddr", b.InitListener.Addr().String())

	// Deferred first, so it runs last: the agent ends when kubeletCtx does.
	stopAgent := func() {}
	defer func() { stopAgent() }()
	// The kubelet outlives the flows: it is stopped only when ctx ends.
	kubeletCtx, cancelKubelet := context.WithCancel(ctx)
	defer cancelKubelet()
	var kubeletDone chan error
	fatal := b.runFlows(ctx, func() {
		b.prepareNode()
		kubeletDone = make(chan error, 1)
		go func() { kubeletDone <- b.Kubelet.Run(kubeletCtx) }()
		stopAgent = b.startAgent(kubeletCtx)
	})
	if kubeletDone == nil {
		return fatal
	}
	if fatal == nil {
		<-ctx.Done()
	}
	cancelKubelet()
	if err := <-kubeletDone; err != nil {
		b.Log.Error("kubelet supervisor", "error", err)
	}
	return fatal
}

// runFlows serves Init and runs the join client until both have ended; startKubelet is called once, when
// the node lock is taken.
func (b *Bootstrapper) runFlows(ctx context.Context, startKubelet func()) error {
	serveDone := make(chan error, 1)
	go func() { serveDone <- b.InitServer.Serve(b.InitListener) }()
	joinCtx, cancelJoin := context.WithCancel(ctx)
	defer cancelJoin()
	joinDone := make(chan error, 1)
	go func() { joinDone <- b.Join.Run(joinCtx) }()

	initStopping := false
	stopped := make(chan struct{})
	stopInit := func() {
		if initStopping {
			return
		}
		initStopping = true
		go func() {
			b.InitServer.GracefulStop()
			close(stopped)
		}()
	}

	taken, done := b.Lock.Taken(), ctx.Done()
	var fatal error
	for serveDone != nil || joinDone != nil {
		select {
		case <-taken:
			taken = nil
			startKubelet()
			if b.KeepServing != nil && b.KeepServing() {
				b.Log.Info("node lock taken by init: starting the kubelet supervisor; the Init API keeps serving resumed calls")
				continue
			}
			b.Log.Info("node lock taken: starting the kubelet supervisor; the Init API stops accepting calls")
			stopInit()
		case err := <-joinDone:
			joinDone = nil
			switch {
			case err == nil:
				b.Log.Info("the node joined the cluster")
			case errors.Is(err, joinclient.ErrLocked):
				b.Log.Info("join stopped: the node lock is taken by init")
			case errors.Is(err, context.Canceled) && (ctx.Err() != nil || fatal != nil):
			default:
				b.Log.Error("join failed after the node lock was taken; the node cannot join again in this boot", "error", err)
			}
		case err := <-serveDone:
			serveDone = nil
			if !initStopping && err != nil {
				fatal = fmt.Errorf("serving the Init API: %w", err)
				cancelJoin()
			}
		case <-done:
			done = nil
			cancelJoin()
			stopInit()
			// An Init in progress gets a grace period, then is cut off.
			go func() {
				select {
				case <-stopped:
				case <-time.After(b.stopGrace()):
					b.Log.Warn("an Init in progress did not finish in time; stopping it")
					b.InitServer.Stop()
				}
			}()
		}
	}
	// The flows are done when an Init in progress has finished too (Serve returns before that).
	if initStopping {
		<-stopped
	}
	return fatal
}

// serveRecovery serves the Recovery API if the node was restarted, until the returned stop is called.
func (b *Bootstrapper) serveRecovery() (stop func(), err error) {
	if b.Recovery == nil || !b.Recovery.Restarted() {
		return func() {}, nil
	}
	lis, err := b.Recovery.Listen()
	if err != nil {
		return nil, fmt.Errorf("listening for Recover: %w", err)
	}
	b.Log.Info("restarted node: the state disk is locked; serving Recover and trying to rejoin", "recoverAddr", lis.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Recovery.Server.Serve(lis); err != nil {
			b.Log.Error("serving Recover", "error", err)
		}
	}()
	return func() {
		b.Recovery.Server.GracefulStop()
		<-done
	}, nil
}

// startAgent runs the agent until ctx ends; the returned func waits for that.
func (b *Bootstrapper) startAgent(ctx context.Context) (wait func()) {
	if b.Agent == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Agent.Run(ctx)
	}()
	return func() { <-done }
}

func (b *Bootstrapper) prepareNode() {
	if b.PrepareNode == nil {
		return
	}
	if err := b.PrepareNode(); err != nil {
		b.Log.Error("preparing the node for the kubelet", "error", err)
	}
}

func (b *Bootstrapper) stopGrace() time.Duration {
	if b.StopGrace == 0 {
		return 30 * time.Second
	}
	return b.StopGrace
}
