package memstore

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/fedirelay/relay/store"
)

// The delivery queue.
//
// Every queued delivery is an item. An unleased item sits in the ready heap
// of its host, ordered by (NotBefore, seq), where seq is the enqueue order.
// Hosts whose ready heap is not empty sit in queue.due, ordered by their
// first ready item, so the global oldest delivery is due[0].ready[0]. A
// leased item leaves its host's ready heap for queue.leased, ordered by lease
// expiry; Lease first moves the items whose lease expired back to their
// ready heaps, then pops hosts from due (setting skipped hosts aside) and
// items from their ready heaps.
//
// Besides, every host lists all its items (leased or not) for
// CountDeliveries, DropDeliveries and ShedDeliveries, bySub does the same
// per subscriber, and payloads count the items that refer to them.
//
// Items are kept small, since a large backlog holds one per delivery: what
// many deliveries share is stored once and referred to — the payload, and
// the host, inbox, subscriber and activity type (a target, interned in
// targets and counted).
type queue struct {
	seq      uint64
	byID     map[string]*item
	payloads map[string]*payload
	targets  map[targetKey]*target
	hosts    map[string]*hostQueue
	bySub    map[string]*itemList
	due      hostHeap  // hosts with ready items, by their earliest one
	leased   leaseHeap // leased items, by lease expiry
}

// targetKey is what a target holds, as a map key.
type targetKey struct {
	host, inbox, subscriber, activityType string
}

// target is where and what the deliveries that refer to it go: a fan-out
// sends the same activity type to the same inbox for the same subscriber
// many times over. It is removed with the last item that refers to it, so
// host (whose queue holds those items) outlives it.
type target struct {
	host                            *hostQueue
	inbox, subscriber, activityType string
	refs                            int
}

// item is a queued delivery: the fields of its store.Delivery, those that
// it shares with others by reference. Times are kept as Unix seconds and
// nanoseconds (a time.Time takes 24 bytes), NotBefore in key.
type item struct {
	id        string
	payload   *payload
	target    *target
	lastError *string // nil if empty
	attempts  int
	key       dueKey   // NotBefore and the enqueue order
	crSec     int64    // Created
	crNsec    int32    //
	leNsec    int32    // when the lease expires, if leased: nanoseconds, < 0 if not leased
	leSec     int64    // and Unix seconds
	idx       int32    // index in host.ready, or in queue.leased if leased
	pos       [2]int32 // index in the host's and the subscriber's itemList
}

// delivery returns the item as a store.Delivery.
func (it *item) delivery() store.Delivery {
	t := it.target
	d := store.Delivery{
		ID:           it.id,
		PayloadID:    it.payload.id,
		Inbox:        t.inbox,
		Host:         t.host.name,
		Subscriber:   t.subscriber,
		ActivityType: t.activityType,
		Attempts:     it.attempts,
		NotBefore:    it.notBefore(),
		Created:      time.Unix(it.crSec, int64(it.crNsec)).UTC(),
	}
	if it.lastError != nil {
		d.LastError = *it.lastError
	}
	return d
}

func (it *item) notBefore() time.Time { return time.Unix(it.key.sec, int64(it.key.nsec)).UTC() }

// setFailure stores the outcome of a failed attempt, as Retry does.
func (it *item) setFailure(attempts int, notBefore time.Time, lastError string) {
	it.attempts = attempts
	it.key = newDueKey(notBefore, it.key.seq)
	it.lastError = nil
	if lastError != "" {
		it.lastError = &lastError
	}
}

func (it *item) host() *hostQueue { return it.target.host }
func (it *item) leased() bool     { return it.leNsec >= 0 }

// lease marks the item leased until end.
func (it *item) lease(end time.Time) { it.leSec, it.leNsec = end.Unix(), int32(end.Nanosecond()) }

// unlease marks the item not leased.
func (it *item) unlease() { it.leSec, it.leNsec = 0, -1 }

// leaseBefore reports whether a's lease ends before b's.
func leaseBefore(a, b *item) bool {
	if a.leSec != b.leSec {
		return a.leSec < b.leSec
	}
	return a.leNsec < b.leNsec
}

// leaseOver reports whether it's lease ended by now.
func (it *item) leaseOver(now time.Time) bool {
	sec := now.Unix()
	return it.leSec < sec || it.leSec == sec && it.leNsec <= int32(now.Nanosecond())
}

// Lists an item is in, as indexes of item.pos.
const (
	hostList = iota
	subList
)

// hostQueue holds the deliveries to one host.
type hostQueue struct {
	name  string
	ready readyHeap // unleased items
	all   itemList  // every item, leased or not
	key   dueKey    // ready[0].key, if ready is not empty
	idx   int       // index in queue.due, -1 if not in it
}

// dueKey orders ready items: by NotBefore (as seconds and nanoseconds, which
// compare faster than time.Time), then by enqueue order.
type dueKey struct {
	sec  int64
	nsec int32
	seq  uint64
}

func newDueKey(notBefore time.Time, seq uint64) dueKey {
	return dueKey{sec: notBefore.Unix(), nsec: int32(notBefore.Nanosecond()), seq: seq}
}

func (k dueKey) before(o dueKey) bool {
	if k.sec != o.sec {
		return k.sec < o.sec
	}
	if k.nsec != o.nsec {
		return k.nsec < o.nsec
	}
	return k.seq < o.seq
}

// itemList is an unordered list of items with O(1) removal: an item keeps
// its index in the list in item.pos[which].
type itemList []*item

func (l *itemList) add(it *item, which int) {
	it.pos[which] = int32(len(*l))
	*l = append(*l, it)
}

func (l *itemList) remove(it *item, which int) {
	s := *l
	last := s[len(s)-1]
	s[it.pos[which]], last.pos[which] = last, it.pos[which]
	s[len(s)-1] = nil
	*l = s[:len(s)-1]
}

// payload is a stored payload and the number of items referring to it.
type payload struct {
	id   string
	body []byte
	refs int
}

func newQueue() queue {
	return queue{
		byID:     make(map[string]*item),
		payloads: make(map[string]*payload),
		targets:  make(map[targetKey]*target),
		hosts:    make(map[string]*hostQueue),
		bySub:    make(map[string]*itemList),
	}
}

// Enqueue implements store.Store.Enqueue. It returns an error, and stores
// nothing, if a payload or delivery ID is empty or a delivery's PayloadID
// names neither one of payloads nor a stored payload. Within one call the
// first payload or delivery with a given ID wins. A new payload that no
// newly queued delivery refers to is not kept, since nothing would ever
// remove it. Times are returned in UTC (as by the file store), without a
// monotonic clock reading.
func (s *Store) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery) error {
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
		if _, stored := q.payloads[d.PayloadID]; !stored && !given[d.PayloadID] {
			return fmt.Errorf("memstore: Enqueue: delivery %q: unknown payload %q", d.ID, d.PayloadID)
		}
	}

	var added []string // payloads new to the store
	for _, p := range payloads {
		if _, ok := q.payloads[p.ID]; !ok {
			q.payloads[p.ID] = &payload{id: p.ID, body: cloneBytes(p.Body)}
			added = append(added, p.ID)
		}
	}
	for i := range deliveries {
		if _, queued := q.byID[deliveries[i].ID]; !queued {
			q.add(&deliveries[i])
		}
	}
	for _, id := range added {
		if q.payloads[id].refs == 0 {
			delete(q.payloads, id)
		}
	}
	return nil
}

// add queues a new item for d, whose payload is stored.
func (q *queue) add(d *store.Delivery) {
	k := targetKey{d.Host, d.Inbox, d.Subscriber, d.ActivityType}
	t := q.targets[k]
	if t == nil {
		h := q.hosts[d.Host]
		if h == nil {
			h = &hostQueue{name: d.Host, idx: -1}
			q.hosts[d.Host] = h
		}
		t = &target{host: h, inbox: d.Inbox, subscriber: d.Subscriber, activityType: d.ActivityType}
		q.targets[k] = t
	}
	t.refs++
	p := q.payloads[d.PayloadID]
	p.refs++
	q.seq++
	it := &item{id: d.ID, payload: p, target: t, key: dueKey{seq: q.seq}, leNsec: -1}
	it.crSec, it.crNsec = d.Created.Unix(), int32(d.Created.Nanosecond())
	it.setFailure(d.Attempts, d.NotBefore, d.LastError)
	q.byID[d.ID] = it
	t.host.all.add(it, hostList)
	if d.Subscriber != "" {
		l := q.bySub[d.Subscriber]
		if l == nil {
			l = new(itemList)
			q.bySub[d.Subscriber] = l
		}
		l.add(it, subList)
	}
	q.makeReady(it)
}

// makeReady puts an unleased item, not in any heap, in its host's ready heap.
func (q *queue) makeReady(it *item) {
	h := it.host()
	heap.Push(&h.ready, it)
	q.fixHost(h)
}

// unlink takes an item out of the heap it is in and clears its lease.
func (q *queue) unlink(it *item) {
	if it.leased() {
		heap.Remove(&q.leased, int(it.idx))
		it.unlease()
		return
	}
	h := it.host()
	heap.Remove(&h.ready, int(it.idx))
	q.fixHost(h)
}

// fixHost restores h's key and place in q.due after its ready heap changed.
func (q *queue) fixHost(h *hostQueue) {
	if len(h.ready) == 0 {
		if h.idx >= 0 {
			heap.Remove(&q.due, h.idx)
		}
		return
	}
	h.key = h.ready[0].key
	if h.idx < 0 {
		heap.Push(&q.due, h)
	} else {
		heap.Fix(&q.due, h.idx)
	}
}

// remove deletes an item and reclaims its payload if it was the last item
// referring to it.
func (q *queue) remove(it *item) {
	q.unlink(it)
	t := it.target
	h := t.host
	delete(q.byID, it.id)
	h.all.remove(it, hostList)
	if t.refs--; t.refs == 0 {
		delete(q.targets, targetKey{h.name, t.inbox, t.subscriber, t.activityType})
	}
	if len(h.all) == 0 {
		delete(q.hosts, h.name)
	}
	if sub := t.subscriber; sub != "" {
		l := q.bySub[sub]
		l.remove(it, subList)
		if len(*l) == 0 {
			delete(q.bySub, sub)
		}
	}
	p := it.payload
	if p.refs--; p.refs == 0 {
		delete(q.payloads, p.id)
	}
}

// expireLeases makes the items whose lease ended by now ready again.
func (q *queue) expireLeases(now time.Time) {
	for len(q.leased) > 0 && q.leased[0].leaseOver(now) {
		it := heap.Pop(&q.leased).(*item)
		it.unlease()
		q.makeReady(it)
	}
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
	if r.Limit <= 0 {
		return nil, fmt.Errorf("memstore: Lease: Limit %d must be > 0", r.Limit)
	}
	q := &s.q
	q.expireLeases(r.Now)

	out := make([]store.Delivery, 0, min(r.Limit, len(q.byID)))
	end := r.Now.Add(r.Duration)
	var (
		setAside []*hostQueue       // hosts skipped or full, out of q.due
		perHost  map[*hostQueue]int // deliveries leased per host, if r.PerHost > 0
	)
	if r.PerHost > 0 {
		perHost = make(map[*hostQueue]int)
	}
	for len(out) < r.Limit && len(q.due) > 0 {
		h := q.due[0]
		if h.ready[0].notBefore().After(r.Now) {
			break // the earliest ready delivery of all is not due
		}
		if r.SkipHosts[h.name] {
			heap.Pop(&q.due)
			setAside = append(setAside, h)
			continue
		}
		it := heap.Pop(&h.ready).(*item)
		q.fixHost(h)
		it.lease(end)
		heap.Push(&q.leased, it)
		out = append(out, it.delivery())
		if perHost != nil {
			if perHost[h]++; perHost[h] == r.PerHost && h.idx >= 0 {
				heap.Remove(&q.due, h.idx)
				setAside = append(setAside, h)
			}
		}
	}
	for _, h := range setAside {
		q.fixHost(h)
	}
	return out, nil
}

// GetPayload returns a copy of a stored payload's body, or store.ErrNotFound.
func (s *Store) GetPayload(ctx context.Context, id string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	p, ok := s.q.payloads[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return cloneBytes(p.body), nil
}

// Complete removes a delivery, leased or not, and its payload once no
// delivery refers to it. Completing an absent delivery returns nil.
func (s *Store) Complete(ctx context.Context, deliveryID string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if it, ok := s.q.byID[deliveryID]; ok {
		s.q.remove(it)
	}
	return nil
}

// Retry implements store.Store.Retry: it stores d.Attempts, d.NotBefore and
// d.LastError (the other fields of d are ignored) and releases the lease,
// whether or not the delivery was leased. It returns store.ErrNotFound if
// d.ID is not queued.
func (s *Store) Retry(ctx context.Context, d store.Delivery) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	it, ok := s.q.byID[d.ID]
	if !ok {
		return store.ErrNotFound
	}
	s.q.unlink(it)
	it.setFailure(d.Attempts, d.NotBefore, d.LastError)
	s.q.makeReady(it)
	return nil
}

// matching returns the items matching f, visiting the smaller index when f
// names a host or a subscriber and every item otherwise.
func (q *queue) matching(f store.DeliveryFilter) []*item {
	var out []*item
	add := func(it *item) {
		if (f.Host == "" || f.Host == it.target.host.name) && (f.Subscriber == "" || f.Subscriber == it.target.subscriber) {
			out = append(out, it)
		}
	}
	var hostItems, subItems itemList
	if h := q.hosts[f.Host]; h != nil && f.Host != "" {
		hostItems = h.all
	}
	if l := q.bySub[f.Subscriber]; l != nil && f.Subscriber != "" {
		subItems = *l
	}
	switch {
	case f.Host != "" && (f.Subscriber == "" || len(hostItems) <= len(subItems)):
		for _, it := range hostItems {
			add(it)
		}
	case f.Subscriber != "":
		for _, it := range subItems {
			add(it)
		}
	default:
		for _, it := range q.byID {
			add(it)
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
	q := &s.q
	switch {
	case f.Host == "" && f.Subscriber == "":
		return len(q.byID), nil
	case f.Subscriber == "":
		if h := q.hosts[f.Host]; h != nil {
			return len(h.all), nil
		}
		return 0, nil
	case f.Host == "":
		if l := q.bySub[f.Subscriber]; l != nil {
			return len(*l), nil
		}
		return 0, nil
	}
	return len(q.matching(f)), nil
}

// ShedDeliveries implements store.Store.ShedDeliveries. A negative keep is
// treated as 0. It costs O(n log n) for the n unleased deliveries of host
// when host has more than keep deliveries, and O(1) otherwise.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	h := s.q.hosts[host]
	if h == nil {
		return 0, nil
	}
	excess := len(h.all) - max(keep, 0)
	if excess <= 0 || len(types) == 0 {
		return 0, nil
	}
	var victims []*item
	for _, it := range h.ready { // the unleased items
		if slices.Contains(types, it.target.activityType) {
			victims = append(victims, it)
		}
	}
	slices.SortFunc(victims, func(a, b *item) int {
		return cmp.Or(cmp.Compare(a.crSec, b.crSec), cmp.Compare(a.crNsec, b.crNsec),
			cmp.Compare(a.key.sec, b.key.sec), cmp.Compare(a.key.nsec, b.key.nsec), cmp.Compare(a.key.seq, b.key.seq))
	})
	victims = victims[:min(excess, len(victims))]
	for _, it := range victims {
		s.q.remove(it)
	}
	return len(victims), nil
}

// readyHeap orders a host's unleased items by key.
type readyHeap []*item

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return h[i].key.before(h[j].key) }
func (h readyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j)
}
func (h *readyHeap) Push(x any) {
	it := x.(*item)
	it.idx = int32(len(*h))
	*h = append(*h, it)
}
func (h *readyHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.idx = -1
	return it
}

// leaseHeap orders leased items by lease end.
type leaseHeap []*item

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return leaseBefore(h[i], h[j]) }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j)
}
func (h *leaseHeap) Push(x any) {
	it := x.(*item)
	it.idx = int32(len(*h))
	*h = append(*h, it)
}
func (h *leaseHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.idx = -1
	return it
}

// hostHeap orders hosts with ready items by the key of their first one.
type hostHeap []*hostQueue

func (h hostHeap) Len() int           { return len(h) }
func (h hostHeap) Less(i, j int) bool { return h[i].key.before(h[j].key) }
func (h hostHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *hostHeap) Push(x any) {
	hq := x.(*hostQueue)
	hq.idx = len(*h)
	*h = append(*h, hq)
}
func (h *hostHeap) Pop() any {
	old := *h
	hq := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	hq.idx = -1
	return hq
}
