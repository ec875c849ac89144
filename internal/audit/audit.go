// Package audit is the append-only, hash-chained log of attestation decisions (joins, rejoins, refusals,
// re-attestations) that each control plane's JoinService keeps, and its verification.
//
// Every entry is one JSON line that carries the hash of the entry before it (prev) and its own hash: SHA-256
// over the entry's JSON without the hash field. An entry that was altered no longer matches its hash; one
// that was deleted breaks the chain at the next entry; a reordered pair breaks it too. A log cut short or
// replaced from its start is detected against an anchor: the sequence number and hash of the last entry a
// verifier saw before (`constellation audit verify` keeps one per control plane in the workspace's state),
// which the log must still contain.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Kinds of decisions.
const (
	KindJoin          = "join"
	KindRejoin        = "rejoin"
	KindHandshake     = "handshake"
	KindReattestation = "reattestation"
)

// Entry is one decision.
type Entry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	// Node is the node's name as the request or the cluster named it; empty for a refused handshake.
	Node string `json:"node,omitempty"`
	// Result is "ok", "refused" or "failed"; Reason and Detail say why.
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	Prev   string `json:"prev"`
	Hash   string `json:"hash,omitempty"`
}

// genesis is the prev of the first entry.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

// digest is the entry's hash: SHA-256 over its JSON without the hash.
func (e Entry) digest() (string, error) {
	e.Hash = ""
	raw, err := json.Marshal(e)
	if err != nil {
		return "", err
	}
	d := sha256.Sum256(raw)
	return hex.EncodeToString(d[:]), nil
}

// maxLine bounds one entry; maxDetail bounds its detail (a validation error lists every differing PCR with
// its events), which Append cuts to fit.
const (
	maxLine   = 64 << 10
	maxDetail = 4096
)

// Log appends entries to a file.
type Log struct {
	mu   sync.Mutex
	path string
	f    *os.File
	seq  uint64
	last string
	now  func() time.Time
}

// Open opens (or creates, 0600 in a 0700 directory) the log at path for appending. It reads the existing
// entries to continue the chain; a log whose chain is broken is still opened, so that decisions keep being
// recorded, and the error (ErrBroken) says where it breaks: the caller reports it.
func Open(path string) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	l := &Log{path: path, f: f, last: genesis, now: time.Now}
	sum, verr := Verify(f, nil)
	if sum.Entries > 0 {
		l.seq, l.last = sum.Last.Seq, sum.Last.Hash
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		_ = f.Close()
		return nil, err
	}
	return l, verr
}

// Append records e (its Seq, Time, Prev and Hash are set here) and syncs it to disk.
func (l *Log) Append(e Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq, e.Time, e.Prev = l.seq+1, l.now().UTC(), l.last
	if len(e.Detail) > maxDetail {
		e.Detail = e.Detail[:maxDetail-3] + "..."
	}
	h, err := e.digest()
	if err != nil {
		return err
	}
	e.Hash = h
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if len(line) >= maxLine {
		return fmt.Errorf("audit entry of %d bytes is too long", len(line))
	}
	if err := l.reopenIfReplaced(); err != nil {
		return err
	}
	if _, err := l.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("appending to the audit log: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("syncing the audit log: %w", err)
	}
	l.seq, l.last = e.Seq, e.Hash
	return nil
}

// reopenIfReplaced follows a log file that was replaced (deleted, or rewritten by an editor) under the
// same path: otherwise new entries would go to a file nobody can read any more. The chain continues from
// the last entry written, so the replacement shows as a break.
func (l *Log) reopenIfReplaced() error {
	cur, err := l.f.Stat()
	if err != nil {
		return err
	}
	onDisk, err := os.Stat(l.path)
	if err == nil && os.SameFile(cur, onDisk) {
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("reopening the replaced audit log: %w", err)
	}
	_ = l.f.Close()
	l.f = f
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Anchor is a point of the chain a verifier saw before.
type Anchor struct {
	Seq  uint64 `json:"seq" yaml:"seq"`
	Hash string `json:"hash" yaml:"hash"`
}

// Summary describes a verified log.
type Summary struct {
	Entries int `json:"entries"`
	// First and Last are the first and last entries (zero for an empty log).
	First, Last Entry
	// Results counts entries by result.
	Results map[string]int `json:"results"`
}

// ErrBroken marks a log whose chain does not hold or that lost the anchored entry.
var ErrBroken = errors.New("the audit log's hash chain is broken")

// Verify reads a log, checks every entry's hash and link, and, with an anchor, that the anchored entry is
// still there. The summary covers the entries read up to the first break.
func Verify(r io.Reader, anchor *Anchor) (Summary, error) {
	sum := Summary{Results: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	prev, next := genesis, uint64(1)
	anchored := anchor == nil || anchor.Seq == 0
	line := 0
	for sc.Scan() {
		line++
		raw := sc.Bytes()
		if len(bytes.TrimSpace(raw)) == 0 {
			return sum, fmt.Errorf("%w: line %d is empty", ErrBroken, line)
		}
		var e Entry
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return sum, fmt.Errorf("%w: line %d is not an entry: %v", ErrBroken, line, err)
		}
		want, err := e.digest()
		if err != nil {
			return sum, err
		}
		switch {
		case e.Hash != want:
			return sum, fmt.Errorf("%w: entry %d (line %d) was altered: its hash does not match its content", ErrBroken, e.Seq, line)
		case e.Seq != next || e.Prev != prev:
			return sum, fmt.Errorf("%w: entry %d (line %d) does not follow entry %d: entries before it were deleted, reordered or replaced",
				ErrBroken, e.Seq, line, next-1)
		}
		if anchor != nil && e.Seq == anchor.Seq {
			if e.Hash != anchor.Hash {
				return sum, fmt.Errorf("%w: entry %d is not the one verified before (hash %s, was %s): the log was replaced", ErrBroken, e.Seq, e.Hash, anchor.Hash)
			}
			anchored = true
		}
		if sum.Entries == 0 {
			sum.First = e
		}
		sum.Entries++
		sum.Last = e
		sum.Results[e.Result]++
		prev, next = e.Hash, e.Seq+1
	}
	if err := sc.Err(); err != nil {
		return sum, fmt.Errorf("reading the audit log: %w", err)
	}
	if !anchored {
		return sum, fmt.Errorf("%w: it ends at entry %d, but entry %d was verified before: the log was cut short", ErrBroken, sum.Last.Seq, anchor.Seq)
	}
	return sum, nil
}
