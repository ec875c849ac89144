// Package nodelog keeps the node's recent log output in memory, so that a failed init can send it back to
// the caller, and turns the output of commands (kubeadm) into log records.
package nodelog

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"sync"
)

// Buffer keeps the last Size bytes written to it. It is safe for concurrent use.
type Buffer struct {
	mu   sync.Mutex
	size int
	buf  []byte
}

// NewBuffer returns a buffer of size bytes.
func NewBuffer(size int) *Buffer {
	return &Buffer{size: size}
}

// Write appends p, dropping the oldest bytes beyond the buffer's size.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.size; over > 0 {
		// Drop whole lines where possible, so the output starts at a line.
		cut := over
		if i := bytes.IndexByte(b.buf[over:], '\n'); i >= 0 && i < 4096 {
			cut = over + i + 1
		}
		b.buf = append(b.buf[:0:0], b.buf[cut:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of the buffered output.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf)
}

// Tail returns at most max bytes from the end of the file at path, starting at a line; a missing file gives
// nothing.
func Tail(path string, max int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := fi.Size() - max
	if off < 0 {
		off = 0
	}
	data, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil
	}
	if off > 0 {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return data
}

// LineLogger is an io.Writer that logs every complete line written to it as one record at level Info with
// the message Msg. Call Flush after the writer is done to log an unterminated last line.
type LineLogger struct {
	Log *slog.Logger
	Msg string

	mu      sync.Mutex
	partial []byte
}

// Write logs each complete line of p.
func (l *LineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.emit(l.partial[:i])
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// Flush logs a remaining unterminated line.
func (l *LineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.emit(l.partial)
		l.partial = nil
	}
}

func (l *LineLogger) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	l.Log.Info(l.Msg, "line", string(line))
}
