package filestore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/storetest"
)

var t0 = time.Date(2025, time.March, 14, 15, 9, 26, 535897000, time.UTC)

// openDir opens the store in dir and closes it at the end of the test.
func openDir(t *testing.T, dir string, opts *filestore.Options) *filestore.Store {
	t.Helper()
	s, err := filestore.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// reopen closes s and opens its directory again.
func reopen(t *testing.T, s *filestore.Store) *filestore.Store {
	t.Helper()
	require.NoError(t, s.Close())
	return openDir(t, s.Dir(), nil)
}

// delivery is the conformance suite's sample delivery.
var delivery = storetest.SampleDelivery

func sampleSubscriber(actorID, host string) store.Subscriber {
	return store.Subscriber{
		ActorID:         actorID,
		Host:            host,
		Protocol:        store.ProtocolLitePub,
		State:           store.StateAccepted,
		FollowID:        actorID + "#follow",
		Inbox:           actorID + "/inbox",
		SharedInbox:     "https://" + host + "/inbox",
		FollowBackID:    "https://relay.example/follows/1",
		FollowBackState: store.StatePending,
		Note:            "ünïcode",
		CreatedAt:       t0,
		UpdatedAt:       t0.Add(time.Hour),
		Delivered:       1 << 40,
		Failed:          2,
		LastSuccess:     t0.Add(2 * time.Hour),
		LastFailure:     t0.Add(3 * time.Hour),
		LastError:       "HTTP 503",
		FailingSince:    t0.Add(3 * time.Hour),
	}
}

func put(t *testing.T, s store.Store, sub store.Subscriber) {
	t.Helper()
	_, err := s.UpdateSubscriber(t.Context(), sub.ActorID, func(p *store.Subscriber, _ bool) error {
		*p = sub
		return nil
	})
	require.NoError(t, err)
}

// leaseAll leases every due delivery for an hour; it returns them without
// their lease tokens, for comparisons (Complete with an empty token acts
// whoever holds a delivery).
func leaseAll(t *testing.T, s store.Store, now time.Time) []store.Delivery {
	t.Helper()
	got, err := s.Lease(t.Context(), store.LeaseRequest{Now: now, Limit: 1000, Duration: time.Hour})
	require.NoError(t, err)
	for i := range got {
		require.NotEmpty(t, got[i].Token)
		got[i].Token = ""
	}
	return got
}

func stats(t *testing.T, s *filestore.Store) filestore.Stats {
	t.Helper()
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	return st
}

// TestReopen checks that everything but leases survives Close and Open.
func TestReopen(t *testing.T) {
	ctx := t.Context()
	s := openDir(t, t.TempDir(), nil)

	require.NoError(t, s.PutValue(ctx, "relay/private-key.pem", []byte("-----BEGIN PRIVATE KEY-----\n")))
	require.NoError(t, s.PutValue(ctx, "", []byte{0, 1, 0xff}))
	require.NoError(t, s.PutValue(ctx, "deleted", []byte("x")))
	require.NoError(t, s.DeleteValue(ctx, "deleted"))
	a := sampleSubscriber("https://a.example/actor", "a.example")
	b := sampleSubscriber("https://b.example/users/relay", "b.example")
	b.State, b.Protocol = store.StatePending, store.ProtocolMastodon
	gone := sampleSubscriber("https://c.example/actor", "c.example")
	for _, sub := range []store.Subscriber{b, a, gone} {
		put(t, s, sub)
	}
	require.NoError(t, s.DeleteSubscriber(ctx, gone.ActorID))

	fresh, err := s.MarkSeen(ctx, "https://a.example/activities/1", time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.True(t, fresh)

	d1, d2, d3 := delivery("d1", "p", "a.example", t0), delivery("d2", "p", "b.example", t0.Add(time.Second)),
		delivery("d3", "q", "b.example", t0.Add(2*time.Second))
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p", Body: []byte("body p")}, {ID: "q", Body: []byte("body q")}},
		[]store.Delivery{d1, d2, d3}))
	require.Len(t, leaseAll(t, s, t0.Add(time.Minute)), 3)
	d2.Attempts, d2.NotBefore, d2.LastError = 2, t0.Add(time.Minute), "HTTP 502"
	require.NoError(t, s.Retry(ctx, d2))
	require.NoError(t, s.Complete(ctx, store.IDs("d3")...)) // and its payload
	before := stats(t, s)

	s = reopen(t, s)
	after := stats(t, s)
	assert.Equal(t, before.Subscribers, after.Subscribers)
	assert.Equal(t, before.Deliveries, after.Deliveries)
	assert.Equal(t, 1, after.Payloads, "payload q was reclaimed with d3")
	assert.Equal(t, 0, after.Leased, "leases do not survive a restart")

	vals, err := s.ListValues(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{
		"relay/private-key.pem": []byte("-----BEGIN PRIVATE KEY-----\n"),
		"":                      {0, 1, 0xff},
	}, vals)
	subs, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
	require.NoError(t, err)
	assert.Equal(t, []store.Subscriber{a, b}, subs)
	hostSubs, err := s.ListSubscribers(ctx, store.SubscriberFilter{Host: "b.example"})
	require.NoError(t, err)
	assert.Equal(t, []store.Subscriber{b}, hostSubs, "host index rebuilt")

	fresh, err = s.MarkSeen(ctx, "https://a.example/activities/1", time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.False(t, fresh, "the mark survives")

	// d1 was leased before the restart: it is due again at once, in order.
	assert.Equal(t, []store.Delivery{d1}, leaseAll(t, s, t0.Add(30*time.Second)))
	assert.Equal(t, []store.Delivery{d2}, leaseAll(t, s, t0.Add(time.Minute)), "Retry's fields survive")
	body, err := s.GetPayload(ctx, "p")
	require.NoError(t, err)
	assert.Equal(t, []byte("body p"), body)
	_, err = s.GetPayload(ctx, "q")
	assert.ErrorIs(t, err, store.ErrNotFound)

	// Enqueue order survives too: deliveries due at the same time come in
	// the order they were enqueued, across the restart.
	require.NoError(t, s.Enqueue(ctx, nil, []store.Delivery{delivery("z-later", "p", "z.example", t0)}))
	require.NoError(t, s.Retry(ctx, d1))
	require.NoError(t, s.Retry(ctx, d2))
	s = reopen(t, s)
	var order []string
	for _, d := range leaseAll(t, s, t0.Add(time.Hour)) {
		order = append(order, d.ID)
	}
	assert.Equal(t, []string{"d1", "z-later", "d2"}, order)
}

// TestLocked checks that a directory can be open in one Store at a time.
func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := filestore.Open(dir, nil)
	require.NoError(t, err)

	_, err = filestore.Open(dir, nil)
	require.ErrorIs(t, err, filestore.ErrLocked)
	assert.Contains(t, err.Error(), dir, "the error names the directory")

	_, err = filestore.Open(dir, &filestore.Options{LockTimeout: 100 * time.Millisecond})
	assert.ErrorIs(t, err, filestore.ErrLocked, "with a lock timeout")

	require.NoError(t, s.Close())
	s, err = filestore.Open(dir, nil)
	require.NoError(t, err, "Close releases the directory")
	require.NoError(t, s.Close())
}

// TestBadFiles checks what Open says about files it cannot use.
func TestBadFiles(t *testing.T) {
	write := func(t *testing.T, data []byte) string {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, filestore.FileName), data, 0o600))
		return dir
	}
	garbage := []byte(strings.Repeat("this is not a database\n", 2000))

	t.Run("garbage", func(t *testing.T) {
		dir := write(t, garbage)
		_, err := filestore.Open(dir, nil)
		require.ErrorIs(t, err, filestore.ErrCorrupt)
		assert.Contains(t, err.Error(), filepath.Join(dir, filestore.FileName), "the error names the file")
	})

	t.Run("short garbage", func(t *testing.T) {
		_, err := filestore.Open(write(t, []byte("{}")), nil)
		assert.ErrorIs(t, err, filestore.ErrCorrupt)
	})

	t.Run("damaged meta pages", func(t *testing.T) {
		dir := t.TempDir()
		s := openDir(t, dir, nil)
		require.NoError(t, s.PutValue(t.Context(), "k", []byte("v")))
		require.NoError(t, s.Close())
		path := filepath.Join(dir, filestore.FileName)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		for _, off := range []int{0, 4096} { // both meta pages: keep the magic, break the rest
			copy(data[off+24:off+200], garbage)
		}
		require.NoError(t, os.WriteFile(path, data, 0o600))
		_, err = filestore.Open(dir, nil)
		assert.ErrorIs(t, err, filestore.ErrCorrupt)
	})

	t.Run("directory in the way", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(dir, filestore.FileName), 0o700))
		_, err := filestore.Open(dir, nil)
		assert.ErrorIs(t, err, filestore.ErrCorrupt)
	})

	t.Run("foreign bbolt database", func(t *testing.T) {
		dir := t.TempDir()
		db, err := bolt.Open(filepath.Join(dir, filestore.FileName), 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("something-else"))
			return err
		}))
		require.NoError(t, db.Close())
		_, err = filestore.Open(dir, nil)
		require.ErrorIs(t, err, filestore.ErrFormat)
		assert.Contains(t, err.Error(), "not a fedirelay store")
	})

	t.Run("newer format", func(t *testing.T) {
		dir := t.TempDir()
		s := openDir(t, dir, nil)
		require.NoError(t, s.Close())
		db, err := bolt.Open(filepath.Join(dir, filestore.FileName), 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("fedirelay-filestore/2"))
		}))
		require.NoError(t, db.Close())
		_, err = filestore.Open(dir, nil)
		require.ErrorIs(t, err, filestore.ErrFormat)
		assert.Contains(t, err.Error(), `"fedirelay-filestore/2"`)
		assert.Contains(t, err.Error(), filestore.Format)
	})

	t.Run("foreign files beside it", func(t *testing.T) {
		dir := t.TempDir()
		for _, name := range []string{"relay-key.pem", "notes.txt", "fedirelay.db.bak", "fedirelay.db-journal"} {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), garbage, 0o600))
		}
		require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
		s := openDir(t, dir, nil)
		require.NoError(t, s.PutValue(t.Context(), "k", []byte("v")))
		s = reopen(t, s)
		v, err := s.GetValue(t.Context(), "k")
		require.NoError(t, err)
		assert.Equal(t, []byte("v"), v)
	})
}

// TestOpenCreatesPrivateDir checks the directory and file modes.
func TestOpenCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "data")
	openDir(t, dir, nil)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	fi, err = os.Stat(filepath.Join(dir, filestore.FileName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// clock is a settable clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestReclaimMarks checks that expired deduplication marks leave the file.
func TestReclaimMarks(t *testing.T) {
	ctx := t.Context()
	c := &clock{now: t0}
	s := openDir(t, t.TempDir(), &filestore.Options{ReclaimInterval: -1, Now: c.Now})
	for i := range 50 {
		_, err := s.MarkSeen(ctx, fmt.Sprintf("short/%d", i), t0.Add(time.Minute))
		require.NoError(t, err)
	}
	for i := range 10 {
		_, err := s.MarkSeen(ctx, fmt.Sprintf("long/%d", i), t0.Add(time.Hour))
		require.NoError(t, err)
	}
	// Forgotten and re-marked ids leave no stale index entries behind.
	require.NoError(t, s.ForgetSeen(ctx, "long/0"))
	_, err := s.MarkSeen(ctx, "long/0", t0.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, 60, stats(t, s).Marks)

	n, err := s.Reclaim(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n, "nothing expired yet")
	c.Add(time.Minute)
	n, err = s.Reclaim(ctx)
	require.NoError(t, err)
	assert.Equal(t, 50, n)
	assert.Equal(t, 10, stats(t, s).Marks, "live marks are kept")
	for i := range 10 {
		fresh, err := s.MarkSeen(ctx, fmt.Sprintf("long/%d", i), t0.Add(2*time.Hour))
		require.NoError(t, err)
		assert.False(t, fresh)
	}
	fresh, err := s.MarkSeen(ctx, "short/1", t0.Add(2*time.Hour))
	require.NoError(t, err)
	assert.True(t, fresh, "a reclaimed mark is gone")
	n, err = s.Reclaim(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
}

// TestReclaimInBackground checks the background reclaim task.
func TestReclaimInBackground(t *testing.T) {
	c := &clock{now: t0}
	s := openDir(t, t.TempDir(), &filestore.Options{ReclaimInterval: 10 * time.Millisecond, Now: c.Now})
	for i := range 20 {
		_, err := s.MarkSeen(t.Context(), fmt.Sprintf("id/%d", i), t0.Add(time.Minute))
		require.NoError(t, err)
	}
	require.Equal(t, 20, stats(t, s).Marks)
	c.Add(time.Minute)
	require.Eventually(t, func() bool { return stats(t, s).Marks == 0 }, 10*time.Second, 10*time.Millisecond)
}

// TestPayloadsReclaimed checks that finished deliveries leave nothing on disk.
func TestPayloadsReclaimed(t *testing.T) {
	ctx := t.Context()
	s := openDir(t, t.TempDir(), nil)
	for i := range 10 {
		pid := fmt.Sprintf("p%d", i)
		var ds []store.Delivery
		for j := range 20 {
			ds = append(ds, delivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0))
		}
		require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: pid, Body: []byte(pid)}}, ds))
	}
	require.Equal(t, 10, stats(t, s).Payloads)
	for _, d := range leaseAll(t, s, t0)[:100] {
		require.NoError(t, s.Complete(ctx, d.Ref()))
	}
	_, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: "h3.example"})
	require.NoError(t, err)
	_, err = s.ShedDeliveries(ctx, "h4.example", 0, []string{"Create"})
	require.NoError(t, err)
	_, err = s.DropDeliveries(ctx, store.DeliveryFilter{})
	require.NoError(t, err)
	st := stats(t, s)
	assert.Equal(t, 0, st.Deliveries)
	assert.Equal(t, 0, st.Payloads)
	st = stats(t, reopen(t, s))
	assert.Equal(t, 0, st.Deliveries)
	assert.Equal(t, 0, st.Payloads)
}

// TestFileSizeBounded checks that space freed by finished deliveries is
// reused: the file stops growing when the backlog stops growing.
func TestFileSizeBounded(t *testing.T) {
	ctx := t.Context()
	s := openDir(t, t.TempDir(), nil)
	body := []byte(strings.Repeat("x", 2000))
	cycle := func(c int) {
		var ds []store.Delivery
		pid := fmt.Sprintf("p%d", c)
		for j := range 500 {
			ds = append(ds, delivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0))
		}
		require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds))
		_, err := s.MarkSeen(ctx, pid, time.Now().Add(-time.Second)) // expired at once: not kept
		require.NoError(t, err)
		n, err := s.DropDeliveries(ctx, store.DeliveryFilter{})
		require.NoError(t, err)
		require.Equal(t, 500, n)
	}
	for c := range 5 {
		cycle(c)
	}
	size := stats(t, s).FileSize
	for c := 5; c < 50; c++ {
		cycle(c)
	}
	// A cycle writes about 150 KB: without reuse the file would grow by
	// some 7 MB. Reuse is not perfect (pages freed by a commit are reused
	// from the next one on), hence the slack.
	assert.LessOrEqual(t, stats(t, s).FileSize, 2*size, "the file grew although the backlog did not")
	assert.Equal(t, 0, stats(t, s).Marks)
}

// TestCheck checks the integrity check of a healthy store.
func TestCheck(t *testing.T) {
	s := openDir(t, t.TempDir(), nil)
	require.NoError(t, s.Enqueue(t.Context(), []store.Payload{{ID: "p", Body: []byte("b")}},
		[]store.Delivery{delivery("d", "p", "a.example", t0)}))
	assert.NoError(t, s.Check(t.Context()))
}

// TestClosedStore checks the methods outside store.Store after Close.
func TestClosedStore(t *testing.T) {
	s := openDir(t, t.TempDir(), nil)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "second Close")
	_, err := s.Stats(context.Background())
	assert.ErrorIs(t, err, store.ErrClosed)
	_, err = s.Reclaim(context.Background())
	assert.ErrorIs(t, err, store.ErrClosed)
	assert.ErrorIs(t, s.Check(context.Background()), store.ErrClosed)
}

// TestInvalidKeys checks keys the file cannot hold.
func TestInvalidKeys(t *testing.T) {
	ctx := t.Context()
	s := openDir(t, t.TempDir(), nil)
	long := strings.Repeat("k", 40_000)
	assert.Error(t, s.PutValue(ctx, long, []byte("v")))
	_, err := s.MarkSeen(ctx, long, time.Now().Add(time.Hour))
	assert.Error(t, err)
	_, err = s.UpdateSubscriber(ctx, "", func(*store.Subscriber, bool) error { return nil })
	assert.Error(t, err, "empty actor id")
	assert.Error(t, s.Enqueue(ctx, []store.Payload{{ID: "p"}}, []store.Delivery{delivery(long, "p", "a.example", t0)}))
	bad := delivery("d", "p", "a.example", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))
	assert.Error(t, s.Enqueue(ctx, []store.Payload{{ID: "p"}}, []store.Delivery{bad}), "a time JSON cannot encode")
	assert.Equal(t, 0, stats(t, s).Deliveries)
	assert.Equal(t, 0, stats(t, s).Values)
}
