// Package memstore is an in-memory implementation of store.Store, for tests
// and ephemeral relays: all state lives in the process and is lost when it
// exits or restarts.
//
// It is built for relay scale. The delivery queue keeps a min-heap of ready
// deliveries per host, ordered by (NotBefore, enqueue order), and a heap of
// hosts ordered by their first ready delivery, so Lease costs
// O((k + s) log n) for k leased deliveries and s hosts skipped (SkipHosts)
// or filled up (PerHost), never a scan of the backlog. Leased deliveries
// wait in a heap ordered by lease end. Every host counts its deliveries and
// every subscriber lists its own, for CountDeliveries and DropDeliveries,
// and payloads are reference-counted and removed with their last delivery.
// (This index is shared with the file store: store/internal/queueindex.)
// Subscribers are kept sorted by ActorID and indexed by host. Deduplication
// marks are reclaimed through a heap ordered by expiry.
//
// The queue only knows the time callers pass in LeaseRequest.Now, while
// deduplication marks expire by the wall clock (time.Now), the only clock
// MarkSeen has.
//
// A Store is safe for concurrent use by the goroutines of one process: one
// lock serializes writers.
package memstore

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/internal/subindex"
	"github.com/fedirelay/relay/store/internal/valuemap"
)

var _ store.Store = (*Store)(nil)

// errActorIDChanged is returned by UpdateSubscriber when fn changes ActorID.
var errActorIDChanged = errors.New("memstore: UpdateSubscriber: fn changed ActorID")

// Store is an in-memory store.Store. Create one with New; the zero value is
// not usable. All methods are safe for concurrent use; every method returns
// store.ErrClosed after Close.
type Store struct {
	mu     sync.RWMutex
	closed bool
	now    func() time.Time // clock for deduplication marks

	values valuemap.Map

	subs    *subindex.Index
	marks   map[string]*mark // live (and not yet reclaimed) marks by id
	markExp markHeap         // the marks of the map, by expiry

	q queue
}

// New returns an empty Store.
func New() *Store {
	return &Store{
		now:    time.Now,
		values: make(valuemap.Map),
		subs:   subindex.New(),
		marks:  make(map[string]*mark),
		q:      newQueue(),
	}
}

// Close releases the store's contents. Afterwards every method returns
// store.ErrClosed. Closing a closed Store returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.values, s.subs = nil, nil
	s.marks, s.markExp = nil, nil
	s.q = queue{}
	return nil
}

// lock takes the write lock after checking ctx, and fails if ctx is done or
// the store closed. On success the caller must call s.mu.Unlock.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	return s.checkLocked(ctx, s.mu.Unlock)
}

// rlock is lock for read-only methods; the caller must call s.mu.RUnlock.
func (s *Store) rlock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	return s.checkLocked(ctx, s.mu.RUnlock)
}

// checkLocked re-checks ctx (it may have ended while waiting for the lock)
// and the closed flag; on failure it releases the lock with unlock.
func (s *Store) checkLocked(ctx context.Context, unlock func()) error {
	err := ctx.Err()
	if err == nil && s.closed {
		err = store.ErrClosed
	}
	if err != nil {
		unlock()
	}
	return err
}

// cloneBytes returns a copy of b that is never nil.
var cloneBytes = valuemap.Clone

// GetValue returns a copy of the value stored under key, or store.ErrNotFound.
func (s *Store) GetValue(ctx context.Context, key string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.values.Get(key)
}

// PutValue stores a copy of value under key, replacing any previous value.
func (s *Store) PutValue(ctx context.Context, key string, value []byte) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.values[key] = cloneBytes(value)
	return nil
}

// CreateValue stores a copy of value under key if key is absent and returns
// a copy of the value stored under key afterwards.
func (s *Store) CreateValue(ctx context.Context, key string, value []byte) ([]byte, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	v, ok := s.values[key]
	if !ok {
		v = cloneBytes(value)
		s.values[key] = v
	}
	return cloneBytes(v), nil
}

// DeleteValue removes key; removing an absent key returns nil.
func (s *Store) DeleteValue(ctx context.Context, key string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	delete(s.values, key)
	return nil
}

// ListValues returns copies of the values whose key starts with prefix, in
// a new non-nil map. It scans every value: values are few and small.
func (s *Store) ListValues(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.values.List(prefix), nil
}

// GetSubscriber returns a copy of the subscriber with the given actor id, or
// store.ErrNotFound.
func (s *Store) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	if err := s.rlock(ctx); err != nil {
		return store.Subscriber{}, err
	}
	defer s.mu.RUnlock()
	return s.subs.Get(actorID)
}

// UpdateSubscriber implements store.Store.UpdateSubscriber. It calls fn
// exactly once, while holding the store's lock: fn must not call the Store
// (it would deadlock) and should be quick. If fn changes ActorID, nothing is
// stored and an error is returned. An empty actor id is refused with an
// error wrapping store.ErrEmptyID.
func (s *Store) UpdateSubscriber(ctx context.Context, actorID string, fn func(sub *store.Subscriber, found bool) error) (store.Subscriber, error) {
	if actorID == "" {
		return store.Subscriber{}, fmt.Errorf("memstore: UpdateSubscriber: %w", store.ErrEmptyID)
	}
	if err := s.lock(ctx); err != nil {
		return store.Subscriber{}, err
	}
	defer s.mu.Unlock()
	sub, err := s.subs.Update(actorID, fn, errActorIDChanged)
	if err != nil {
		return store.Subscriber{}, err
	}
	s.subs.Put(sub) // a copy: fn may keep the pointer it got
	return sub, nil
}

// DeleteSubscriber removes a subscriber; removing an absent one returns nil.
// Its queued deliveries are not touched (see DropDeliveries).
func (s *Store) DeleteSubscriber(ctx context.Context, actorID string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.subs.Delete(actorID)
	return nil
}

// ListSubscribers returns copies of the subscribers matching f, ordered by
// ActorID, in a non-nil slice. With f.Host set it only visits that host's
// subscribers.
func (s *Store) ListSubscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.subs.List(f), nil
}

// MarkSeen implements store.Store.MarkSeen. Marks expire by the wall clock
// (time.Now); expired marks are reclaimed by later calls.
func (s *Store) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	marks := []store.Mark{{ID: id, Until: until}}
	if s.liveMarks(marks) != nil {
		return false, nil
	}
	s.setMarks(marks)
	return true, nil
}

// liveMarks reclaims expired marks and returns a *store.SeenError naming
// the ids of marks that have a live mark, or nil. s.mu must be held.
func (s *Store) liveMarks(marks []store.Mark) error {
	now := s.now()
	// Reclaim expired marks: afterwards every mark in the map is live.
	for len(s.markExp) > 0 && !s.markExp[0].until.After(now) {
		m := heap.Pop(&s.markExp).(*mark)
		delete(s.marks, m.id)
	}
	var live []string
	for _, m := range marks {
		if _, ok := s.marks[m.ID]; ok && !slices.Contains(live, m.ID) {
			live = append(live, m.ID)
		}
	}
	if live != nil {
		return &store.SeenError{IDs: live}
	}
	return nil
}

// setMarks records marks that liveMarks found absent; a mark that is
// already expired is not kept. s.mu must be held.
func (s *Store) setMarks(marks []store.Mark) {
	now := s.now()
	for _, m := range marks {
		if _, dup := s.marks[m.ID]; dup || !m.Until.After(now) {
			continue // a repeated id keeps its first mark
		}
		mk := &mark{id: m.ID, until: m.Until}
		s.marks[m.ID] = mk
		heap.Push(&s.markExp, mk)
	}
}

// ForgetSeen removes the mark on id, live or expired; forgetting an absent
// id returns nil.
func (s *Store) ForgetSeen(ctx context.Context, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if m, ok := s.marks[id]; ok {
		delete(s.marks, id)
		heap.Remove(&s.markExp, m.idx)
	}
	return nil
}

// mark is a deduplication mark.
type mark struct {
	id    string
	until time.Time
	idx   int // index in Store.markExp
}

// markHeap orders marks by expiry.
type markHeap []*mark

func (h markHeap) Len() int           { return len(h) }
func (h markHeap) Less(i, j int) bool { return h[i].until.Before(h[j].until) }
func (h markHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *markHeap) Push(x any) {
	m := x.(*mark)
	m.idx = len(*h)
	*h = append(*h, m)
}
func (h *markHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.idx = -1
	return m
}
