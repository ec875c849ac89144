package awskms

import (
	"bytes"
	"context"
	"sync"
)

// MemStore is a Store in memory: for tests, and a KeyService of one process.
type MemStore struct {
	mu    sync.Mutex
	blobs map[string][]byte
}

func NewMemStore() *MemStore { return &MemStore{blobs: map[string][]byte{}} }

func (s *MemStore) Get(_ context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[name]
	if !ok {
		return nil, ErrNotFound
	}
	return bytes.Clone(b), nil
}

func (s *MemStore) Create(_ context.Context, name string, blob []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[name]; ok {
		return ErrExists
	}
	s.blobs[name] = bytes.Clone(blob)
	return nil
}

func (s *MemStore) Update(_ context.Context, name string, blob []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[name] = bytes.Clone(blob)
	return nil
}

func (s *MemStore) List(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.blobs {
		names = append(names, n)
	}
	return names, nil
}
