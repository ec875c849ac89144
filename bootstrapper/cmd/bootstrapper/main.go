// Command bootstrapper is the first Constellation process on a node. This version establishes the node's
// measured-boot baseline: it opens the TPM, logs the PCR values that attestation will report, and stays up
// until it is stopped. The init and join flows (issue 6) build on it.
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/constellation-go/constellation/internal/buildinfo"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/internal/tpm"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bootstrapper:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("bootstrapper", flag.ContinueOnError)
	tpmAddr := fs.String("tpm", "device:"+tpm.DefaultDevice, "TPM address (device:<path> or swtpm:<socket>)")
	logLevel, logFormat := service.LogFlags(fs)
	if err := service.ParseFlags(fs, "BOOTSTRAPPER", args); err != nil {
		return err
	}
	log, err := service.NewLogger(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	bi := buildinfo.Get()
	log.Info("bootstrapper starting", "version", bi.Version, "commit", bi.Commit)
	if err := logMeasurements(log, *tpmAddr); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("bootstrapper stopping")
	return nil
}

// logMeasurements records the PCRs the node will attest with, so that a mismatch reported by
// `constellation verify` can be compared with what the node saw at boot.
func logMeasurements(log *slog.Logger, addr string) error {
	t, err := tpm.Open(addr)
	if err != nil {
		return fmt.Errorf("opening the TPM: %w", err)
	}
	defer t.Close()
	pcrs, err := tpm.ReadPCRs(t, measurements.DefaultEnforced)
	if err != nil {
		return fmt.Errorf("reading PCRs: %w", err)
	}
	for _, idx := range measurements.DefaultEnforced {
		log.Info("boot measurement", "pcr", idx, "sha256", hex.EncodeToString(pcrs[idx]))
	}
	return nil
}
