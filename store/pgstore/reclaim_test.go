package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/storetest"
)

// enqueueInFlight begins a transaction that queues a delivery of payload,
// as an Enqueue does, and leaves it open: it holds the foreign key's lock
// on the payload until the caller commits it.
func enqueueInFlight(t *testing.T, url, id, payload string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO fedirelay_deliveries (id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created)
		VALUES ($1, $2, 'https://x.example/inbox', 'x.example', '', 'Create', 0, now(), '', now())`, id, payload)
	require.NoError(t, err)
	return tx
}

// waitForPayloadDeleteBlocked waits until a DELETE of payloads waits for a lock.
func waitForPayloadDeleteBlocked(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; {
		require.True(t, time.Now().Before(deadline), "no DELETE of payloads waits for a lock")
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%DELETE FROM fedirelay_payloads%'`).Scan(&n))
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A reclaim (or a sweep of every unused payload) that meets an Enqueue
// giving one of its payloads a new delivery still reclaims the others:
// after the removals, no payload that no delivery refers to is stored.
func TestReclaimAfterConcurrentEnqueue(t *testing.T) {
	url := newSchema(t)
	s := open(t, url)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ps []store.Payload
	var ds []store.Delivery
	for _, p := range []string{"p1", "p2", "p4", "p5"} {
		ps = append(ps, store.Payload{ID: p, Body: []byte("body")})
		ds = append(ds, storetest.SampleDelivery("d-"+p, p, "a.example", t0))
	}
	require.NoError(t, s.Enqueue(ctx, ps, ds))

	// 1. Complete d-p1 and d-p4 while an Enqueue gives p1 a new delivery:
	// the reclaim of p1 and p4 fails on the foreign key.
	t1 := enqueueInFlight(t, url, "e1", "p1")
	done := make(chan error, 1)
	go func() { done <- s.Complete(ctx, store.IDs("d-p1", "d-p4")...) }()
	waitForPayloadDeleteBlocked(t, url)
	require.NoError(t, t1.Commit(ctx))
	require.NoError(t, <-done)

	// 2. The next removal sweeps instead, while an Enqueue gives p2 a new
	// delivery: the sweep fails the same way.
	t2 := enqueueInFlight(t, url, "e2", "p2")
	go func() { done <- s.Complete(ctx, store.IDs("d-p2")...) }()
	waitForPayloadDeleteBlocked(t, url)
	require.NoError(t, t2.Commit(ctx))
	require.NoError(t, <-done)

	// 3. Later removals, uncontended.
	require.NoError(t, s.Complete(ctx, store.IDs("d-p5")...))
	require.NoError(t, s.Complete(ctx, store.IDs("e1", "e2")...))

	for _, p := range []string{"p1", "p2", "p4", "p5"} {
		_, err := s.GetPayload(ctx, p)
		assert.ErrorIs(t, err, store.ErrNotFound, "payload %s: no delivery refers to it", p)
	}
}
