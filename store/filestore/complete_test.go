package filestore_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

func TestCompleteSeveral(t *testing.T) {
	ctx := context.Background()
	s := openDir(t, t.TempDir(), nil)
	p := store.Payload{ID: "p1", Body: []byte(`{"type":"Create"}`)}
	q := store.Payload{ID: "p2", Body: []byte(`{"type":"Announce"}`)}
	require.NoError(t, s.Enqueue(ctx, []store.Payload{p, q}, []store.Delivery{
		delivery("d1", "p1", "a.test", t0),
		delivery("d2", "p1", "b.test", t0),
		delivery("d3", "p1", "c.test", t0),
		delivery("d4", "p2", "a.test", t0),
	}))
	leased := leaseAll(t, s, t0)
	require.Len(t, leased, 4)

	// Repeated and absent ids are ignored; leased deliveries are removed.
	require.NoError(t, s.Complete(ctx, store.IDs("d1", "d4", "d1", "missing")...))
	require.NoError(t, s.Complete(ctx))
	assert.Equal(t, 2, stats(t, s).Deliveries)
	assert.Equal(t, 1, stats(t, s).Payloads, "p2 lost its last delivery")
	_, err := s.GetPayload(ctx, "p2")
	assert.ErrorIs(t, err, store.ErrNotFound)

	// The removal is on disk.
	s = reopen(t, s)
	assert.Equal(t, 2, stats(t, s).Deliveries)
	var ids []string
	for _, d := range leaseAll(t, s, t0) {
		ids = append(ids, d.ID)
	}
	assert.ElementsMatch(t, []string{"d2", "d3"}, ids)
	require.NoError(t, s.Complete(ctx, store.IDs("d2", "d3")...))
	assert.Equal(t, 0, stats(t, s).Deliveries)
	assert.Equal(t, 0, stats(t, s).Payloads)

	require.NoError(t, s.Close())
	assert.ErrorIs(t, s.Complete(ctx, store.IDs("d2")...), store.ErrClosed)
}
