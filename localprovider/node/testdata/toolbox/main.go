// Command toolbox is the only program of the node tests' small image: a multi-call binary that stands in
// for containerd and the bootstrapper and provides the few commands the tests run in a node, chosen by the
// name it is called by (argv[0]).
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/constellation-go/constellation/internal/tpm"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "toolbox" && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	if err := run(name, args); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

func run(name string, args []string) error {
	switch name {
	case "containerd":
		// Listens on containerd's socket until SIGTERM; fails at once if /etc/toolbox/containerd-fails
		// exists.
		if _, err := os.Stat("/etc/toolbox/containerd-fails"); err == nil {
			return fmt.Errorf("failing as configured")
		}
		fmt.Println("fake containerd", strings.Join(args, " "))
		_ = os.MkdirAll("/run/containerd", 0o711)
		ln, err := net.Listen("unix", "/run/containerd/containerd.sock")
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		waitForTerm()
		fmt.Println("fake containerd stopping")
		return nil
	case "bootstrapper":
		// Prints its arguments and BOOTSTRAPPER_* variables, then waits for SIGTERM.
		fmt.Println("fake bootstrapper", strings.Join(args, " "))
		for _, e := range os.Environ() {
			if strings.HasPrefix(e, "BOOTSTRAPPER_") {
				fmt.Println(e)
			}
		}
		waitForTerm()
		fmt.Println("fake bootstrapper stopping")
		return nil
	case "cat":
		if len(args) == 0 {
			_, err := io.Copy(os.Stdout, os.Stdin)
			return err
		}
		for _, a := range args {
			b, err := os.ReadFile(a)
			if err != nil {
				return err
			}
			os.Stdout.Write(b)
		}
		return nil
	case "write":
		// write FILE CONTENT
		return os.WriteFile(args[0], []byte(args[1]), 0o644)
	case "exit":
		code, _ := strconv.Atoi(args[0])
		fmt.Fprintln(os.Stderr, "exiting with", code)
		os.Exit(code)
	case "sleep":
		waitForTerm()
		return nil
	case "killall":
		// killall NAME: SIGKILL every process whose command is NAME.
		procs, _ := filepath.Glob("/proc/[0-9]*/comm")
		n := 0
		for _, p := range procs {
			comm, err := os.ReadFile(p)
			if err != nil || strings.TrimSpace(string(comm)) != args[0] {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("no process %s", args[0])
		}
		return nil
	case "pcrs":
		// pcrs ADDRESS INDEX...: prints each PCR's SHA-256 value as "index hex".
		t, err := tpm.Open(args[0])
		if err != nil {
			return err
		}
		defer t.Close()
		var idx []uint32
		for _, a := range args[1:] {
			i, err := strconv.Atoi(a)
			if err != nil {
				return err
			}
			idx = append(idx, uint32(i))
		}
		pcrs, err := tpm.ReadPCRs(t, idx)
		if err != nil {
			return err
		}
		for _, i := range idx {
			fmt.Printf("%d %x\n", i, pcrs[i])
		}
		return nil
	case "ls":
		entries, err := os.ReadDir(args[0])
		if err != nil {
			return err
		}
		for _, e := range entries {
			fmt.Println(e.Name())
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", name)
}

func waitForTerm() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
