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
// skipped hosts. Payload bodies are not kept in memory, except a new body
// until its commit (so that GetPayload of a delivery Lease returned never
// misses it).
//
// Items are kept small, since a large backlog holds one per delivery (96
// bytes, plus its ID and its entries in byID and a heap): what many
// deliveries share is stored once and referred to — the payload (payloadRef)
// and the host, inbox, subscriber and activity type (target, interned in
// queue.targets and counted) — and times are stored as seconds and
// nanoseconds.

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
	targets  map[targetKey]*target
	hosts    map[string]*hostQueue
	due      hostHeap  // hosts with ready items, by their earliest one
	leased   leaseHeap // leased items, by lease expiry
}

// payloadRef is a stored payload: its ID, how many items refer to it and,
// until the commit that writes it, its body.
type payloadRef struct {
	id   string
	refs int
	body []byte
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

// item is a queued delivery. It has no time.Time fields, which take 24
// bytes each: a time is its Unix seconds and nanoseconds (see stamp).
type item struct {
	id        string
	payload   *payloadRef
	target    *target
	lastError *string // nil if empty
	seq       uint64
	nbSec     int64 // NotBefore
	crSec     int64 // Created
	leSec     int64 // when the lease expires, if leased
	attempts  int
	nbNsec    int32
	crNsec    int32
	leNsec    int32 // < 0 if not leased
	idx       int32 // index in host.ready, or in queue.leased if leased
}

// stamp returns t as Unix seconds and nanoseconds.
func stamp(t time.Time) (int64, int32) {
	return t.Unix(), int32(t.Nanosecond())
}

// unstamp returns the UTC time of Unix seconds and nanoseconds, the zero
// time for those of the zero time.
func unstamp(sec int64, nsec int32) time.Time {
	return time.Unix(sec, int64(nsec)).UTC()
}

// compareStamps compares two times given as stamps, like time.Time.Compare.
func compareStamps(asec int64, ansec int32, bsec int64, bnsec int32) int {
	return cmp.Or(cmp.Compare(asec, bsec), cmp.Compare(ansec, bnsec))
}

func (it *item) host() *hostQueue { return it.target.host }
func (it *item) leased() bool     { return it.leNsec >= 0 }

// lease marks the item leased until end.
func (it *item) lease(end time.Time) { it.leSec, it.leNsec = stamp(end) }

// unlease marks the item not leased.
func (it *item) unlease() { it.leSec, it.leNsec = 0, -1 }

func (it *item) notBefore() time.Time { return unstamp(it.nbSec, it.nbNsec) }
func (it *item) created() time.Time   { return unstamp(it.crSec, it.crNsec) }

func (it *item) lastErr() string {
	if it.lastError == nil {
		return ""
	}
	return *it.lastError
}

// setFailure stores the outcome of a failed attempt.
func (it *item) setFailure(attempts int, notBefore time.Time, lastError string) {
	it.attempts = attempts
	it.nbSec, it.nbNsec = stamp(notBefore)
	it.lastError = nil
	if lastError != "" {
		it.lastError = &lastError
	}
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
		targets:  make(map[targetKey]*target),
		hosts:    make(map[string]*hostQueue),
	}
}

// delivery returns the item as a store.Delivery.
func (it *item) delivery() store.Delivery {
	r := it.record()
	return store.Delivery(r)
}

// record returns the item as stored on disk.
func (it *item) record() record {
	t := it.target
	return record{
		ID:           it.id,
		PayloadID:    it.payload.id,
		Inbox:        t.inbox,
		Host:         t.host.name,
		Subscriber:   t.subscriber,
		ActivityType: t.activityType,
		Attempts:     it.attempts,
		NotBefore:    it.notBefore(),
		LastError:    it.lastErr(),
		Created:      it.created(),
	}
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

// newItem returns an unqueued item for r, whose times are in UTC, to be
// passed to queue.add.
func newItem(seq uint64, r *record) *item {
	it := &item{id: r.ID, seq: seq, leNsec: -1}
	it.crSec, it.crNsec = stamp(r.Created)
	it.setFailure(r.Attempts, r.NotBefore, r.LastError)
	return it
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
				p = &payloadRef{id: d.PayloadID, body: cloneBytes(payloads[given[d.PayloadID]].Body)}
				q.payloads[d.PayloadID] = p
				newPayloads[d.PayloadID] = p
			}
			q.seq++
			r := recordOf(d)
			q.add(newItem(q.seq, &r), &r)
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

// add queues a new item for the delivery r, whose payload is stored in
// q.payloads.
func (q *queue) add(it *item, r *record) {
	k := targetKey{r.Host, r.Inbox, r.Subscriber, r.ActivityType}
	t := q.targets[k]
	if t == nil {
		h := q.hosts[r.Host]
		if h == nil {
			h = &hostQueue{name: r.Host, idx: -1}
			q.hosts[r.Host] = h
		}
		t = &target{host: h, inbox: r.Inbox, subscriber: r.Subscriber, activityType: r.ActivityType}
		q.targets[k] = t
	}
	t.refs++
	it.target = t
	p := q.payloads[r.PayloadID]
	p.refs++
	it.payload = p
	q.byID[it.id] = it
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
	h := it.host()
	if it.leased() {
		heap.Remove(&q.leased, int(it.idx))
		it.unlease()
		h.leased--
		return
	}
	heap.Remove(&h.ready, int(it.idx))
	q.fixHost(h)
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
	t := it.target
	h := t.host
	delete(q.byID, it.id)
	if t.refs--; t.refs == 0 {
		delete(q.targets, targetKey{h.name, t.inbox, t.subscriber, t.activityType})
	}
	if len(h.ready) == 0 && h.leased == 0 {
		delete(q.hosts, h.name)
	}
	p := it.payload
	if p.refs--; p.refs == 0 {
		delete(q.payloads, p.id)
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
			gone = append(gone, []byte(it.payload.id))
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
	nowSec, nowNsec := stamp(now)
	for len(q.leased) > 0 && compareStamps(q.leased[0].leSec, q.leased[0].leNsec, nowSec, nowNsec) <= 0 {
		it := heap.Pop(&q.leased).(*item)
		it.unlease()
		it.host().leased--
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
	nowSec, nowNsec := stamp(r.Now)
	var (
		setAside []*hostQueue       // hosts skipped or full, out of q.due
		perHost  map[*hostQueue]int // deliveries leased per host, if r.PerHost > 0
	)
	if r.PerHost > 0 {
		perHost = make(map[*hostQueue]int)
	}
	for len(out) < r.Limit && len(q.due) > 0 {
		h := q.due[0]
		if first := h.ready[0]; compareStamps(first.nbSec, first.nbNsec, nowSec, nowNsec) > 0 {
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
		it.setFailure(r.Attempts, r.NotBefore, r.LastError)
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
		return (f.Host == "" || f.Host == it.target.host.name) && (f.Subscriber == "" || f.Subscriber == it.target.subscriber)
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
				if it.target.host == h && match(it) {
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
			if slices.Contains(types, it.target.activityType) {
				victims = append(victims, it)
			}
		}
		slices.SortFunc(victims, func(a, b *item) int {
			return cmp.Or(compareStamps(a.crSec, a.crNsec, b.crSec, b.crNsec),
				compareStamps(a.nbSec, a.nbNsec, b.nbSec, b.nbNsec), cmp.Compare(a.seq, b.seq))
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

func readyBefore(a, b *item) bool {
	if c := compareStamps(a.nbSec, a.nbNsec, b.nbSec, b.nbNsec); c != 0 {
		return c < 0
	}
	return a.seq < b.seq
}

// leaseHeap orders leased items by lease end.
type leaseHeap []*item

func (h leaseHeap) Len() int { return len(h) }
func (h leaseHeap) Less(i, j int) bool {
	return compareStamps(h[i].leSec, h[i].leNsec, h[j].leSec, h[j].leNsec) < 0
}
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
