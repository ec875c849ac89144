// Command pause is the infrastructure ("sandbox") container of every pod: it holds the pod's namespaces and
// does nothing else. It behaves like Kubernetes' pause.c: it sleeps until SIGINT or SIGTERM (then exits 0)
// and, as the pod's PID 1 when the pod shares its process namespace, reaps zombie processes on SIGCHLD.
//
// bazel/kubernetes/build.sh builds it statically (CGO_ENABLED=0) from this file alone, in a throwaway module,
// and puts it into the registry.k8s.io/pause image that kubeadm and containerd expect. Keep it to the
// standard library: its bytes must depend on this file and the Go version only.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set by the build (-X main.version=3.10) to the pause image version it is packaged as.
var version = "unknown"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Printf("pause.go version %s\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// Children that exited before the handler was installed.
	reap()
	os.Exit(run(sigs, reap, os.Stderr))
}

// run waits for signals: SIGCHLD reaps, anything else (SIGINT, SIGTERM) ends the process with status 0.
func run(sigs <-chan os.Signal, reap func() int, log io.Writer) int {
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(log, "Shutting down, got signal: %v\n", sig)
		return 0
	}
	return 0
}

// reap collects every exited child without blocking and returns how many it collected.
func reap() int {
	n := 0
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return n
		}
		n++
	}
}
