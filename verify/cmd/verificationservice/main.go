// Command verificationservice returns this node's attestation to anyone who asks with a fresh nonce.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"google.golang.org/grpc"

	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/verify/internal/server"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "verificationservice:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("verificationservice", flag.ContinueOnError)
	grpcAddr := fs.String("grpc-addr", ":"+strconv.Itoa(verifyproto.Port), "address of the gRPC API")
	httpAddr := fs.String("http-addr", ":"+strconv.Itoa(verifyproto.HTTPPort), "address of the HTTP API (/), /healthz and /metrics")
	variantName := fs.String("variant", variant.QEMUVTPM.String(), "attestation variant")
	tpmAddr := fs.String("tpm", "device:"+tpm.DefaultDevice, "TPM address (device:<path> or swtpm:<socket>)")
	eventLog := fs.String("event-log", vtpm.DefaultEventLogPath, "TCG event log to attach")
	nodeName := fs.String("node-name", "", "this node's name, which every answer is bound to (the DaemonSet sets it from spec.nodeName)")
	// Each answer is a TPM quote: a verify run asks every node once, a monitor every few seconds.
	rateLimit := service.RateLimitFlags(fs, 2, 10)
	logLevel, logFormat := service.LogFlags(fs)
	if err := service.ParseFlags(fs, "VERIFICATIONSERVICE", args); err != nil {
		return err
	}
	limit, err := rateLimit()
	if err != nil {
		return err
	}
	log, err := service.NewLogger(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *nodeName == "" {
		return fmt.Errorf("--node-name (or VERIFICATIONSERVICE_NODE_NAME) is required: answers are bound to the node")
	}
	node, err := choose.OpenNode(*variantName, *tpmAddr, *eventLog)
	if err != nil {
		return err
	}
	defer node.Close()
	issuer := node.Issuer

	reg := service.NewRegistry()
	srv := server.New(issuer, *nodeName, log, reg)
	// One limit per source over both APIs; /healthz and /metrics are not limited.
	g := grpc.NewServer(grpc.UnaryInterceptor(limit.UnaryServerInterceptor()))
	srv.Register(g)
	return service.ListenAndRun(ctx, *grpcAddr, *httpAddr, service.Servers{
		GRPC: g, ConnLimit: limit, Registry: reg, Log: log,
		Handlers: map[string]http.Handler{"/{$}": limit.Handler(srv)},
	})
}
