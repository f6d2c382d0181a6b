package memstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/internal/queueindex"
)

// The delivery queue.
//
// The index of queued deliveries (the ready heaps of hosts, the heap of
// hosts by their earliest ready delivery, the heap of leases) is
// queueindex's, shared with the file store; payload bodies are kept in it
// too. Besides, every subscriber lists its deliveries (leased or not), for
// CountDeliveries and DropDeliveries by subscriber: an item's index in its
// subscriber's list is its extension (item.Ext).
type queue struct {
	*queueindex.Index[int32]
	bySub map[string]*itemList
}

// item is a queued delivery; Ext is its index in its subscriber's itemList.
type item = queueindex.Item[int32]

func newQueue() queue {
	return queue{Index: queueindex.New[int32]("memstore"), bySub: make(map[string]*itemList)}
}

// itemList is an unordered list of items with O(1) removal: an item keeps
// its index in the list in item.Ext.
type itemList []*item

func (l *itemList) add(it *item) {
	it.Ext = int32(len(*l))
	*l = append(*l, it)
}

func (l *itemList) remove(it *item) {
	s := *l
	last := s[len(s)-1]
	s[it.Ext], last.Ext = last, it.Ext
	s[len(s)-1] = nil
	*l = s[:len(s)-1]
}

// Enqueue implements store.Store.Enqueue. It returns an error, and stores
// nothing, if a payload or delivery ID is empty or a delivery's PayloadID
// names neither one of payloads nor a stored payload, and a *store.SeenError
// if one of marks is live. Within one call the
// first payload or delivery with a given ID wins. A new payload that no
// newly queued delivery refers to is not kept, since nothing would ever
// remove it. Times are returned in UTC (as by the file store), without a
// monotonic clock reading.
func (s *Store) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery, marks ...store.Mark) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	q := &s.q

	given := make(map[string]bool, len(payloads))
	for _, p := range payloads {
		if p.ID == "" {
			return errors.New("memstore: Enqueue: empty payload ID")
		}
		given[p.ID] = true
	}
	for _, d := range deliveries {
		if d.ID == "" {
			return errors.New("memstore: Enqueue: empty delivery ID")
		}
		if _, stored := q.Payloads[d.PayloadID]; !stored && !given[d.PayloadID] {
			return fmt.Errorf("memstore: Enqueue: delivery %q: unknown payload %q", d.ID, d.PayloadID)
		}
	}
	if err := s.liveMarks(marks); err != nil {
		return err
	}
	s.setMarks(marks)

	var added []*queueindex.Payload // payloads new to the store
	for _, p := range payloads {
		if _, ok := q.Payloads[p.ID]; !ok {
			np := &queueindex.Payload{ID: p.ID, Body: cloneBytes(p.Body)}
			q.Payloads[p.ID] = np
			added = append(added, np)
		}
	}
	for i := range deliveries {
		if _, queued := q.ByID[deliveries[i].ID]; !queued {
			q.add(&deliveries[i])
		}
	}
	for _, p := range added {
		if p.Refs() == 0 {
			delete(q.Payloads, p.ID)
		}
	}
	return nil
}

// GetPayload returns a copy of a stored payload's body, or store.ErrNotFound.
func (s *Store) GetPayload(ctx context.Context, id string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.q.Body(id) // bodies are never nil
}

// add queues a new item for d, whose payload is stored.
func (q *queue) add(d *store.Delivery) {
	it := q.Add(q.Next(), d)
	if d.Subscriber != "" {
		l := q.bySub[d.Subscriber]
		if l == nil {
			l = new(itemList)
			q.bySub[d.Subscriber] = l
		}
		l.add(it)
	}
}

// remove deletes an item and reclaims its payload if it was the last item
// referring to it.
func (q *queue) remove(it *item) {
	if sub := it.Subscriber(); sub != "" {
		l := q.bySub[sub]
		l.remove(it)
		if len(*l) == 0 {
			delete(q.bySub, sub)
		}
	}
	q.Remove(it)
}

// Lease implements store.Store.Lease, in O((k + s) log n) for k leased
// deliveries and s hosts skipped or filled up (r.PerHost). A lease ends at
// r.Now + r.Duration; a Lease whose r.Now is at or after that time may lease
// the delivery again. Deliveries with the same NotBefore are leased in
// enqueue order. Lease returns an error, and leases nothing, if
// r.Limit <= 0.
//
// Expired leases are noticed by Lease calls: ShedDeliveries treats a
// delivery as leased until a Lease call whose r.Now is past its lease end.
// r.Now is assumed not to move backwards by more than lease durations.
func (s *Store) Lease(ctx context.Context, r store.LeaseRequest) ([]store.Delivery, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.q.Lease(r)
}

// Complete removes deliveries whose ref's token is still valid (see
// store.LeaseRef), and each payload once no delivery refers to it. Absent
// and repeated ids, and deliveries leased again since, are ignored.
func (s *Store) Complete(ctx context.Context, refs ...store.LeaseRef) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	for _, ref := range refs {
		if it, ok := s.q.ByID[ref.ID]; ok && s.q.Holds(it, ref.Token) {
			s.q.remove(it)
		}
	}
	return nil
}

// Retry implements store.Store.Retry: it stores d.Attempts, d.NotBefore and
// d.LastError (the other fields of d are ignored) and releases the lease,
// whether or not the delivery was leased. It returns store.ErrNotFound if
// d.ID is not queued and store.ErrLeaseLost if d.Token is no longer valid.
func (s *Store) Retry(ctx context.Context, d store.Delivery) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	it, ok := s.q.ByID[d.ID]
	if !ok {
		return store.ErrNotFound
	}
	if !s.q.Holds(it, d.Token) {
		return store.ErrLeaseLost
	}
	s.q.Retry(it, d.Attempts, d.NotBefore, d.LastError)
	return nil
}

// matching returns the items matching f. With f.Subscriber set it visits
// that subscriber's items, unless f.Host is set too and the host has
// fewer; with f.Host alone that host's items (and the leased ones); and
// every item otherwise.
func (q *queue) matching(f store.DeliveryFilter) []*item {
	if f.Subscriber == "" {
		return q.Matching(f)
	}
	l := q.bySub[f.Subscriber]
	if l == nil {
		return nil
	}
	if f.Host != "" && q.HostCount(f.Host) < len(*l) {
		return q.Matching(f)
	}
	var out []*item
	for _, it := range *l {
		if f.Host == "" || f.Host == it.Host() {
			out = append(out, it)
		}
	}
	return out
}

// DropDeliveries removes the deliveries matching f, leased or not, and
// reclaims payloads as Complete does. A zero filter matches, and removes,
// every delivery.
func (s *Store) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	items := s.q.matching(f)
	for _, it := range items {
		s.q.remove(it)
	}
	return len(items), nil
}

// CountDeliveries returns how many deliveries, leased or not, match f. A
// zero filter counts every delivery.
func (s *Store) CountDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.rlock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.RUnlock()
	if f.Subscriber == "" {
		return s.q.Count(f), nil
	}
	if f.Host == "" {
		if l := s.q.bySub[f.Subscriber]; l != nil {
			return len(*l), nil
		}
		return 0, nil
	}
	return len(s.q.matching(f)), nil
}

// ShedDeliveries implements store.Store.ShedDeliveries. A negative keep is
// treated as 0. It costs O(n log n) for the n unleased deliveries of host
// when host has more than keep deliveries, and O(1) otherwise.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	victims := s.q.ShedVictims(host, keep, types)
	for _, it := range victims {
		s.q.remove(it)
	}
	return len(victims), nil
}
