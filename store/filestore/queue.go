package filestore

import (
	"cmp"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
)

// The delivery queue.
//
// On disk, bucket "deliveries" maps a delivery's enqueue sequence number
// (8 bytes, big-endian) to the delivery as JSON (record), and bucket
// "payloads" maps a payload's ID to its body. Keying deliveries by sequence
// makes Enqueue append to the end of the B+tree and Complete, which mostly
// finishes deliveries in the order they were queued, touch few pages.
//
// In memory, every queued delivery is an item, indexed as in memstore: an
// unleased item sits in the ready heap of its host, ordered by (NotBefore,
// seq); hosts whose ready heap is not empty sit in queue.due, ordered by
// their first ready item; leased items sit in queue.leased, ordered by lease
// expiry. Lease thus costs O((k + s) log n) for k leased deliveries and s
// skipped hosts. Strings that many deliveries share (payload, inbox,
// subscriber, activity type) are shared in memory: Enqueue keeps the
// caller's strings, which a fan-out shares, and Open interns them. Payload bodies are not kept in
// memory, except a new body until its commit (so that GetPayload of a
// delivery Lease returned never misses it).

// record is a delivery as stored on disk.
type record struct {
	ID           string    `json:"id"`
	PayloadID    string    `json:"p"`
	Inbox        string    `json:"i"`
	Host         string    `json:"h"`
	Subscriber   string    `json:"s,omitempty"`
	ActivityType string    `json:"t,omitempty"`
	Attempts     int       `json:"a,omitempty"`
	NotBefore    time.Time `json:"n"`
	LastError    string    `json:"e,omitempty"`
	Created      time.Time `json:"c"`
}

type queue struct {
	seq      uint64
	byID     map[string]*item
	payloads map[string]*payloadRef
	hosts    map[string]*hostQueue
	due      hostHeap  // hosts with ready items, by their earliest one
	leased   leaseHeap // leased items, by lease expiry
}

// payloadRef is a stored payload: how many items refer to it and, until
// the commit that writes it, its body.
type payloadRef struct {
	refs int
	body []byte
}

// item is a queued delivery.
type item struct {
	id           string
	payload      string
	inbox        string
	subscriber   string
	activityType string
	attempts     int
	notBefore    time.Time
	created      time.Time
	lastError    string
	seq          uint64
	host         *hostQueue
	leased       bool
	leaseEnd     time.Time // when the lease expires, if leased
	idx          int       // index in host.ready, or in queue.leased if leased
}

// hostQueue holds the deliveries to one host.
type hostQueue struct {
	name   string
	ready  readyHeap // unleased items
	leased int       // number of leased items
	idx    int       // index in queue.due, -1 if not in it
}

func newQueue() queue {
	return queue{
		byID:     make(map[string]*item),
		payloads: make(map[string]*payloadRef),
		hosts:    make(map[string]*hostQueue),
	}
}

// delivery returns the item as a store.Delivery.
func (it *item) delivery() store.Delivery {
	return store.Delivery{
		ID:           it.id,
		PayloadID:    it.payload,
		Inbox:        it.inbox,
		Host:         it.host.name,
		Subscriber:   it.subscriber,
		ActivityType: it.activityType,
		Attempts:     it.attempts,
		NotBefore:    it.notBefore,
		LastError:    it.lastError,
		Created:      it.created,
	}
}

// record returns the item as stored on disk.
func (it *item) record() record {
	return record{
		ID:           it.id,
		PayloadID:    it.payload,
		Inbox:        it.inbox,
		Host:         it.host.name,
		Subscriber:   it.subscriber,
		ActivityType: it.activityType,
		Attempts:     it.attempts,
		NotBefore:    it.notBefore,
		LastError:    it.lastError,
		Created:      it.created,
	}
}

// interner maps strings to one copy of each.
type interner map[string]string

// intern returns the copy of s that in keeps, adding s if it has none; a
// nil interner returns s.
func (in interner) intern(s string) string {
	if in == nil {
		return s
	}
	if c, ok := in[s]; ok {
		return c
	}
	in[s] = s
	return s
}

// utc returns t in UTC, or the zero time.
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

// recordOf returns d as stored on disk, times in UTC.
func recordOf(d *store.Delivery) record {
	return record{
		ID:           d.ID,
		PayloadID:    d.PayloadID,
		Inbox:        d.Inbox,
		Host:         d.Host,
		Subscriber:   d.Subscriber,
		ActivityType: d.ActivityType,
		Attempts:     d.Attempts,
		NotBefore:    utc(d.NotBefore),
		LastError:    d.LastError,
		Created:      utc(d.Created),
	}
}

// encodeRecord returns the value stored for a delivery.
func encodeRecord(r *record) ([]byte, error) {
	doc, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("store/filestore: encoding delivery: %w", err)
	}
	return doc, nil
}

// seqKey returns the key of the delivery with sequence number seq.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}

// decodeRecord decodes a key and value written for a delivery.
func decodeRecord(k, v []byte) (uint64, record, error) {
	var r record
	if len(k) != 8 {
		return 0, r, errors.New("bad delivery key")
	}
	err := json.Unmarshal(v, &r)
	if err == nil && r.ID == "" {
		err = errors.New("delivery without ID")
	}
	return binary.BigEndian.Uint64(k), r, err
}

// newItem returns an unqueued item for r, with its strings interned by in
// (if not nil).
func newItem(id string, seq uint64, r *record, in interner) *item {
	return &item{
		id:           id,
		payload:      in.intern(r.PayloadID),
		inbox:        in.intern(r.Inbox),
		subscriber:   in.intern(r.Subscriber),
		activityType: in.intern(r.ActivityType),
		attempts:     r.Attempts,
		notBefore:    r.NotBefore,
		created:      r.Created,
		lastError:    r.LastError,
		seq:          seq,
	}
}

// Enqueue implements store.Store.Enqueue, in one commit however many
// deliveries it stores; it returns once they are on disk. It returns an
// error, and stores nothing, if a payload or delivery ID is empty or too
// long, a time cannot be encoded (years outside 0 to 9999), or a delivery's
// PayloadID names neither one of payloads nor a stored payload. Within one
// call the first payload or delivery with a given ID wins. A new payload
// that no newly queued delivery refers to is not kept. Times are stored,
// and returned, in UTC.
func (s *Store) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	given := make(map[string]int, len(payloads)) // payload ID -> index of its first occurrence
	for i, p := range payloads {
		if p.ID == "" {
			return errors.New("store/filestore: Enqueue: empty payload ID")
		}
		if err := checkKey("payload ID", p.ID); err != nil {
			return err
		}
		if _, dup := given[p.ID]; !dup {
			given[p.ID] = i
		}
	}
	// Encode outside the lock; the sequence number is added under it.
	docs := make([][]byte, len(deliveries))
	firsts := make(map[string]bool, len(deliveries))
	for i := range deliveries {
		d := &deliveries[i]
		if d.ID == "" {
			return errors.New("store/filestore: Enqueue: empty delivery ID")
		}
		if err := checkKey("delivery ID", d.ID); err != nil {
			return err
		}
		if firsts[d.ID] {
			continue
		}
		firsts[d.ID] = true
		r := recordOf(d)
		doc, err := json.Marshal(&r)
		if err != nil {
			return fmt.Errorf("store/filestore: Enqueue: delivery %q: %w", d.ID, err)
		}
		docs[i] = doc
	}

	return s.changeAfter(ctx, func() (func(*bolt.Tx) error, func(), error) {
		q := &s.q
		for i := range deliveries {
			d := &deliveries[i]
			_, givenNow := given[d.PayloadID]
			if _, stored := q.payloads[d.PayloadID]; !stored && !givenNow {
				return nil, nil, fmt.Errorf("store/filestore: Enqueue: delivery %q: unknown payload %q", d.ID, d.PayloadID)
			}
		}
		var (
			newPayloads = map[string]*payloadRef{}
			keys        [][]byte
			vals        [][]byte
		)
		for i := range deliveries {
			d := &deliveries[i]
			if docs[i] == nil {
				continue // a later duplicate within the call
			}
			if _, queued := q.byID[d.ID]; queued {
				continue
			}
			p := q.payloads[d.PayloadID]
			if p == nil {
				p = &payloadRef{body: cloneBytes(payloads[given[d.PayloadID]].Body)}
				q.payloads[d.PayloadID] = p
				newPayloads[d.PayloadID] = p
			}
			q.seq++
			r := recordOf(d)
			q.add(newItem(d.ID, q.seq, &r, nil), r.Host)
			keys = append(keys, seqKey(q.seq))
			vals = append(vals, docs[i])
		}
		if len(keys) == 0 {
			return nil, nil, nil
		}
		fn := func(tx *bolt.Tx) error {
			pb, db := tx.Bucket(bPayloads), tx.Bucket(bDeliveries)
			db.FillPercent = 0.9 // keys are appended in order: fill pages
			for id, p := range newPayloads {
				if err := pb.Put([]byte(id), p.body); err != nil {
					return err
				}
			}
			for i, k := range keys {
				if err := db.Put(k, vals[i]); err != nil {
					return err
				}
			}
			return nil
		}
		after := func() { // the bodies are on disk: GetPayload reads them there
			for id, p := range newPayloads {
				if s.q.payloads[id] == p {
					p.body = nil
				}
			}
		}
		return fn, after, nil
	})
}

// add queues a new item, whose payload is stored in q.payloads, for host.
func (q *queue) add(it *item, host string) {
	h := q.hosts[host]
	if h == nil {
		h = &hostQueue{name: host, idx: -1}
		q.hosts[host] = h
	}
	it.host = h
	q.byID[it.id] = it
	q.payloads[it.payload].refs++
	q.makeReady(it)
}

// makeReady puts an unleased item, not in any heap, in its host's ready heap.
func (q *queue) makeReady(it *item) {
	heap.Push(&it.host.ready, it)
	q.fixHost(it.host)
}

// unlink takes an item out of the heap it is in and clears its lease.
func (q *queue) unlink(it *item) {
	if it.leased {
		heap.Remove(&q.leased, it.idx)
		it.leased, it.leaseEnd = false, time.Time{}
		it.host.leased--
		return
	}
	heap.Remove(&it.host.ready, it.idx)
	q.fixHost(it.host)
}

// fixHost restores h's place in q.due after its ready heap changed.
func (q *queue) fixHost(h *hostQueue) {
	switch {
	case len(h.ready) == 0:
		if h.idx >= 0 {
			heap.Remove(&q.due, h.idx)
		}
	case h.idx < 0:
		heap.Push(&q.due, h)
	default:
		heap.Fix(&q.due, h.idx)
	}
}

// remove deletes an item and reports whether its payload lost its last
// reference and was removed too.
func (q *queue) remove(it *item) (payloadGone bool) {
	q.unlink(it)
	h := it.host
	delete(q.byID, it.id)
	if len(h.ready) == 0 && h.leased == 0 {
		delete(q.hosts, h.name)
	}
	pid := it.payload
	p := q.payloads[pid]
	if p.refs--; p.refs == 0 {
		delete(q.payloads, pid)
		return true
	}
	return false
}

// removeTx removes items from memory and returns the matching change to the
// file: the deliveries, and the payloads that lost their last reference.
func (q *queue) removeTx(items []*item) func(*bolt.Tx) error {
	if len(items) == 0 {
		return nil
	}
	ids := make([][]byte, len(items))
	var gone [][]byte
	for i, it := range items {
		ids[i] = seqKey(it.seq)
		if q.remove(it) {
			gone = append(gone, []byte(it.payload))
		}
	}
	return func(tx *bolt.Tx) error {
		db, pb := tx.Bucket(bDeliveries), tx.Bucket(bPayloads)
		for _, k := range ids {
			if err := db.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range gone {
			if err := pb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}
}

// expireLeases makes the items whose lease ended by now ready again.
func (q *queue) expireLeases(now time.Time) {
	for len(q.leased) > 0 && !q.leased[0].leaseEnd.After(now) {
		it := heap.Pop(&q.leased).(*item)
		it.leased, it.leaseEnd = false, time.Time{}
		it.host.leased--
		q.makeReady(it)
	}
}

// Lease implements store.Store.Lease, in memory only: it writes nothing to
// disk, and leases do not survive a restart (every queued delivery is due
// again at its NotBefore after Open). It costs O((k + s) log n) for k leased
// deliveries and s hosts skipped or filled up (r.PerHost). A lease ends at
// r.Now + r.Duration. Deliveries with the same NotBefore are leased in
// enqueue order. Lease returns an error, and leases nothing, if
// r.Limit <= 0.
func (s *Store) Lease(ctx context.Context, r store.LeaseRequest) ([]store.Delivery, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if r.Limit <= 0 {
		return nil, fmt.Errorf("store/filestore: Lease: Limit %d must be > 0", r.Limit)
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
		if h.ready[0].notBefore.After(r.Now) {
			break // the earliest ready delivery of all is not due
		}
		if r.SkipHosts[h.name] {
			heap.Pop(&q.due)
			setAside = append(setAside, h)
			continue
		}
		it := heap.Pop(&h.ready).(*item)
		q.fixHost(h)
		it.leased, it.leaseEnd = true, end
		h.leased++
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

// GetPayload returns a copy of a stored payload's body, read from disk, or
// store.ErrNotFound.
func (s *Store) GetPayload(ctx context.Context, id string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	p, ok := s.q.payloads[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	if p.body != nil { // not committed yet
		return cloneBytes(p.body), nil
	}
	var body []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bPayloads).Get([]byte(id))
		if v == nil {
			return store.ErrNotFound
		}
		body = cloneBytes(v)
		return nil
	})
	return body, err
}

// Complete removes a delivery, leased or not, and its payload once no
// delivery refers to it, and returns once that is on disk. Completing an
// absent delivery returns nil (once the changes made before are on disk).
func (s *Store) Complete(ctx context.Context, deliveryID string) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		it, ok := s.q.byID[deliveryID]
		if !ok {
			return nil, nil
		}
		return s.q.removeTx([]*item{it}), nil
	})
}

// Retry implements store.Store.Retry: it stores d.Attempts, d.NotBefore and
// d.LastError (the other fields of d are ignored), releases the lease,
// whether or not the delivery was leased, and returns once the change is on
// disk. It returns store.ErrNotFound if d.ID is not queued.
func (s *Store) Retry(ctx context.Context, d store.Delivery) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		it, ok := s.q.byID[d.ID]
		if !ok {
			return nil, store.ErrNotFound
		}
		r := it.record()
		r.Attempts, r.NotBefore, r.LastError = d.Attempts, utc(d.NotBefore), d.LastError
		v, err := encodeRecord(&r)
		if err != nil {
			return nil, err
		}
		s.q.unlink(it)
		it.attempts, it.notBefore, it.lastError = r.Attempts, r.NotBefore, r.LastError
		s.q.makeReady(it)
		key := seqKey(it.seq)
		return func(tx *bolt.Tx) error { return tx.Bucket(bDeliveries).Put(key, v) }, nil
	})
}

// matching returns the items matching f. With f.Host set it visits that
// host's items only; otherwise every item.
func (q *queue) matching(f store.DeliveryFilter) []*item {
	var out []*item
	match := func(it *item) bool {
		return (f.Host == "" || f.Host == it.host.name) && (f.Subscriber == "" || f.Subscriber == it.subscriber)
	}
	if f.Host != "" {
		h := q.hosts[f.Host]
		if h == nil {
			return nil
		}
		for _, it := range h.ready {
			if match(it) {
				out = append(out, it)
			}
		}
		if h.leased > 0 {
			for _, it := range q.leased {
				if it.host == h && match(it) {
					out = append(out, it)
				}
			}
		}
		return out
	}
	for _, it := range q.byID {
		if match(it) {
			out = append(out, it)
		}
	}
	return out
}

// DropDeliveries removes the deliveries matching f, leased or not, and
// reclaims payloads as Complete does, in one commit. A zero filter matches,
// and removes, every delivery. Filtering by Subscriber alone visits every
// queued delivery.
func (s *Store) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	n := 0
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		items := s.q.matching(f)
		n = len(items)
		return s.q.removeTx(items), nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// CountDeliveries returns how many deliveries, leased or not, match f. A
// zero filter counts every delivery. Counting by Subscriber visits every
// queued delivery.
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
			return len(h.ready) + h.leased, nil
		}
		return 0, nil
	}
	return len(q.matching(f)), nil
}

// ShedDeliveries implements store.Store.ShedDeliveries, in one commit. A
// negative keep is treated as 0.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	n := 0
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		h := s.q.hosts[host]
		if h == nil {
			return nil, nil
		}
		excess := len(h.ready) + h.leased - max(keep, 0)
		if excess <= 0 || len(types) == 0 {
			return nil, nil
		}
		var victims []*item
		for _, it := range h.ready { // the unleased items
			if slices.Contains(types, it.activityType) {
				victims = append(victims, it)
			}
		}
		slices.SortFunc(victims, func(a, b *item) int {
			return cmp.Or(a.created.Compare(b.created), a.notBefore.Compare(b.notBefore), cmp.Compare(a.seq, b.seq))
		})
		victims = victims[:min(excess, len(victims))]
		n = len(victims)
		return s.q.removeTx(victims), nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// readyHeap orders a host's unleased items by (NotBefore, seq).
type readyHeap []*item

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return readyBefore(h[i], h[j]) }
func (h readyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *readyHeap) Push(x any) {
	it := x.(*item)
	it.idx = len(*h)
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

func readyBefore(a, b *item) bool {
	if c := a.notBefore.Compare(b.notBefore); c != 0 {
		return c < 0
	}
	return a.seq < b.seq
}

// leaseHeap orders leased items by lease end.
type leaseHeap []*item

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].leaseEnd.Before(h[j].leaseEnd) }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *leaseHeap) Push(x any) {
	it := x.(*item)
	it.idx = len(*h)
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

// hostHeap orders hosts with ready items by their first ready item.
type hostHeap []*hostQueue

func (h hostHeap) Len() int           { return len(h) }
func (h hostHeap) Less(i, j int) bool { return readyBefore(h[i].ready[0], h[j].ready[0]) }
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
