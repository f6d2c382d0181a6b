// Package filestore is a durable store.Store kept in local files: the
// default store of a standalone relay. Everything the relay keeps —
// subscribers, values (the relay key, policies), deduplication marks and the
// delivery queue with its payloads — lives in one database file,
// fedirelay.db, inside the directory given to Open.
//
// # Durability
//
// Every method that changes the store returns only after the change is
// committed and synced to disk (fdatasync), so a crash or power loss at any
// instant loses nothing that was acknowledged, and never leaves a partial
// change: each commit is atomic. Concurrent changes are committed together
// in one transaction (group commit), so many writers share one sync.
//
// A change is visible to other callers as soon as it is made, possibly a
// moment before it is synced. The store on disk always holds a prefix of the
// history of changes: after a crash it has every change whose method
// returned, and perhaps a few that were still being committed, but never a
// later change without an earlier one. Open syncs the data directory, so
// that the file's entry is durable too, and the file is never opened with
// settings that skip a sync of the data (bbolt's NoSync or NoGrowSync);
// only the list of free pages is not written, and bbolt rebuilds it when it
// opens the file.
//
// If a commit fails (a full disk, an I/O error), every caller whose change
// was in that commit gets an error wrapping ErrFailed, and the store
// refuses all further work with ErrFailed, because its memory may be ahead
// of its file. Failed reports that moment, so that a program can restart;
// Close and Open the store again to continue from the last commit, which
// holds every change whose method returned nil. Bad input never makes a
// commit fail: ids and keys are checked before a change joins a commit
// (see store.PortableKeyLen), and the error goes to that caller only.
//
// # Memory and disk
//
// Subscribers, values and the delivery queue's index are kept in memory as
// well as on disk, so that reads and Lease are fast; they are loaded when
// the store is opened. The index takes about 200 bytes per queued delivery
// (20 MB for 100,000) when, as in a relay's backlog, many deliveries share
// an inbox and activity type. Payload bodies and deduplication marks stay
// on disk only. The pages of the file that bbolt reads through its memory
// mapping are handed back to the kernel while Open reads the file, at most
// 50 ms after commits and every ReclaimInterval, so that the file does not
// stay resident as well. Leases are kept in memory only: after a restart
// every queued delivery is due again at its NotBefore, which makes
// deliveries that were in flight at a crash be retried (a receiver may see
// them twice).
//
// # One process per directory
//
// The database file is locked while the store is open. Opening a directory
// that another Store (in this or another process) holds fails at once with
// ErrLocked, unless Options.LockTimeout allows waiting.
//
// # Growth
//
// Expired deduplication marks are removed by a background task every
// Options.ReclaimInterval (and by Reclaim); payloads are removed with the
// last delivery that refers to them, and completed deliveries at once.
// Freed space inside the file is reused; the file never shrinks on its own
// (export and import the state into a fresh directory to compact it).
package filestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/internal/subindex"
	"github.com/fedirelay/relay/store/internal/valuemap"
)

var _ store.Store = (*Store)(nil)

// FileName is the name of the database file inside the store's directory.
const FileName = "fedirelay.db"

// Format is the on-disk format this package reads and writes. It is stored
// in the database file; Open refuses a file of another format.
const Format = "fedirelay-filestore/1"

// Errors returned by Open and by the methods of a Store. They are wrapped
// with the path concerned; match them with errors.Is.
var (
	// ErrLocked is returned by Open when another Store, in this or another
	// process, has the directory open.
	ErrLocked = errors.New("store/filestore: data directory is in use by another process")
	// ErrCorrupt is returned by Open when the database file is not a valid
	// store file: not a database at all, or damaged.
	ErrCorrupt = errors.New("store/filestore: not a valid store file")
	// ErrFormat is returned by Open when the database file is a store of an
	// unknown format (written by a newer version) or not a fedirelay store.
	ErrFormat = errors.New("store/filestore: unsupported store format")
	// ErrFailed is returned by every method after a write to disk failed
	// (for example because the disk is full). The store's memory may then
	// be ahead of its file, so it refuses further work: Close it and Open it
	// again, which loads the state last committed.
	ErrFailed = errors.New("store/filestore: a write to disk failed; the store must be reopened")
)

// MaxKeyLen is the length in bytes of the longest id or key the store
// accepts (value keys, actor ids, deduplication ids, payload and delivery
// ids): bbolt's limit on a key, less the 8 bytes of the longest prefix the
// store puts before an id (the expiry of a deduplication mark). Longer
// ones are refused with an error wrapping store.ErrTooLong.
const MaxKeyLen = bolt.MaxKeySize - 8

// Options tunes a Store. The zero value (or nil) gives the defaults.
type Options struct {
	// LockTimeout is how long Open waits for another process to release
	// the directory before it returns ErrLocked. Zero means not at all.
	LockTimeout time.Duration
	// ReclaimInterval is how often expired deduplication marks are removed
	// in the background. Default 1 minute; negative disables the
	// background task (call Reclaim yourself).
	ReclaimInterval time.Duration
	// Now is the clock deduplication marks expire by. Default time.Now.
	Now func() time.Time
}

// Bucket names.
var (
	bMeta       = []byte("meta")
	bValues     = []byte("values")
	bSubs       = []byte("subscribers")
	bSeen       = []byte("seen")
	bSeenExpiry = []byte("seen-expiry")
	bDeliveries = []byte("deliveries")
	bPayloads   = []byte("payloads")
	allBuckets  = [][]byte{bMeta, bValues, bSubs, bSeen, bSeenExpiry, bDeliveries, bPayloads}
	keyFormat   = []byte("format")
)

// Store is a store.Store kept in a directory on local disk. Create it with
// Open; the zero value is not usable. All methods are safe for concurrent
// use; after Close they return store.ErrClosed.
type Store struct {
	dir  string
	path string
	db   *bolt.DB
	now  func() time.Time // clock for deduplication marks

	mu         sync.RWMutex
	closed     bool
	failed     error                        // set when a commit failed: see ErrFailed
	failedCh   chan struct{}                // closed when failed is set
	failCommit atomic.Pointer[func() error] // test hook: makes commits fail

	values valuemap.Map
	subs   *subindex.Index
	q      queue
	// pendingMarks counts, per id, the changes submitted but not yet
	// committed that write a mark on it (see takeMarks).
	pendingMarks map[string]int

	w         writer
	stopReclm chan struct{}
	bg        sync.WaitGroup
}

// Open opens the store in dir, creating the directory (mode 0700) and the
// database file (mode 0600) if needed, and loads its state. opts may be nil.
//
// Open fails with ErrLocked if another Store has dir open, with ErrCorrupt if
// the database file is not a valid store file and with ErrFormat if it has
// another format; other files in dir are ignored.
func Open(dir string, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ReclaimInterval == 0 {
		o.ReclaimInterval = time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	_, err := os.Stat(dir)
	newDir := errors.Is(err, os.ErrNotExist)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store/filestore: creating data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if err := checkFile(path); err != nil {
		return nil, err
	}
	timeout := o.LockTimeout
	if timeout <= 0 {
		timeout = time.Nanosecond // bbolt waits forever on 0
	}
	db, err := openBolt(path, timeout)
	if err != nil {
		return nil, err
	}
	// bbolt syncs the file's data, not its directory entry (nor that of a
	// new directory): sync them, at every Open in case an earlier Open
	// created the file and failed before its sync.
	syncDirs := []string{dir}
	if newDir {
		syncDirs = append(syncDirs, filepath.Dir(filepath.Clean(dir)))
	}
	for _, d := range syncDirs {
		if err := syncDirFunc(d); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	s := &Store{
		dir:          dir,
		path:         path,
		db:           db,
		now:          o.Now,
		values:       make(valuemap.Map),
		pendingMarks: map[string]int{},
		subs:         subindex.New(),
		q:            newQueue(),
		failedCh:     make(chan struct{}),
		stopReclm:    make(chan struct{}),
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.releaseMapping()
	s.w.init()
	s.bg.Add(1)
	go s.writeLoop()
	if o.ReclaimInterval > 0 {
		s.bg.Add(1)
		go s.reclaimLoop(o.ReclaimInterval)
	}
	return s, nil
}

// syncDirFunc is syncDir; tests replace it to see that Open calls it.
var syncDirFunc = syncDir

// syncDir syncs the directory dir, so that the entries created in it
// (the database file) survive a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store/filestore: syncing data directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store/filestore: syncing data directory %s: %w", dir, err)
	}
	return nil
}

// boltOptions are the bbolt settings of the database file. They must keep
// every commit durable: NoSync and NoGrowSync stay false. NoFreelistSync
// only skips writing the list of free pages, which bbolt rebuilds from the
// tree when it opens the file, so a crash loses nothing with it.
func boltOptions(timeout time.Duration) *bolt.Options {
	return &bolt.Options{
		Timeout:        timeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	}
}

// checkFile verifies, before bbolt maps it, that an existing database file
// is a regular file that starts like a bbolt database, so that a foreign or
// damaged file gets a clear error.
func checkFile(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store/filestore: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, path)
	}
	if fi.Size() == 0 {
		return nil // bbolt initialises an empty file
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store/filestore: %w", err)
	}
	defer f.Close()
	if !looksLikeBolt(f, fi.Size()) {
		return fmt.Errorf("%w: %s is not a bbolt database", ErrCorrupt, path)
	}
	return nil
}

// boltMagic is the magic number in a bbolt meta page, after the 16-byte
// page header. bbolt writes it in the machine's byte order.
const boltMagic = 0xED0CDAED

// looksLikeBolt reports whether one of the two meta pages of a bbolt file
// (page 0, or page 1 at any page size bbolt supports) carries the magic.
func looksLikeBolt(f io.ReaderAt, size int64) bool {
	var buf [20]byte
	for _, off := range []int64{0, 1 << 10, 2 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10} {
		if off+int64(len(buf)) > size {
			break
		}
		if _, err := f.ReadAt(buf[:], off); err != nil {
			return false
		}
		if binary.NativeEndian.Uint32(buf[16:]) == boltMagic {
			return true
		}
	}
	return false
}

// openBolt opens the database file, turning bbolt's errors (and panics on
// damaged files) into this package's.
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, boltOptions(timeout))
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrLocked, filepath.Dir(path))
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum),
		errors.Is(err, bolt.ErrVersionMismatch), errors.Is(err, bolt.ErrInvalidMapping):
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return nil, fmt.Errorf("store/filestore: opening %s: %w", path, err)
}

// Dir returns the directory the store was opened in.
func (s *Store) Dir() string { return s.dir }

// Failed returns a channel that is closed when a commit fails and the
// store starts refusing all work with ErrFailed. A program that runs the
// store should then stop (or Close and Open the store again): nothing it
// does can be stored until then. The channel stays open for a store that
// is merely closed.
func (s *Store) Failed() <-chan struct{} { return s.failedCh }

// Err returns the error wrapping ErrFailed that the store returns since a
// commit failed, or nil if none failed.
func (s *Store) Err() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.failed
}

// Close commits the changes being committed, stops the background work and
// closes the database file, releasing the directory. Afterwards every
// method returns store.ErrClosed. Closing a closed Store returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stopReclm)
	s.w.stop()
	s.bg.Wait()
	s.mu.Lock()
	s.values, s.subs = nil, nil
	s.q = nil
	s.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store/filestore: closing %s: %w", s.path, err)
	}
	return nil
}

// usable reports why the store cannot be used, if it cannot. The caller
// holds s.mu.
func (s *Store) usable() error {
	if s.closed {
		return store.ErrClosed
	}
	return s.failed
}

// lock takes the write lock after checking ctx, and fails if ctx is done or
// the store closed or failed. On success the caller must call s.mu.Unlock.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.usable(); err != nil {
		s.mu.Unlock()
		return err
	}
	return nil
}

// rlock is lock for reads; the caller must call s.mu.RUnlock.
func (s *Store) rlock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	if err := s.usable(); err != nil {
		s.mu.RUnlock()
		return err
	}
	return nil
}

// change runs apply under the write lock. apply checks its arguments
// against the state in memory, changes that state and returns the matching
// change to the file (nil if none). change then waits until the file change,
// and every change made before it, is committed, even if ctx ends
// meanwhile: once made, a change is kept. If apply fails it must not have
// changed anything.
func (s *Store) change(ctx context.Context, apply func() (func(tx *bolt.Tx) error, error)) error {
	return s.changeAfter(ctx, func() (func(tx *bolt.Tx) error, func(), error) {
		fn, err := apply()
		return fn, nil, err
	})
}

// changeAfter is change where apply also returns a function to run, under
// s.mu, once the change is committed (nil if none).
func (s *Store) changeAfter(ctx context.Context, apply func() (func(tx *bolt.Tx) error, func(), error)) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	var done <-chan error
	err := func() error {
		defer s.mu.Unlock() // even if apply panics (UpdateSubscriber's fn may)
		fn, after, err := apply()
		if err != nil {
			return err
		}
		done = s.w.submit(fn, after, false)
		return nil
	}()
	if err != nil {
		return err
	}
	return <-done
}

// submitTx queues fn to run in the next commit, without touching memory,
// and waits for that commit. It is for state kept on disk only.
func (s *Store) submitTx(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.rlock(ctx); err != nil {
		return err
	}
	done := s.w.submit(fn, nil, true)
	s.mu.RUnlock()
	return <-done
}

// writer collects changes for the write loop, which commits them in
// batches, in the order they were submitted.
type writer struct {
	mu      sync.Mutex
	pending []*commitReq
	stopped bool
	wake    chan struct{} // capacity 1
	quit    chan struct{}
}

// commitReq is one change waiting for a commit.
type commitReq struct {
	fn    func(tx *bolt.Tx) error // nil: only wait for the commit
	after func()                  // run under s.mu after a successful commit
	done  chan error              // capacity 1
	// diskOnly: fn changes the file only, nothing in memory (submitTx), so
	// if it fails it can be left out of the commit: see commit.
	diskOnly bool
}

func (w *writer) init() {
	w.wake = make(chan struct{}, 1)
	w.quit = make(chan struct{})
}

// submit queues fn (which may be nil) and after, and returns the channel
// that receives the commit's outcome. Callers hold s.mu, which keeps the
// order of submissions that of the changes in memory.
func (w *writer) submit(fn func(tx *bolt.Tx) error, after func(), diskOnly bool) <-chan error {
	r := &commitReq{fn: fn, after: after, done: make(chan error, 1), diskOnly: diskOnly}
	w.mu.Lock()
	w.pending = append(w.pending, r)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return r.done
}

// take removes and returns the pending requests.
func (w *writer) take() []*commitReq {
	w.mu.Lock()
	defer w.mu.Unlock()
	reqs := w.pending
	w.pending = nil
	return reqs
}

// stop makes the write loop commit what is pending and exit.
func (w *writer) stop() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.quit)
	}
	w.mu.Unlock()
}

// releaseAfterCommits is the least time between two releases of the
// mapping's pages (see releaseMapping) by the write loop. Commits read the
// pages they change through the mapping (and the kernel maps their
// neighbours with them), so a store that retries deliveries spread over a
// large queue would otherwise make megabytes of the file resident each
// second until the next ReclaimInterval. A release costs a system call;
// pages read again afterwards cost a minor page fault each.
const releaseAfterCommits = 50 * time.Millisecond

// writeLoop commits pending changes: whatever accumulates while one commit
// is being synced goes into the next, so the cost of a sync is shared.
func (s *Store) writeLoop() {
	defer s.bg.Done()
	released := time.Now()
	for {
		select {
		case <-s.w.wake:
		case <-s.w.quit:
			for reqs := s.w.take(); len(reqs) > 0; reqs = s.w.take() {
				s.commit(reqs)
			}
			return
		}
		for reqs := s.w.take(); len(reqs) > 0; reqs = s.w.take() {
			s.commit(reqs)
		}
		if time.Since(released) >= releaseAfterCommits {
			s.releaseMapping()
			released = time.Now()
		}
	}
}

// commit runs reqs in one transaction and reports the outcome to each. A
// failed commit makes the store fail (see ErrFailed): the changes are in
// memory but not on disk, and later commits would break the prefix order.
//
// A change that touches the file only (submitTx) and fails on its own is
// the exception: it is left out, its caller gets its error, and the others
// are committed without it, so that one caller's change cannot fail
// another's. (Callers check their input first, so this is a safety net.)
func (s *Store) commit(reqs []*commitReq) {
	s.mu.RLock()
	err := s.failed
	s.mu.RUnlock()
	if err == nil && !onlyBarriers(reqs) {
		for {
			var bad int
			bad, err = s.runTx(reqs)
			if err == nil || bad < 0 || !reqs[bad].diskOnly {
				break
			}
			reqs[bad].done <- changeError(err)
			reqs = slices.Delete(slices.Clone(reqs), bad, bad+1)
			if onlyBarriers(reqs) {
				err = nil
				break
			}
		}
		s.mu.Lock()
		if err != nil {
			if s.failed == nil {
				s.failed = fmt.Errorf("%w: %s: %v", ErrFailed, s.path, err)
				close(s.failedCh)
			}
			err = s.failed
		} else {
			for _, r := range reqs {
				if r.after != nil {
					r.after()
				}
			}
		}
		s.mu.Unlock()
	}
	for _, r := range reqs {
		r.done <- err
	}
}

// changeError returns the error of a change left out of a commit.
func changeError(err error) error {
	if errors.Is(err, bolt.ErrKeyTooLarge) || errors.Is(err, bolt.ErrValueTooLarge) {
		return fmt.Errorf("store/filestore: %w: %w", store.ErrTooLong, err)
	}
	return fmt.Errorf("store/filestore: %w", err)
}

// onlyBarriers reports whether no request changes anything: they only wait
// for the changes submitted before them, which earlier commits wrote.
func onlyBarriers(reqs []*commitReq) bool {
	for _, r := range reqs {
		if r.fn != nil {
			return false
		}
	}
	return true
}

// runTx runs the requests' functions in one read-write transaction and
// commits it. If the function of reqs[bad] failed, nothing is committed and
// runTx returns bad and its error; other failures (the commit itself, a
// panic on a damaged file) return bad < 0.
func (s *Store) runTx(reqs []*commitReq) (bad int, err error) {
	bad = -1
	defer func() {
		if p := recover(); p != nil {
			bad, err = -1, fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, p)
		}
	}()
	err = s.db.Update(func(tx *bolt.Tx) error {
		for i, r := range reqs {
			if r.fn == nil {
				continue
			}
			if err := r.fn(tx); err != nil {
				bad = i
				return err
			}
		}
		if hook := s.failCommit.Load(); hook != nil {
			if err := (*hook)(); err != nil {
				return err
			}
		}
		return nil
	})
	return bad, err
}

// reclaimLoop calls Reclaim every interval until Close, and releases the
// pages of the file read meanwhile (see releaseMapping).
func (s *Store) reclaimLoop(interval time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stopReclm:
			return
		case <-t.C:
			_, _ = s.Reclaim(context.Background())
			s.releaseMapping()
		}
	}
}

// Stats describes a store's contents, for monitoring and tests.
type Stats struct {
	Subscribers int // subscribers in every state
	Values      int
	Deliveries  int   // queued deliveries, leased or not
	Leased      int   // of which leased
	Payloads    int   // payload bodies on disk
	Marks       int   // deduplication marks on disk, expired ones not yet reclaimed included
	FileSize    int64 // size of the database file in bytes
}

// Stats returns counts of what the store holds. It reads the file's
// payload and mark indexes, so its cost grows with their size; it is meant
// for monitoring, not for every request.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	if err := s.rlock(ctx); err != nil {
		return Stats{}, err
	}
	defer s.mu.RUnlock()
	st := Stats{
		Subscribers: s.subs.Len(),
		Values:      len(s.values),
		Deliveries:  len(s.q.ByID),
		Leased:      s.q.Leased(),
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		st.Payloads = tx.Bucket(bPayloads).Stats().KeyN
		st.Marks = tx.Bucket(bSeen).Stats().KeyN
		st.FileSize = tx.Size()
		return nil
	})
	return st, err
}

// Check verifies the integrity of the database file (every page reachable
// once, no page both used and free) and returns what it found wrong, or
// nil. It reads the whole file.
func (s *Store) Check(ctx context.Context) error {
	if err := s.rlock(ctx); err != nil {
		return err
	}
	defer s.mu.RUnlock()
	return s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, s.path, errors.Join(errs...))
		}
		return nil
	})
}

// prefixed returns a new key: prefix byte p followed by k, so that empty
// strings can be keys (bbolt refuses empty keys).
func prefixed(p byte, k string) []byte {
	b := make([]byte, 1+len(k))
	b[0] = p
	copy(b[1:], k)
	return b
}

// checkKey returns an error wrapping store.ErrTooLong if k is longer than
// MaxKeyLen. Every id and key a change stores is checked with it before the
// change is submitted, so that a commit never fails on bbolt's key limit.
func checkKey(what, k string) error {
	if len(k) > MaxKeyLen {
		return fmt.Errorf("store/filestore: %s of %d bytes is longer than %d: %w", what, len(k), MaxKeyLen, store.ErrTooLong)
	}
	return nil
}

// checkValue returns an error wrapping store.ErrTooLong if v is longer
// than bbolt stores as one value (2 GiB).
func checkValue(v []byte) error {
	if len(v) > bolt.MaxValueSize {
		return fmt.Errorf("store/filestore: value of %d bytes is longer than %d: %w", len(v), bolt.MaxValueSize, store.ErrTooLong)
	}
	return nil
}

// cloneBytes returns a copy of b that is never nil.
var cloneBytes = valuemap.Clone
