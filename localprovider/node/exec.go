package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Cmd is a command to run in a node.
type Cmd struct {
	// Args are the program and its arguments; a program without a slash is looked up in the node's PATH.
	Args []string
	// Env is the environment; nil means PATH and HOME=/root.
	Env []string
	// Dir is the working directory in the node; empty means /.
	Dir string
	// Stdin, Stdout and Stderr are the command's standard streams; nil means /dev/null. An *os.File is
	// passed to the command as it is; other readers and writers are copied through pipes.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ExitError reports a command that did not exit with status 0.
type ExitError struct {
	// Code is the exit status, or -1 if a signal ended the command.
	Code int
	// Status describes how it ended.
	Status string
	// Stderr is the command's standard error, if Output collected it.
	Stderr []byte
}

func (e *ExitError) Error() string {
	if len(e.Stderr) > 0 {
		return fmt.Sprintf("%s: %s", e.Status, bytes.TrimSpace(e.Stderr))
	}
	return e.Status
}

// execRequest is what the client sends, after a 4-byte big-endian length, together with three file
// descriptors (SCM_RIGHTS): standard input, output and error.
type execRequest struct {
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
}

type execResponse struct {
	// Started is sent once the command runs (or failed to start, then Error says why).
	Started bool   `json:"started,omitempty"`
	Error   string `json:"error,omitempty"`
	// Done, Code and Status are sent when it has ended.
	Done   bool   `json:"done,omitempty"`
	Code   int    `json:"code"`
	Status string `json:"status,omitempty"`
}

const maxExecRequest = 1 << 20

// Exec runs cmd in the running node whose state directory is stateDir and waits for it. A command that
// exits with a non-zero status gives an *ExitError. Cancelling ctx kills the command (and its process
// group).
func Exec(ctx context.Context, stateDir string, cmd Cmd) error {
	if len(cmd.Args) == 0 {
		return errors.New("exec: no command")
	}
	req, err := json.Marshal(execRequest{Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir})
	if err != nil {
		return err
	}
	if len(req) > maxExecRequest {
		return fmt.Errorf("exec: request of %d bytes is too large", len(req))
	}
	conn, err := dialControl(ctx, stateDir)
	if err != nil {
		return fmt.Errorf("exec in node: %w", err)
	}
	defer conn.Close()

	var copies sync.WaitGroup
	var local []*os.File  // this side's ends of pipes
	var remote []*os.File // the ends the node's process gets; closed here once sent
	defer func() {
		for _, f := range remote {
			f.Close()
		}
	}()
	stdin, err := inputFile(cmd.Stdin)
	if err != nil {
		return err
	}
	remote = append(remote, stdin)
	for _, w := range []io.Writer{cmd.Stdout, cmd.Stderr} {
		f, l, err := outputFile(w, &copies)
		if err != nil {
			return err
		}
		remote = append(remote, f)
		if l != nil {
			local = append(local, l)
		}
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(req)))
	msg = append(msg, req...)
	rights := unix.UnixRights(int(remote[0].Fd()), int(remote[1].Fd()), int(remote[2].Fd()))
	if _, _, err := conn.WriteMsgUnix(msg, rights, nil); err != nil {
		return fmt.Errorf("exec in node: sending the request: %w", err)
	}
	// The node's process has its own copies now: the pipes end when it (and its children) close them.
	for _, f := range remote {
		f.Close()
	}
	remote = nil
	// Whatever happens, the output is copied before Exec returns; a process the command left running in
	// the background with the pipes open gets 5 s, then the pipes are closed.
	defer func() {
		done := make(chan struct{})
		go func() {
			copies.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			for _, f := range local {
				f.Close()
			}
			<-done
		}
	}()

	stopWatch := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stopWatch()
	dec := json.NewDecoder(conn)
	var res execResponse
	for !res.Done {
		res = execResponse{}
		if err := dec.Decode(&res); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("exec in node: %w", err)
		}
		if res.Error != "" {
			return fmt.Errorf("exec in node: %s", res.Error)
		}
	}
	if res.Code != 0 || res.Status != "exit status 0" {
		return &ExitError{Code: res.Code, Status: res.Status}
	}
	return nil
}

// inputFile returns a file to give the command as its standard input.
func inputFile(r io.Reader) (*os.File, error) {
	if f, ok := r.(*os.File); ok {
		return dupFile(f)
	}
	if r == nil {
		return os.Open(os.DevNull)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// Not waited for: it ends when the command closes its end or r ends.
	go func() {
		_, _ = io.Copy(pw, r)
		pw.Close()
	}()
	return pr, nil
}

// outputFile returns a file to give the command as an output stream, and the pipe's reading end if it
// made one.
func outputFile(w io.Writer, copies *sync.WaitGroup) (*os.File, *os.File, error) {
	if f, ok := w.(*os.File); ok {
		d, err := dupFile(f)
		return d, nil, err
	}
	if w == nil {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		return f, nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	copies.Add(1)
	go func() {
		defer copies.Done()
		_, _ = io.Copy(w, pr)
		pr.Close()
	}()
	return pw, pr, nil
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Output runs a command in the node and returns its standard output; a non-zero exit gives an *ExitError
// with its standard error.
func Output(ctx context.Context, stateDir string, args ...string) ([]byte, error) {
	stdout, _, err := collect(ctx, stateDir, nil, args)
	if err != nil {
		return stdout, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return stdout, nil
}

// collect runs args in the node with standard input stdin and returns what it wrote to standard output and
// error; a non-zero exit gives an *ExitError with its standard error.
func collect(ctx context.Context, stateDir string, stdin io.Reader, args []string) (stdout, stderr []byte, err error) {
	var out, errOut bytes.Buffer
	err = Exec(ctx, stateDir, Cmd{Args: args, Stdin: stdin, Stdout: &out, Stderr: &errOut})
	var ee *ExitError
	if errors.As(err, &ee) {
		ee.Stderr = errOut.Bytes()
	}
	return out.Bytes(), errOut.Bytes(), err
}

// Exec runs cmd in the node (see the package function Exec).
func (n *Node) Exec(ctx context.Context, cmd Cmd) error {
	return Exec(ctx, n.StateDir, cmd)
}

// Output runs a command in the node and returns its standard output (see the package function Output).
func (n *Node) Output(ctx context.Context, args ...string) ([]byte, error) {
	return Output(ctx, n.StateDir, args...)
}

// serveExec serves Exec requests on the control socket until it is closed.
func (in *initProcess) serveExec() {
	for {
		c, err := in.ln.AcceptUnix()
		if err != nil {
			return
		}
		go in.handleExec(c)
	}
}

func (in *initProcess) handleExec(c *net.UnixConn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	fail := func(err error) { _ = enc.Encode(execResponse{Error: err.Error(), Done: true, Code: -1}) }

	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if len(fds) != 3 {
		fail(fmt.Errorf("want 3 file descriptors, got %d", len(fds)))
		return
	}
	if n < 4 {
		fail(errors.New("short request"))
		return
	}
	size := int(binary.BigEndian.Uint32(buf[:4]))
	if size > maxExecRequest {
		fail(fmt.Errorf("request of %d bytes is too large", size))
		return
	}
	data := append([]byte(nil), buf[4:n]...)
	if len(data) < size {
		rest := make([]byte, size-len(data))
		if _, err := io.ReadFull(c, rest); err != nil {
			return
		}
		data = append(data, rest...)
	}
	var req execRequest
	if err := json.Unmarshal(data[:size], &req); err != nil || len(req.Args) == 0 {
		fail(fmt.Errorf("bad request: %v", err))
		return
	}
	env := req.Env
	if env == nil {
		env = []string{defaultPath, "HOME=/root"}
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	files := []uintptr{uintptr(fds[0]), uintptr(fds[1]), uintptr(fds[2])}
	pid, done, err := in.r.start(req.Args, env, dir, files)
	if err != nil {
		fail(err)
		return
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	fds = nil
	_ = enc.Encode(execResponse{Started: true})

	// The client going away (or cancelling) kills the command's process group.
	gone := make(chan struct{})
	go func() {
		_, _ = c.Read(make([]byte, 1))
		close(gone)
	}()
	select {
	case ws := <-done:
		code := ws.ExitStatus()
		if !ws.Exited() {
			code = -1
		}
		_ = enc.Encode(execResponse{Done: true, Code: code, Status: describe(ws)})
	case <-gone:
		_ = unix.Kill(-pid, unix.SIGKILL)
		<-done
	}
}
