package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/pgstore"
	"github.com/fedirelay/relay/store/storetest"
)

// Three stores open a fresh schema at the same moment (three relay
// processes starting): the migration runs once, and of three CreateValue
// calls of the relay key all get the same, first, value.
func TestOpenAndCreateKeyConcurrently(t *testing.T) {
	url := newSchema(t)
	const n = 3
	stores := make([]*pgstore.Store, n)
	keys := make([][]byte, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for k := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			s, err := pgstore.Open(context.Background(), url)
			if err != nil {
				errs[k] = err
				return
			}
			stores[k] = s
			keys[k], errs[k] = s.CreateValue(context.Background(), "relay/private-key.pem", []byte(fmt.Sprintf("key of process %d", k)))
		}()
	}
	close(start)
	wg.Wait()
	for k := range n {
		require.NoError(t, errs[k])
		t.Cleanup(func() { stores[k].Close() })
	}
	for k := 1; k < n; k++ {
		assert.Equal(t, keys[0], keys[k], "one relay key")
	}
}

// Two stores (two processes' pools) lease from one queue at once: every
// delivery is leased by exactly one of them while leases run, and all are
// completed.
func TestPoolsLeaseEachDeliveryOnce(t *testing.T) {
	url := newSchema(t)
	a, b := open(t, url), open(t, url)
	ctx := context.Background()
	const n = 400
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ds []store.Delivery
	for k := range n {
		ds = append(ds, storetest.SampleDelivery(fmt.Sprintf("d%d", k), "p", fmt.Sprintf("h%d.example", k%7), t0))
	}
	require.NoError(t, a.Enqueue(ctx, []store.Payload{{ID: "p", Body: []byte("body")}}, ds))
	var mu sync.Mutex
	leased := map[string]int{}
	var wg sync.WaitGroup
	for _, s := range []*pgstore.Store{a, b, a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := s.Lease(ctx, store.LeaseRequest{Now: t0.Add(time.Minute), Limit: 7, Duration: time.Hour, PerHost: 2})
				if !assert.NoError(t, err) || len(got) == 0 {
					return
				}
				refs := make([]store.LeaseRef, len(got))
				mu.Lock()
				for k, d := range got {
					leased[d.ID]++
					refs[k] = d.Ref()
				}
				mu.Unlock()
				assert.NoError(t, s.Complete(ctx, refs...))
			}
		}()
	}
	wg.Wait()
	assert.Len(t, leased, n)
	for id, c := range leased {
		assert.Equal(t, 1, c, "%s leased %d times", id, c)
	}
	left, err := b.CountDeliveries(ctx, store.DeliveryFilter{})
	require.NoError(t, err)
	assert.Zero(t, left)
	_, err = b.GetPayload(ctx, "p")
	assert.ErrorIs(t, err, store.ErrNotFound, "the payload went with its last delivery")
}

// Two pools (as two processes would) leasing at once under
// LeaseRequest.HostCap never hold more than the cap for one host between
// them.
func TestPoolsKeepHostCap(t *testing.T) {
	url := newSchema(t)
	storetest.HostCapConcurrently(t, open(t, url), open(t, url))
}

// A database with the schema of version 1 (before lease tokens), holding
// a queued delivery, is migrated when the store opens: the delivery is
// leased with a token and completed under it.
func TestMigrateFromVersion1(t *testing.T) {
	url := newSchema(t)
	v1, err := os.ReadFile("migrations/001_init.sql")
	require.NoError(t, err)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, string(v1)+`;
		CREATE TABLE fedirelay_schema (version integer NOT NULL);
		INSERT INTO fedirelay_schema VALUES (1);
		INSERT INTO fedirelay_payloads (id, body) VALUES ('p', 'body');
		INSERT INTO fedirelay_deliveries (id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created)
		VALUES ('d', 'p', 'https://a.example/inbox', 'a.example', '', 'Create', 0, '2026-01-01Z', '', '2026-01-01Z')`)
	require.NoError(t, err)

	s := open(t, url)
	var version int
	require.NoError(t, conn.QueryRow(ctx, `SELECT version FROM fedirelay_schema`).Scan(&version))
	assert.Equal(t, pgstore.SchemaVersion, version)
	got, err := s.Lease(ctx, store.LeaseRequest{Now: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), Limit: 10, Duration: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.NotEmpty(t, got[0].Token)
	require.NoError(t, s.Complete(ctx, got[0].Ref()))
	n, err := s.CountDeliveries(ctx, store.DeliveryFilter{})
	require.NoError(t, err)
	assert.Zero(t, n)

	// Opening again changes nothing; a newer schema is refused.
	open(t, url)
	_, err = conn.Exec(ctx, `UPDATE fedirelay_schema SET version = 99`)
	require.NoError(t, err)
	_, err = pgstore.Open(ctx, url)
	assert.ErrorContains(t, err, "newer")
}

// One store's Enqueue and PutValue wake another store's listeners.
func TestNotifications(t *testing.T) {
	url := newSchema(t)
	a, b := open(t, url), open(t, url)
	ctx := context.Background()
	drain := func() {
		for {
			select {
			case <-b.QueueChanged():
			case <-b.ValuesChanged():
			case <-time.After(200 * time.Millisecond):
				return
			}
		}
	}
	drain() // the signals sent when b started listening
	d := storetest.SampleDelivery("d", "p", "a.example", time.Now())
	require.NoError(t, a.Enqueue(ctx, []store.Payload{{ID: "p", Body: []byte("x")}}, []store.Delivery{d}))
	select {
	case <-b.QueueChanged():
	case <-time.After(10 * time.Second):
		t.Fatal("no queue notification")
	}
	require.NoError(t, a.PutValue(ctx, "relay/blocked-domains", []byte(`{"domains":["x.example"]}`)))
	select {
	case <-b.ValuesChanged():
	case <-time.After(10 * time.Second):
		t.Fatal("no value notification")
	}
}

// A connection string with a password that cannot be used: the error does
// not show the password.
func TestOpenErrorHidesPassword(t *testing.T) {
	for _, conn := range []string{
		"postgres://relay:s3cret@127.0.0.1:1/relay?connect_timeout=2",
		"postgres://relay:s3cret@127.0.0.1:1/relay?sslmode=%zz",
		"host=127.0.0.1 port=1 user=relay password=s3cret connect_timeout=2",
		"host=127.0.0.1 port=x password=s3cret",
	} {
		_, err := pgstore.Open(context.Background(), conn)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "s3cret")
	}
}

// Two pools remove deliveries at once, each Complete or DropDeliveries
// taking one of a payload's last deliveries: every payload is reclaimed
// with its last delivery, whichever removal comes last, and none of them
// waits on a lock for the others.
func TestConcurrentRemovalsReclaimEveryPayload(t *testing.T) {
	url := newSchema(t)
	a, b := open(t, url), open(t, url)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const payloads, each = 60, 4
	var ps []store.Payload
	var ds []store.Delivery
	for p := range payloads {
		ps = append(ps, store.Payload{ID: fmt.Sprintf("p%d", p), Body: []byte("body")})
		for k := range each {
			d := storetest.SampleDelivery(fmt.Sprintf("d%d-%d", p, k), fmt.Sprintf("p%d", p), fmt.Sprintf("h%d.example", k), t0)
			d.Subscriber = fmt.Sprintf("https://h%d.example/actor/%d", k, p)
			ds = append(ds, d)
		}
	}
	require.NoError(t, a.Enqueue(ctx, ps, ds))
	got, err := a.Lease(ctx, store.LeaseRequest{Now: t0, Limit: len(ds), Duration: time.Hour})
	require.NoError(t, err)
	require.Len(t, got, len(ds))
	var wg sync.WaitGroup
	for k, d := range got {
		s := []*pgstore.Store{a, b}[k%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if k%3 == 0 {
				_, err := s.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: d.Subscriber})
				assert.NoError(t, err)
				return
			}
			assert.NoError(t, s.Complete(ctx, d.Ref()))
		}()
	}
	wg.Wait()
	assert.Zero(t, countRows(t, url, "fedirelay_payloads"), "every payload went with its last delivery")
}

// A payload that no delivery refers to (left by a process that ended
// between removing a payload's last delivery and reclaiming it) is removed
// when a store opens; payloads in use stay.
func TestOpenRemovesUnusedPayloads(t *testing.T) {
	url := newSchema(t)
	s := open(t, url)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "used", Body: []byte("x")}},
		[]store.Delivery{storetest.SampleDelivery("d", "used", "a.example", t0)}))
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `INSERT INTO fedirelay_payloads (id, body) VALUES ('unused', 'x')`)
	require.NoError(t, err)
	require.Equal(t, 2, countRows(t, url, "fedirelay_payloads"))

	open(t, url)
	assert.Equal(t, 1, countRows(t, url, "fedirelay_payloads"))
	_, err = s.GetPayload(ctx, "used")
	assert.NoError(t, err)
}

// countRows returns the number of rows of table in url's schema.
func countRows(t *testing.T, url, table string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n))
	return n
}

// A database of schema version 4 (leases kept in the deliveries), with a
// delivery under a live lease and one whose lease was released by Retry,
// is migrated when the store opens: the live lease still holds its
// delivery and its token still completes it, and the released one's token
// still acts until the delivery is leased again.
func TestMigrateFromVersion4(t *testing.T) {
	url := newSchema(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var script string
	for _, f := range []string{"001_init.sql", "002_lease_tokens.sql", "003_delivery_signer.sql", "004_leased_hosts.sql"} {
		b, err := os.ReadFile("migrations/" + f)
		require.NoError(t, err)
		script += string(b) + ";\n"
	}
	_, err = conn.Exec(ctx, script+`
		CREATE TABLE fedirelay_schema (version integer NOT NULL);
		INSERT INTO fedirelay_schema VALUES (4);
		INSERT INTO fedirelay_payloads (id, body) VALUES ('p', 'body');
		INSERT INTO fedirelay_deliveries (id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created, lease_until, lease_token)
		VALUES ('leased', 'p', 'https://a.example/inbox', 'a.example', '', 'Create', 0, '2026-01-01Z', '', '2026-01-01Z', '2026-01-01 01:00Z', 7),
		       ('released', 'p', 'https://b.example/inbox', 'b.example', '', 'Create', 1, '2026-01-01Z', 'x', '2026-01-01Z', NULL, 9)`)
	require.NoError(t, err)

	s := open(t, url)
	var version int
	require.NoError(t, conn.QueryRow(ctx, `SELECT version FROM fedirelay_schema`).Scan(&version))
	assert.Equal(t, pgstore.SchemaVersion, version)
	released := store.Delivery{ID: "released", Token: "9", Attempts: 2, NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	require.NoError(t, s.Retry(ctx, released), "the released token acts until the delivery is leased again")
	// Before the lease runs out only the released delivery is due.
	got, err := s.Lease(ctx, store.LeaseRequest{Now: time.Date(2026, 1, 1, 0, 30, 0, 0, time.UTC), Limit: 10, Duration: time.Minute, HostCap: 4})
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "released", got[0].ID)
	assert.ErrorIs(t, s.Retry(ctx, store.Delivery{ID: "released", Token: "9"}), store.ErrLeaseLost, "leased again: the old token is lost")
	require.NoError(t, s.Complete(ctx, store.LeaseRef{ID: "leased", Token: "7"}))
	require.NoError(t, s.Complete(ctx, got[0].Ref()))
	n, err := s.CountDeliveries(ctx, store.DeliveryFilter{})
	require.NoError(t, err)
	assert.Zero(t, n)
	_, err = s.GetPayload(ctx, "p")
	assert.ErrorIs(t, err, store.ErrNotFound)
}

// The store's sessions plan each statement for its arguments and end a
// transaction left idle, unless the connection string says otherwise.
func TestSessionSettings(t *testing.T) {
	url := newSchema(t)
	ctx := context.Background()
	show := func(s *pgstore.Store, name string) string {
		t.Helper()
		var v string
		require.NoError(t, pgstore.QueryRowForTest(ctx, s, "SHOW "+name).Scan(&v))
		return v
	}
	s := open(t, url)
	assert.Equal(t, "force_custom_plan", show(s, "plan_cache_mode"))
	assert.Equal(t, "1min", show(s, "idle_in_transaction_session_timeout"))
	own := open(t, pgstore.WithParam(url, "plan_cache_mode", "auto"))
	assert.Equal(t, "auto", show(own, "plan_cache_mode"))
	// A value set otherwise than as a parameter of its own (here in
	// options, as a role's or database's setting would be) stays too.
	opts := open(t, pgstore.WithParam(url, "options", "-cidle_in_transaction_session_timeout=5min"))
	assert.Equal(t, "5min", show(opts, "idle_in_transaction_session_timeout"))
	assert.Equal(t, "force_custom_plan", show(opts, "plan_cache_mode"))
}

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

// A removal reclaims its own payloads even while a sweep of every unused
// payload is due and would fail (here: lock_timeout on an unused payload
// another session holds; in production, statement_timeout on a large
// table): the sweep is left to the listener, off the removals' path.
func TestReclaimWhileSweepDue(t *testing.T) {
	url := pgstore.WithParam(newSchema(t), "lock_timeout", "300ms")
	s := open(t, url)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	require.NoError(t, s.Enqueue(ctx,
		[]store.Payload{{ID: "p1", Body: []byte("x")}, {ID: "p2", Body: []byte("x")}},
		[]store.Delivery{storetest.SampleDelivery("d1", "p1", "a.example", t0), storetest.SampleDelivery("d2", "p2", "a.example", t0)}))
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `INSERT INTO fedirelay_payloads (id, body) VALUES ('orphan', 'x')`)
	require.NoError(t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, `SELECT 1 FROM fedirelay_payloads WHERE id = 'orphan' FOR UPDATE`)
	require.NoError(t, err)

	pgstore.SetSweepDueForTest(s) // as after a failed removal
	require.NoError(t, s.Complete(ctx, store.IDs("d1")...))
	require.NoError(t, s.Complete(ctx, store.IDs("d2")...))
	for _, p := range []string{"p1", "p2"} {
		_, err := s.GetPayload(ctx, p)
		assert.ErrorIs(t, err, store.ErrNotFound, "payload %s went with its last delivery", p)
	}
}
