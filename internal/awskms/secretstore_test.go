package awskms

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-go/constellation/internal/kubetest"
)

// TestSecretStore runs the store against a real kube-apiserver: create-once semantics under concurrency,
// updates, listing, and the backend's keys surviving in the Secret.
func TestSecretStore(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	s := NewSecretStore(cluster.Client, metav1.NamespaceSystem, DefaultSecret)

	_, err := s.Get(ctx, "a.64")
	require.ErrorIs(t, err, ErrNotFound)
	names, err := s.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, names)

	// Eight writers race for one name (and the Secret does not exist yet): exactly one wins.
	var wg sync.WaitGroup
	wins := make(chan []byte, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			blob := []byte{byte(i)}
			switch err := s.Create(ctx, "a.64", blob); {
			case err == nil:
				wins <- blob
			case !errors.Is(err, ErrExists):
				t.Errorf("create: %v", err)
			}
		}()
	}
	wg.Wait()
	close(wins)
	var won [][]byte
	for b := range wins {
		won = append(won, b)
	}
	require.Len(t, won, 1, "exactly one writer stores its key")
	got, err := s.Get(ctx, "a.64")
	require.NoError(t, err)
	assert.Equal(t, won[0], got)

	require.NoError(t, s.Create(ctx, "measurementSecret.32", []byte("m")))
	require.NoError(t, s.Update(ctx, "a.64", []byte("rewrapped")))
	got, err = s.Get(ctx, "a.64")
	require.NoError(t, err)
	assert.Equal(t, []byte("rewrapped"), got)
	names, err = s.List(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"a.64", "measurementSecret.32"}, names)
	require.Error(t, s.Create(ctx, "no/slash", []byte("x")))
}
