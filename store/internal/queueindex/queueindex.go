// Package queueindex is the in-memory index of a delivery queue shared by
// the store implementations (store/memstore and store/filestore): what is
// queued, in which order it is due, what is leased and until when. The
// stores keep what differs — payload bodies, the file — around it.
//
// Every queued delivery is an Item. An unleased item sits in the ready heap
// of its host, ordered by (NotBefore, seq), where seq is the enqueue order.
// Hosts whose ready heap is not empty sit in Index.due, ordered by their
// first ready item, so the global oldest delivery is due[0].ready[0]. A
// leased item leaves its host's ready heap for Index.leased, ordered by
// lease expiry; Lease first moves the items whose lease expired back to
// their ready heaps, then pops hosts from due (setting skipped hosts aside)
// and items from their ready heaps. Lease thus costs O((k + s) log n) for k
// leased deliveries and s hosts skipped or filled up.
//
// Items are kept small, since a large backlog holds one per delivery (96
// bytes without extension, plus its ID and its entries in ByID and a heap):
// what many deliveries share is stored once and referred to — the payload
// and the host, inbox, subscriber and activity type (a target, interned and
// counted) — and times are stored as Unix seconds and nanoseconds (a
// time.Time takes 24 bytes).
//
// An Index is not safe for concurrent use: the stores guard it with their
// lock.
package queueindex

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fedirelay/relay/store"
)

// Index indexes queued deliveries. X is a per-item extension the store
// keeps in each Item (see Item.Ext); the index does not touch it. Create
// one with New.
type Index[X any] struct {
	// Seq is the sequence number of the last item added: callers number
	// new items Seq+1 (see Next).
	Seq uint64
	// ByID holds every item by delivery ID. Callers must not change it.
	ByID map[string]*Item[X]
	// Payloads holds the payloads items refer to, by ID. Callers add a
	// payload before the first item that refers to it; the index removes
	// it with the last one.
	Payloads map[string]*Payload

	name    string // of the store, for errors
	epoch   uint64 // random, names this index in lease tokens
	leases  uint64 // leases handed out, the last token's number
	targets map[targetKey]*target[X]
	hosts   map[string]*host[X]
	due     hostHeap[X] // hosts with ready items, by their earliest one
	leased  itemHeap[X] // leased items, by lease expiry
}

// New returns an empty Index for the store called name (which starts the
// index's error messages).
func New[X any](name string) *Index[X] {
	return &Index[X]{
		name:     name,
		epoch:    rand.Uint64(),
		ByID:     make(map[string]*Item[X]),
		Payloads: make(map[string]*Payload),
		targets:  make(map[targetKey]*target[X]),
		hosts:    make(map[string]*host[X]),
	}
}

// Payload is a stored payload: its ID, how many items refer to it and
// whatever body the store keeps in memory (all of them, or those not
// written yet).
type Payload struct {
	ID   string
	Body []byte
	refs int
}

// Refs returns the number of items that refer to the payload.
func (p *Payload) Refs() int { return p.refs }

// Body returns a copy of the body of the payload id kept in memory, nil if
// the store keeps none for it (a body a store keeps is never nil), or
// store.ErrNotFound if no item refers to such a payload.
func (x *Index[X]) Body(id string) ([]byte, error) {
	p, ok := x.Payloads[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	if p.Body == nil {
		return nil, nil
	}
	return append([]byte{}, p.Body...), nil
}

// targetKey is what a target holds, as a map key.
type targetKey struct {
	host, inbox, subscriber, activityType, signer string
}

// target is where and what the deliveries that refer to it go: a fan-out
// sends the same activity type to the same inbox for the same subscriber
// many times over. It is removed with the last item that refers to it, so
// host (whose queue holds those items) outlives it.
type target[X any] struct {
	host                            *host[X]
	inbox, subscriber, activityType string
	signer                          string
	refs                            int
}

// host holds the deliveries to one host.
type host[X any] struct {
	name   string
	ready  itemHeap[X] // unleased items, by (NotBefore, seq)
	key    dueKey      // that of ready[0], if ready is not empty
	leased int         // number of leased items
	idx    int         // index in Index.due, -1 if not in it
}

// dueKey orders unleased items: by NotBefore (as Unix seconds and
// nanoseconds, which compare faster than a time.Time), then by enqueue
// order. Hosts keep that of their first ready item, so that the heap of
// hosts compares keys without loading items.
type dueKey struct {
	sec  int64
	seq  uint64
	nsec int32
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

// Item is a queued delivery: the fields of its store.Delivery, those that
// it shares with others by reference. It has no time.Time fields: a time is
// its Unix seconds and nanoseconds.
type Item[X any] struct {
	id        string
	payload   *Payload
	target    *target[X]
	lastError *string // nil if empty
	seq       uint64
	nbSec     int64 // NotBefore
	crSec     int64 // Created
	leSec     int64 // when the lease expires, if leased
	// Ext is the store's own data about the item. It is not the last
	// field, so that a zero-size Ext takes no room.
	Ext      X
	attempts int32
	nbNsec   int32
	crNsec   int32
	leNsec   int32  // < 0 if not leased
	idx      int32  // index in host.ready, or in Index.leased if leased
	leaseNum uint32 // low bits of the number of its last lease, 0 if none
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

// ID returns the item's delivery ID.
func (it *Item[X]) ID() string { return it.id }

// Seq returns the item's sequence number, its place in enqueue order.
func (it *Item[X]) Seq() uint64 { return it.seq }

// Payload returns the payload the item refers to.
func (it *Item[X]) Payload() *Payload { return it.payload }

// Host returns the host the item is delivered to.
func (it *Item[X]) Host() string { return it.target.host.name }

// Subscriber returns the subscriber the item is delivered for.
func (it *Item[X]) Subscriber() string { return it.target.subscriber }

// Leased reports whether the item is leased.
func (it *Item[X]) Leased() bool { return it.leNsec >= 0 }

// lease marks the item leased until end.
func (it *Item[X]) lease(end time.Time) { it.leSec, it.leNsec = stamp(end) }

// unlease marks the item not leased.
func (it *Item[X]) unlease() { it.leSec, it.leNsec = 0, -1 }

// Delivery returns the item as a store.Delivery, times in UTC.
func (it *Item[X]) Delivery() store.Delivery {
	t := it.target
	d := store.Delivery{
		ID:           it.id,
		PayloadID:    it.payload.ID,
		Inbox:        t.inbox,
		Host:         t.host.name,
		Subscriber:   t.subscriber,
		ActivityType: t.activityType,
		Attempts:     int(it.attempts),
		NotBefore:    unstamp(it.nbSec, it.nbNsec),
		Created:      unstamp(it.crSec, it.crNsec),
		Signer:       t.signer,
	}
	if it.lastError != nil {
		d.LastError = *it.lastError
	}
	return d
}

// setFailure stores the outcome of a failed attempt.
func (it *Item[X]) setFailure(attempts int, notBefore time.Time, lastError string) {
	it.attempts = int32(min(max(attempts, 0), math.MaxInt32))
	it.nbSec, it.nbNsec = stamp(notBefore)
	it.lastError = nil
	if lastError != "" {
		it.lastError = &lastError
	}
}

// Next increments Seq and returns it: the sequence number of a new item.
func (x *Index[X]) Next() uint64 {
	x.Seq++
	return x.Seq
}

// Add queues a new, unleased item for d with sequence number seq and
// returns it. d's payload must be in Payloads and d.ID must not be queued.
// Seq becomes at least seq.
func (x *Index[X]) Add(seq uint64, d *store.Delivery) *Item[X] {
	k := targetKey{d.Host, d.Inbox, d.Subscriber, d.ActivityType, d.Signer}
	t := x.targets[k]
	if t == nil {
		h := x.hosts[d.Host]
		if h == nil {
			h = &host[X]{name: d.Host, idx: -1}
			x.hosts[d.Host] = h
		}
		t = &target[X]{host: h, inbox: d.Inbox, subscriber: d.Subscriber, activityType: d.ActivityType, signer: d.Signer}
		x.targets[k] = t
	}
	t.refs++
	p := x.Payloads[d.PayloadID]
	p.refs++
	it := &Item[X]{id: d.ID, payload: p, target: t, seq: seq, leNsec: -1}
	it.crSec, it.crNsec = stamp(d.Created)
	it.setFailure(d.Attempts, d.NotBefore, d.LastError)
	x.ByID[d.ID] = it
	x.Seq = max(x.Seq, seq)
	x.makeReady(it)
	return it
}

// makeReady puts an unleased item, not in any heap, in its host's ready heap.
func (x *Index[X]) makeReady(it *Item[X]) {
	h := it.target.host
	heap.Push(&h.ready, it)
	x.fixHost(h)
}

// unlink takes an item out of the heap it is in and clears its lease.
func (x *Index[X]) unlink(it *Item[X]) {
	h := it.target.host
	if it.Leased() {
		heap.Remove(&x.leased, int(it.idx))
		it.unlease()
		h.leased--
		return
	}
	heap.Remove(&h.ready, int(it.idx))
	x.fixHost(h)
}

// fixHost restores h's key and place in x.due after its ready heap
// changed.
func (x *Index[X]) fixHost(h *host[X]) {
	if len(h.ready) == 0 {
		if h.idx >= 0 {
			heap.Remove(&x.due, h.idx)
		}
		return
	}
	first := h.ready[0]
	h.key = dueKey{sec: first.nbSec, seq: first.seq, nsec: first.nbNsec}
	switch {
	case h.idx < 0:
		heap.Push(&x.due, h)
	default:
		heap.Fix(&x.due, h.idx)
	}
}

// Remove deletes an item, leased or not, and reports whether its payload
// lost its last reference and was removed from Payloads too.
func (x *Index[X]) Remove(it *Item[X]) (payloadGone bool) {
	x.unlink(it)
	t := it.target
	h := t.host
	delete(x.ByID, it.id)
	if t.refs--; t.refs == 0 {
		delete(x.targets, targetKey{h.name, t.inbox, t.subscriber, t.activityType, t.signer})
	}
	if len(h.ready) == 0 && h.leased == 0 {
		delete(x.hosts, h.name)
	}
	p := it.payload
	if p.refs--; p.refs == 0 {
		delete(x.Payloads, p.ID)
		return true
	}
	return false
}

// Retry stores the outcome of a failed attempt, as store.Store.Retry does:
// attempts, notBefore and lastError, and releases the lease, if any.
func (x *Index[X]) Retry(it *Item[X], attempts int, notBefore time.Time, lastError string) {
	x.unlink(it)
	it.setFailure(attempts, notBefore, lastError)
	x.makeReady(it)
}

// expireLeases makes the items whose lease ended by now ready again.
func (x *Index[X]) expireLeases(now time.Time) {
	nowSec, nowNsec := stamp(now)
	for len(x.leased) > 0 {
		if first := x.leased[0]; first.leSec > nowSec || first.leSec == nowSec && first.leNsec > nowNsec {
			break
		}
		it := heap.Pop(&x.leased).(*Item[X])
		it.unlease()
		it.target.host.leased--
		x.makeReady(it)
	}
}

// Lease leases deliveries as store.Store.Lease does: first it makes the
// items whose lease ended by r.Now ready again, then it leases up to
// r.Limit due ones, oldest NotBefore first and in enqueue order among
// equals, until r.Now + r.Duration, skipping hosts with r.HostCap live
// leases (the index's own: it serves one process). It returns an error,
// and leases nothing, if r.Limit <= 0.
func (x *Index[X]) Lease(r store.LeaseRequest) ([]store.Delivery, error) {
	if r.Limit <= 0 {
		return nil, fmt.Errorf("%s: Lease: Limit %d must be > 0", x.name, r.Limit)
	}
	x.expireLeases(r.Now)
	out := make([]store.Delivery, 0, min(r.Limit, len(x.ByID)))
	end := r.Now.Add(r.Duration)
	nowSec, nowNsec := stamp(r.Now)
	var (
		setAside []*host[X]       // hosts skipped or full, out of x.due
		perHost  map[*host[X]]int // deliveries leased per host, if r.PerHost > 0
	)
	if r.PerHost > 0 {
		perHost = make(map[*host[X]]int)
	}
	for len(out) < r.Limit && len(x.due) > 0 {
		h := x.due[0]
		if k := h.key; k.sec > nowSec || k.sec == nowSec && k.nsec > nowNsec {
			break // the earliest ready delivery of all is not due
		}
		if r.SkipHosts[h.name] || r.HostCap > 0 && h.leased >= r.HostCap {
			heap.Pop(&x.due)
			setAside = append(setAside, h)
			continue
		}
		it := heap.Pop(&h.ready).(*Item[X])
		x.fixHost(h)
		it.lease(end)
		h.leased++
		heap.Push(&x.leased, it)
		d := it.Delivery()
		d.Token = x.newToken(it)
		out = append(out, d)
		if perHost != nil {
			if perHost[h]++; perHost[h] == r.PerHost && h.idx >= 0 {
				heap.Remove(&x.due, h.idx)
				setAside = append(setAside, h)
			}
		}
	}
	for _, h := range setAside {
		x.fixHost(h)
	}
	return out, nil
}

// newToken numbers a new lease of it and returns its token:
// "<epoch>.<number>", both hexadecimal.
func (x *Index[X]) newToken(it *Item[X]) string {
	x.leases++
	if uint32(x.leases) == 0 { // 0 means "never leased"
		x.leases++
	}
	it.leaseNum = uint32(x.leases)
	return strconv.FormatUint(x.epoch, 16) + "." + strconv.FormatUint(x.leases, 16)
}

// Holds reports whether token is still valid for it (see store.LeaseRef):
// empty, or naming its last lease, or (naming a lease of an earlier index,
// before the store was reopened) it has not been leased by this one.
func (x *Index[X]) Holds(it *Item[X], token string) bool {
	if token == "" {
		return true
	}
	epoch, n, ok := strings.Cut(token, ".")
	e, err1 := strconv.ParseUint(epoch, 16, 64)
	num, err2 := strconv.ParseUint(n, 16, 64)
	if !ok || err1 != nil || err2 != nil {
		return false
	}
	if e != x.epoch {
		return it.leaseNum == 0
	}
	return num != 0 && uint32(num) == it.leaseNum
}

// Leased returns the number of leased items.
func (x *Index[X]) Leased() int { return len(x.leased) }

// HostCount returns the number of items, leased or not, to host.
func (x *Index[X]) HostCount(host string) int {
	if h := x.hosts[host]; h != nil {
		return len(h.ready) + h.leased
	}
	return 0
}

// Matching returns the items matching f. With f.Host set it visits that
// host's unleased items and the leased items; otherwise every item.
func (x *Index[X]) Matching(f store.DeliveryFilter) []*Item[X] {
	var out []*Item[X]
	match := func(it *Item[X]) bool {
		return (f.Host == "" || f.Host == it.target.host.name) && (f.Subscriber == "" || f.Subscriber == it.target.subscriber)
	}
	if f.Host != "" {
		h := x.hosts[f.Host]
		if h == nil {
			return nil
		}
		for _, it := range h.ready {
			if match(it) {
				out = append(out, it)
			}
		}
		if h.leased > 0 {
			for _, it := range x.leased {
				if it.target.host == h && match(it) {
					out = append(out, it)
				}
			}
		}
		return out
	}
	for _, it := range x.ByID {
		if match(it) {
			out = append(out, it)
		}
	}
	return out
}

// Count returns how many items match f, as Matching would return, in O(1)
// unless f.Subscriber is set.
func (x *Index[X]) Count(f store.DeliveryFilter) int {
	switch {
	case f.Host == "" && f.Subscriber == "":
		return len(x.ByID)
	case f.Subscriber == "":
		return x.HostCount(f.Host)
	}
	return len(x.Matching(f))
}

// ShedVictims returns the items store.Store.ShedDeliveries removes, without
// removing them: of host's unleased items whose activity type is one of
// types, the oldest (by Created, then NotBefore, then enqueue order), as
// many as host has items beyond keep (a negative keep counting as 0).
func (x *Index[X]) ShedVictims(host string, keep int, types []string) []*Item[X] {
	h := x.hosts[host]
	if h == nil {
		return nil
	}
	excess := len(h.ready) + h.leased - max(keep, 0)
	if excess <= 0 || len(types) == 0 {
		return nil
	}
	var victims []*Item[X]
	for _, it := range h.ready { // the unleased items
		if slices.Contains(types, it.target.activityType) {
			victims = append(victims, it)
		}
	}
	slices.SortFunc(victims, func(a, b *Item[X]) int {
		return cmp.Or(compareStamps(a.crSec, a.crNsec, b.crSec, b.crNsec),
			compareStamps(a.nbSec, a.nbNsec, b.nbSec, b.nbNsec), cmp.Compare(a.seq, b.seq))
	})
	return victims[:min(excess, len(victims))]
}

// itemHeap orders items: leased ones (the lease heap) by lease end, and
// unleased ones (a host's ready heap) by (NotBefore, seq). An item is
// leased while in the lease heap and unleased while in a ready heap, so the
// one type serves both.
type itemHeap[X any] []*Item[X]

func (h itemHeap[X]) Len() int { return len(h) }
func (h itemHeap[X]) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.leNsec >= 0 { // leased
		if a.leSec != b.leSec {
			return a.leSec < b.leSec
		}
		return a.leNsec < b.leNsec
	}
	if a.nbSec != b.nbSec {
		return a.nbSec < b.nbSec
	}
	if a.nbNsec != b.nbNsec {
		return a.nbNsec < b.nbNsec
	}
	return a.seq < b.seq
}
func (h itemHeap[X]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j)
}
func (h *itemHeap[X]) Push(x any) {
	it := x.(*Item[X])
	it.idx = int32(len(*h))
	*h = append(*h, it)
}
func (h *itemHeap[X]) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.idx = -1
	return it
}

// hostHeap orders hosts with ready items by their first ready item.
type hostHeap[X any] []*host[X]

func (h hostHeap[X]) Len() int           { return len(h) }
func (h hostHeap[X]) Less(i, j int) bool { return h[i].key.before(h[j].key) }
func (h hostHeap[X]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *hostHeap[X]) Push(x any) {
	hq := x.(*host[X])
	hq.idx = len(*h)
	*h = append(*h, hq)
}
func (h *hostHeap[X]) Pop() any {
	old := *h
	hq := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	hq.idx = -1
	return hq
}
