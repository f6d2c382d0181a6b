// Package memstore is an in-memory implementation of store.Store, for tests
// and ephemeral relays: all state lives in the process and is lost when it
// exits or restarts.
//
// It is built for relay scale: the delivery queue keeps one min-heap of due
// deliveries per host and a heap of hosts ordered by their earliest due
// delivery, so Lease costs O((k + s) log n) for k leased deliveries and s
// skipped hosts instead of a scan of the whole backlog. Subscribers are
// indexed by host, payloads are reference-counted and deduplication marks
// are reclaimed through an expiry heap.
//
// A Store is safe for concurrent use by multiple goroutines of one process.
package memstore

import (
	"container/heap"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
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

	values map[string][]byte

	subs     map[string]*store.Subscriber   // by ActorID
	subOrder []string                       // every ActorID, sorted
	subHosts map[string]map[string]struct{} // Host -> ActorIDs
	marks    map[string]*mark               // live (and not yet reclaimed) marks by id
	markExp  markHeap                       // the marks of the map, by expiry

	q queue
}

// New returns an empty Store.
func New() *Store {
	return &Store{
		now:      time.Now,
		values:   make(map[string][]byte),
		subs:     make(map[string]*store.Subscriber),
		subHosts: make(map[string]map[string]struct{}),
		marks:    make(map[string]*mark),
		q:        newQueue(),
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
	s.values, s.subs, s.subOrder, s.subHosts = nil, nil, nil, nil
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
func cloneBytes(b []byte) []byte {
	return append([]byte{}, b...)
}

// GetValue returns a copy of the value stored under key, or store.ErrNotFound.
func (s *Store) GetValue(ctx context.Context, key string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	v, ok := s.values[key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return cloneBytes(v), nil
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
	out := make(map[string][]byte)
	for k, v := range s.values {
		if strings.HasPrefix(k, prefix) {
			out[k] = cloneBytes(v)
		}
	}
	return out, nil
}

// GetSubscriber returns a copy of the subscriber with the given actor id, or
// store.ErrNotFound.
func (s *Store) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	if err := s.rlock(ctx); err != nil {
		return store.Subscriber{}, err
	}
	defer s.mu.RUnlock()
	sub, ok := s.subs[actorID]
	if !ok {
		return store.Subscriber{}, store.ErrNotFound
	}
	return *sub, nil
}

// UpdateSubscriber implements store.Store.UpdateSubscriber. It calls fn
// exactly once, while holding the store's lock: fn must not call the Store
// (it would deadlock) and should be quick. If fn changes ActorID, nothing is
// stored and an error is returned.
func (s *Store) UpdateSubscriber(ctx context.Context, actorID string, fn func(sub *store.Subscriber, found bool) error) (store.Subscriber, error) {
	if err := s.lock(ctx); err != nil {
		return store.Subscriber{}, err
	}
	defer s.mu.Unlock()
	old, found := s.subs[actorID]
	sub := store.Subscriber{ActorID: actorID}
	if found {
		sub = *old
	}
	if err := fn(&sub, found); err != nil {
		return store.Subscriber{}, err
	}
	if sub.ActorID != actorID {
		return store.Subscriber{}, errActorIDChanged
	}
	stored := sub // fn may keep the pointer it was given: store another copy
	if !found {
		i, _ := slices.BinarySearch(s.subOrder, actorID)
		s.subOrder = slices.Insert(s.subOrder, i, actorID)
		s.addSubHost(stored.Host, actorID)
	} else if old.Host != stored.Host {
		s.removeSubHost(old.Host, actorID)
		s.addSubHost(stored.Host, actorID)
	}
	s.subs[actorID] = &stored
	return stored, nil
}

func (s *Store) addSubHost(host, actorID string) {
	ids := s.subHosts[host]
	if ids == nil {
		ids = make(map[string]struct{})
		s.subHosts[host] = ids
	}
	ids[actorID] = struct{}{}
}

func (s *Store) removeSubHost(host, actorID string) {
	ids := s.subHosts[host]
	delete(ids, actorID)
	if len(ids) == 0 {
		delete(s.subHosts, host)
	}
}

// DeleteSubscriber removes a subscriber; removing an absent one returns nil.
// Its queued deliveries are not touched (see DropDeliveries).
func (s *Store) DeleteSubscriber(ctx context.Context, actorID string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	sub, ok := s.subs[actorID]
	if !ok {
		return nil
	}
	delete(s.subs, actorID)
	s.removeSubHost(sub.Host, actorID)
	if i, ok := slices.BinarySearch(s.subOrder, actorID); ok {
		s.subOrder = slices.Delete(s.subOrder, i, i+1)
	}
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
	ids := s.subOrder
	if f.Host != "" {
		hostIDs := s.subHosts[f.Host]
		ids = make([]string, 0, len(hostIDs))
		for id := range hostIDs {
			ids = append(ids, id)
		}
		slices.Sort(ids)
	}
	out := make([]store.Subscriber, 0, min(len(ids), 64))
	for _, id := range ids {
		if sub := s.subs[id]; f.Match(sub) {
			out = append(out, *sub)
		}
	}
	return out, nil
}

// MarkSeen implements store.Store.MarkSeen. Marks expire by the wall clock
// (time.Now); expired marks are reclaimed by later calls.
func (s *Store) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	now := s.now()
	// Reclaim expired marks, id's included: afterwards every mark is live.
	for len(s.markExp) > 0 && !s.markExp[0].until.After(now) {
		m := heap.Pop(&s.markExp).(*mark)
		delete(s.marks, m.id)
	}
	if _, live := s.marks[id]; live {
		return false, nil
	}
	if until.After(now) { // a mark that is already expired is not kept
		m := &mark{id: id, until: until}
		s.marks[id] = m
		heap.Push(&s.markExp, m)
	}
	return true, nil
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
