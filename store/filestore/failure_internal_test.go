package filestore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
)

// errInjected is the error the commit hook injects.
var errInjected = errors.New("injected: no space left on device")

// openInternal opens a store in dir, closed at the end of the test.
func openInternal(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, &Options{ReclaimInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// pendingCommits returns how many changes wait for the write loop.
func (s *Store) pendingCommits() int {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return len(s.w.pending)
}

// waitPending waits until n changes wait for the write loop.
func waitPending(t *testing.T, s *Store, n int) {
	t.Helper()
	for s.pendingCommits() < n {
		time.Sleep(time.Millisecond)
	}
}

// holdCommits makes the next commit wait, after its changes ran and before
// it is written, until the returned function is called; the commit then
// fails with fail (nil: it succeeds). entered is closed once a commit is
// held.
func holdCommits(s *Store, fail error) (entered <-chan struct{}, release func()) {
	in, out := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() error {
		once.Do(func() { close(in); <-out })
		return fail
	}
	s.failCommit.Store(&hook)
	return in, func() { close(out) }
}

// TestCommitFailure makes a commit fail as a full disk would: the callers
// whose changes were in it get ErrFailed, every later call too, Failed
// reports it, and reopening the directory continues from the last commit.
func TestCommitFailure(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openInternal(t, dir)
	require.NoError(t, s.PutValue(ctx, "before", []byte("committed")))
	_, err := s.MarkSeen(ctx, "seen-before", time.Now().Add(time.Hour))
	require.NoError(t, err)
	select {
	case <-s.Failed():
		t.Fatal("Failed closed before any failure")
	default:
	}
	require.NoError(t, s.Err())

	// The first change enters a commit that is held; three more are
	// submitted meanwhile and join the next commit... which never comes:
	// the held one fails, and with it the store.
	entered, release := holdCommits(s, errInjected)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); errs[0] = s.PutValue(ctx, "in-failed-commit", []byte("x")) }()
	<-entered
	calls := []func() error{
		func() error { return s.PutValue(ctx, "queued", []byte("y")) },
		func() error {
			_, err := s.UpdateSubscriber(ctx, "https://a.example/actor", func(p *store.Subscriber, _ bool) error {
				p.Host = "a.example"
				return nil
			})
			return err
		},
		func() error { _, err := s.MarkSeen(ctx, "seen-after", time.Now().Add(time.Hour)); return err },
	}
	for i, call := range calls {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i+1] = call() }()
	}
	waitPending(t, s, len(calls))
	release()
	wg.Wait()
	for i, err := range errs {
		assert.ErrorIs(t, err, ErrFailed, "change %d", i)
	}
	assert.ErrorContains(t, errs[0], errInjected.Error(), "the cause is reported")

	select {
	case <-s.Failed():
	default:
		t.Fatal("Failed not closed after a failed commit")
	}
	assert.ErrorIs(t, s.Err(), ErrFailed)
	// Every later call, read or write, fails too.
	_, err = s.GetValue(ctx, "before")
	assert.ErrorIs(t, err, ErrFailed, "GetValue after a failed commit")
	assert.ErrorIs(t, s.PutValue(ctx, "later", nil), ErrFailed, "PutValue after a failed commit")
	_, err = s.MarkSeen(ctx, "seen-later", time.Now().Add(time.Hour))
	assert.ErrorIs(t, err, ErrFailed, "MarkSeen after a failed commit")
	assert.ErrorIs(t, s.Enqueue(ctx, []store.Payload{{ID: "p"}}, []store.Delivery{{ID: "d", PayloadID: "p"}}), ErrFailed)
	_, err = s.Lease(ctx, store.LeaseRequest{Now: time.Now(), Limit: 1, Duration: time.Minute})
	assert.ErrorIs(t, err, ErrFailed, "Lease after a failed commit")
	require.NoError(t, s.Close())

	// Reopened, the store holds what was committed before the failure and
	// nothing after it.
	s = openInternal(t, dir)
	v, err := s.GetValue(ctx, "before")
	require.NoError(t, err)
	assert.Equal(t, []byte("committed"), v)
	for _, k := range []string{"in-failed-commit", "queued", "later"} {
		_, err := s.GetValue(ctx, k)
		assert.ErrorIs(t, err, store.ErrNotFound, "value %q of a failed change", k)
	}
	_, err = s.GetSubscriber(ctx, "https://a.example/actor")
	assert.ErrorIs(t, err, store.ErrNotFound)
	fresh, err := s.MarkSeen(ctx, "seen-before", time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.False(t, fresh, "a committed mark")
	fresh, err = s.MarkSeen(ctx, "seen-after", time.Now().Add(time.Hour))
	require.NoError(t, err)
	assert.True(t, fresh, "a mark of a failed change")
	require.NoError(t, s.PutValue(ctx, "after-reopen", []byte("z")), "the reopened store works")
	require.NoError(t, s.Check(ctx))
}

// TestFailingChangeLeftOut checks the safety net of the group commit: a
// change to the file only whose write fails (here a key bbolt refuses) is
// left out of the commit it shares with others, which are committed; its
// caller alone gets the error and the store keeps working.
func TestFailingChangeLeftOut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openInternal(t, dir)
	entered, release := holdCommits(s, nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); assert.NoError(t, s.PutValue(ctx, "first", []byte("1"))) }()
	<-entered
	errs := make([]error, 3)
	calls := []func() error{
		func() error { return s.PutValue(ctx, "a", []byte("a")) },
		func() error {
			return s.submitTx(ctx, func(tx *bolt.Tx) error {
				return tx.Bucket(bSeen).Put(make([]byte, bolt.MaxKeySize+1), []byte{})
			})
		},
		func() error { return s.PutValue(ctx, "c", []byte("c")) },
	}
	for i, call := range calls {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = call() }()
		waitPending(t, s, i+1) // in this order
	}
	release()
	wg.Wait()
	assert.NoError(t, errs[0])
	assert.ErrorIs(t, errs[1], store.ErrTooLong, "the failing change")
	assert.NotErrorIs(t, errs[1], ErrFailed)
	assert.NoError(t, errs[2])
	require.NoError(t, s.Err(), "the store failed")
	require.NoError(t, s.PutValue(ctx, "later", []byte("l")))

	require.NoError(t, s.Close())
	s = openInternal(t, dir)
	vals, err := s.ListValues(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"first": []byte("1"), "a": []byte("a"), "c": []byte("c"), "later": []byte("l")}, vals)
}

// TestLongSeenID is the reviewer's case: a MarkSeen id whose expiry index
// key (8 bytes longer) is over bbolt's key limit used to fail the whole
// group commit and the store with it.
func TestLongSeenID(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openInternal(t, dir)
	until := time.Now().Add(time.Hour)
	for _, n := range []int{MaxKeyLen + 1, 32_765, bolt.MaxKeySize - 1, bolt.MaxKeySize, bolt.MaxKeySize + 1} {
		_, err := s.MarkSeen(ctx, strings.Repeat("s", n), until)
		assert.ErrorIs(t, err, store.ErrTooLong, "MarkSeen of %d bytes", n)
		assert.ErrorIs(t, s.ForgetSeen(ctx, strings.Repeat("s", n)), store.ErrTooLong, "ForgetSeen of %d bytes", n)
		assert.ErrorIs(t, s.PutValue(ctx, strings.Repeat("v", n), nil), store.ErrTooLong, "PutValue of %d bytes", n)
		require.NoError(t, s.PutValue(ctx, "works", []byte("yes")), "the store works after %d bytes", n)
	}
	longest := strings.Repeat("s", MaxKeyLen)
	fresh, err := s.MarkSeen(ctx, longest, until)
	require.NoError(t, err)
	assert.True(t, fresh)
	require.NoError(t, s.Err())
	require.NoError(t, s.Close())
	s = openInternal(t, dir)
	fresh, err = s.MarkSeen(ctx, longest, until)
	require.NoError(t, err)
	assert.False(t, fresh, "the mark of the longest id survives a reopen")
	n, err := s.Reclaim(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
}

// TestDurableSettings guards against settings that trade durability for
// speed: bbolt must sync every commit and every growth of the file. (Not
// syncing the free-page list is safe: bbolt rebuilds it on open, which the
// crash tests exercise.)
func TestDurableSettings(t *testing.T) {
	o := boltOptions(time.Second)
	assert.False(t, o.NoSync, "bbolt.Options.NoSync")
	assert.False(t, o.NoGrowSync, "bbolt.Options.NoGrowSync")
	assert.False(t, o.ReadOnly, "bbolt.Options.ReadOnly")
	s := openInternal(t, t.TempDir())
	assert.False(t, s.db.NoSync, "DB.NoSync")
	assert.False(t, s.db.NoGrowSync, "DB.NoGrowSync")
	assert.Equal(t, o.NoFreelistSync, s.db.NoFreelistSync)
}

// TestDirSynced checks that Open syncs the data directory (and the parent
// of one it creates), so that the database file's entry survives a power
// loss, and that Open fails if it cannot.
func TestDirSynced(t *testing.T) {
	var synced []string
	orig := syncDirFunc
	syncDirFunc = func(dir string) error {
		synced = append(synced, dir)
		return orig(dir)
	}
	t.Cleanup(func() { syncDirFunc = orig })
	parent := t.TempDir()
	dir := filepath.Join(parent, "data")
	s, err := Open(dir, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{dir, parent}, synced, "new directory and its parent synced after creating the file")
	require.NoError(t, s.Close())
	synced = nil
	s, err = Open(dir, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{dir}, synced, "directory synced at every Open")
	require.NoError(t, s.Close())

	syncDirFunc = func(string) error { return errInjected }
	_, err = Open(dir, nil)
	assert.ErrorIs(t, err, errInjected, "a failed directory sync fails Open")
	syncDirFunc = orig
	s, err = Open(dir, nil)
	require.NoError(t, err, "the directory is not left locked")
	require.NoError(t, s.Close())
}
