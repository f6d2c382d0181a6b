package memstore

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

var t0 = time.Date(2025, time.March, 14, 15, 9, 26, 0, time.UTC)

func del(id, pid, host string, notBefore time.Time) store.Delivery {
	return store.Delivery{ID: id, PayloadID: pid, Host: host, Inbox: "https://" + host + "/inbox",
		ActivityType: "Create", NotBefore: notBefore, Created: notBefore}
}

func leaseIDs(t *testing.T, s *Store, r store.LeaseRequest) []string {
	t.Helper()
	got, err := s.Lease(t.Context(), r)
	require.NoError(t, err)
	var ids []string
	for _, d := range got {
		ids = append(ids, d.ID)
	}
	return ids
}

func TestLeaseTiesInEnqueueOrder(t *testing.T) {
	ctx := t.Context()
	s := New()
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p"}},
		[]store.Delivery{del("z", "p", "b", t0), del("y", "p", "a", t0), del("x", "p", "c", t0)}))
	require.NoError(t, s.Enqueue(ctx, nil, []store.Delivery{del("w", "p", "a", t0), del("v", "p", "b", t0)}))
	r := store.LeaseRequest{Now: t0, Limit: 10, Duration: time.Minute}
	assert.Equal(t, []string{"z", "y", "x", "w", "v"}, leaseIDs(t, s, r))
	// A retried delivery keeps its place among deliveries due at once.
	for _, id := range []string{"v", "x", "z"} {
		require.NoError(t, s.Retry(ctx, del(id, "p", "", t0)))
	}
	assert.Equal(t, []string{"z", "x", "v"}, leaseIDs(t, s, r))
	checkInvariants(t, s)
}

func TestEnqueueDropsUnreferencedPayloads(t *testing.T) {
	ctx := t.Context()
	s := New()
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p1"}, {ID: "orphan"}}, []store.Delivery{del("d1", "p1", "a", t0)}))
	_, err := s.GetPayload(ctx, "orphan")
	assert.ErrorIs(t, err, store.ErrNotFound, "a payload no delivery refers to is not kept")
	// Re-enqueueing a queued delivery adds no reference to a new payload.
	d1 := del("d1", "p2", "a", t0)
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p2"}}, []store.Delivery{d1}))
	_, err = s.GetPayload(ctx, "p2")
	assert.ErrorIs(t, err, store.ErrNotFound)
	// Within one call, the first delivery with an ID wins.
	require.NoError(t, s.Enqueue(ctx, nil, []store.Delivery{del("d2", "p1", "a", t0), del("d2", "p1", "b", t0)}))
	n, err := s.CountDeliveries(ctx, store.DeliveryFilter{Host: "a"})
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	// An empty payload ID is refused.
	assert.Error(t, s.Enqueue(ctx, []store.Payload{{ID: ""}}, []store.Delivery{del("d3", "", "a", t0)}))
	checkInvariants(t, s)
}

func TestEverythingReclaimed(t *testing.T) {
	ctx := t.Context()
	s := New()
	for i := range 50 {
		pid := fmt.Sprintf("p%d", i)
		var ds []store.Delivery
		for j := range 5 {
			d := del(fmt.Sprintf("%d-%d", i, j), pid, fmt.Sprintf("h%d", j), t0.Add(time.Duration(i)*time.Second))
			d.Subscriber = fmt.Sprintf("s%d", j)
			ds = append(ds, d)
		}
		require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: pid}}, ds))
	}
	_, err := s.Lease(ctx, store.LeaseRequest{Now: t0.Add(time.Hour), Limit: 40, Duration: time.Hour})
	require.NoError(t, err)
	_, err = s.DropDeliveries(ctx, store.DeliveryFilter{Host: "h0"})
	require.NoError(t, err)
	_, err = s.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: "s1"})
	require.NoError(t, err)
	_, err = s.ShedDeliveries(ctx, "h2", 0, []string{"Create"})
	require.NoError(t, err)
	checkInvariants(t, s)
	for id := range s.q.ByID {
		require.NoError(t, s.Complete(ctx, store.IDs(id)...))
	}
	checkInvariants(t, s)
	assert.True(t, s.q.Empty())
	assert.Empty(t, s.q.bySub)
}

func TestMarkSeenReclaimsExpiredMarks(t *testing.T) {
	ctx := t.Context()
	s := New()
	now := t0
	s.now = func() time.Time { return now }
	for i := range 1000 {
		isNew, err := s.MarkSeen(ctx, fmt.Sprint(i), now.Add(time.Duration(i%10+1)*time.Minute))
		require.NoError(t, err)
		require.True(t, isNew)
	}
	// Past or present until: nothing is kept.
	isNew, err := s.MarkSeen(ctx, "past", now)
	require.NoError(t, err)
	assert.True(t, isNew)
	assert.Len(t, s.marks, 1000)

	now = now.Add(5 * time.Minute) // marks of i%10 < 5 expire
	isNew, err = s.MarkSeen(ctx, "new", now.Add(time.Minute))
	require.NoError(t, err)
	assert.True(t, isNew)
	assert.Len(t, s.marks, 501)
	checkInvariants(t, s)

	require.NoError(t, s.ForgetSeen(ctx, "999"))
	require.NoError(t, s.ForgetSeen(ctx, "0")) // expired and reclaimed already
	assert.Len(t, s.marks, 500)
	checkInvariants(t, s)

	now = now.Add(time.Hour)
	_, err = s.MarkSeen(ctx, "last", now)
	require.NoError(t, err)
	assert.Empty(t, s.marks)
	assert.Empty(t, s.markExp)
}

func TestClose(t *testing.T) {
	ctx := t.Context()
	s := New()
	require.NoError(t, s.PutValue(ctx, "k", []byte("v")))
	require.NoError(t, s.Close())
	assert.NoError(t, s.Close(), "Close is idempotent")
	_, err := s.GetValue(ctx, "k")
	assert.ErrorIs(t, err, store.ErrClosed)
	_, err = s.Lease(ctx, store.LeaseRequest{Limit: 0})
	assert.ErrorIs(t, err, store.ErrClosed, "ErrClosed comes before argument errors")
}

func TestLeaseSkipsManyHostsCheaply(t *testing.T) {
	// With many hosts skipped, Lease visits each of them once per call and
	// leaves them due.
	ctx := t.Context()
	s := New()
	var ds []store.Delivery
	skip := make(map[string]bool)
	for i := range 1000 {
		h := fmt.Sprintf("h%d", i)
		ds = append(ds, del(fmt.Sprint(i), "p", h, t0.Add(time.Duration(i)*time.Millisecond)))
		if i < 900 {
			skip[h] = true
		}
	}
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p"}}, ds))
	got := leaseIDs(t, s, store.LeaseRequest{Now: t0.Add(time.Hour), Limit: 5, Duration: time.Minute, SkipHosts: skip})
	assert.Equal(t, []string{"900", "901", "902", "903", "904"}, got)
	assert.Equal(t, 995, s.q.DueHosts(), "skipped hosts are put back")
	checkInvariants(t, s)
}

// TestModel runs random operations against the Store and a naive model of
// the queue, and compares their results and the Store's invariants.
func TestModel(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, 400) })
	}
}

type modelItem struct {
	d        store.Delivery
	seq      int
	leased   bool
	leaseEnd time.Time
}

type model struct {
	items    []*modelItem // in enqueue order
	payloads map[string]string
	seq      int
}

func (m *model) find(id string) int {
	return slices.IndexFunc(m.items, func(it *modelItem) bool { return it.d.ID == id })
}

func (m *model) remove(i int) {
	pid := m.items[i].d.PayloadID
	m.items = slices.Delete(m.items, i, i+1)
	if !slices.ContainsFunc(m.items, func(it *modelItem) bool { return it.d.PayloadID == pid }) {
		delete(m.payloads, pid)
	}
}

func (m *model) enqueue(payloads []store.Payload, ds []store.Delivery) bool {
	for _, p := range payloads {
		if p.ID == "" {
			return false
		}
	}
	for _, d := range ds {
		_, stored := m.payloads[d.PayloadID]
		given := slices.ContainsFunc(payloads, func(p store.Payload) bool { return p.ID == d.PayloadID })
		if d.ID == "" || !stored && !given {
			return false
		}
	}
	var added []string
	for _, p := range payloads {
		if _, ok := m.payloads[p.ID]; !ok {
			m.payloads[p.ID] = string(p.Body)
			added = append(added, p.ID)
		}
	}
	for _, d := range ds {
		if m.find(d.ID) < 0 {
			m.seq++
			m.items = append(m.items, &modelItem{d: d, seq: m.seq})
		}
	}
	for _, pid := range added {
		if !slices.ContainsFunc(m.items, func(it *modelItem) bool { return it.d.PayloadID == pid }) {
			delete(m.payloads, pid)
		}
	}
	return true
}

func (m *model) lease(r store.LeaseRequest) []string {
	var due []*modelItem
	for _, it := range m.items {
		if it.leased && !it.leaseEnd.After(r.Now) {
			it.leased = false
		}
		if !it.leased && !it.d.NotBefore.After(r.Now) && !r.SkipHosts[it.d.Host] {
			due = append(due, it)
		}
	}
	slices.SortStableFunc(due, func(a, b *modelItem) int {
		return cmp.Or(a.d.NotBefore.Compare(b.d.NotBefore), cmp.Compare(a.seq, b.seq))
	})
	perHost := map[string]int{}
	ids := []string{}
	for _, it := range due {
		if len(ids) == r.Limit {
			break
		}
		if r.PerHost > 0 && perHost[it.d.Host] == r.PerHost {
			continue
		}
		perHost[it.d.Host]++
		it.leased, it.leaseEnd = true, r.Now.Add(r.Duration)
		ids = append(ids, it.d.ID)
	}
	return ids
}

func (m *model) shed(host string, keep int, types []string) int {
	var n int
	var victims []*modelItem
	for _, it := range m.items {
		if it.d.Host == host {
			n++
			if !it.leased && slices.Contains(types, it.d.ActivityType) {
				victims = append(victims, it)
			}
		}
	}
	slices.SortFunc(victims, func(a, b *modelItem) int {
		return cmp.Or(a.d.Created.Compare(b.d.Created), a.d.NotBefore.Compare(b.d.NotBefore), cmp.Compare(a.seq, b.seq))
	})
	victims = victims[:max(0, min(n-max(keep, 0), len(victims)))]
	for _, v := range victims {
		m.remove(slices.Index(m.items, v))
	}
	return len(victims)
}

func (m *model) matching(f store.DeliveryFilter) []int {
	var out []int
	for i, it := range m.items {
		if f.Match(&it.d) {
			out = append(out, i)
		}
	}
	return out
}

func runModel(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 1))
	s := New()
	m := &model{payloads: map[string]string{}}
	hosts := []string{"a", "b", "c", "d"}
	subs := []string{"", "s1", "s2"}
	types := []string{"Create", "Announce", "Delete"}
	now := t0
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	randDelivery := func() store.Delivery {
		d := del(fmt.Sprintf("d%d", rng.IntN(30)), fmt.Sprintf("p%d", rng.IntN(6)), pick(hosts), now.Add(sec(rng.IntN(8)-2)))
		d.Subscriber, d.ActivityType = pick(subs), pick(types)
		d.Created = now.Add(sec(-rng.IntN(4)))
		return d
	}
	randFilter := func() store.DeliveryFilter {
		f := store.DeliveryFilter{}
		if rng.IntN(2) == 0 {
			f.Host = pick(hosts)
		}
		if rng.IntN(2) == 0 || f.Host == "" {
			f.Subscriber = pick(subs[1:])
		}
		return f
	}
	for step := range steps {
		var op string
		switch k := rng.IntN(100); {
		case k < 25:
			op = "Enqueue"
			var ps []store.Payload
			for range rng.IntN(3) {
				id := fmt.Sprintf("p%d", rng.IntN(6))
				ps = append(ps, store.Payload{ID: id, Body: []byte(fmt.Sprint(id, step))})
			}
			var ds []store.Delivery
			for range 1 + rng.IntN(4) {
				ds = append(ds, randDelivery())
			}
			ok := m.enqueue(ps, ds)
			err := s.Enqueue(ctx, ps, ds)
			require.Equal(t, ok, err == nil, "step %d: Enqueue(%v, %v): %v", step, ps, ds, err)
		case k < 50:
			op = "Lease"
			now = now.Add(sec(rng.IntN(3)))
			r := store.LeaseRequest{Now: now, Limit: 1 + rng.IntN(5), Duration: sec(rng.IntN(6))}
			if rng.IntN(2) == 0 {
				r.PerHost = rng.IntN(3)
			}
			if rng.IntN(2) == 0 {
				r.SkipHosts = map[string]bool{pick(hosts): true, pick(hosts): rng.IntN(2) == 0}
			}
			want := m.lease(r)
			got := leaseIDs(t, s, r)
			require.Equal(t, want, append([]string{}, got...), "step %d: Lease(%+v)", step, r)
		case k < 62:
			op = "Complete"
			id := fmt.Sprintf("d%d", rng.IntN(30))
			if i := m.find(id); i >= 0 {
				m.remove(i)
			}
			require.NoError(t, s.Complete(ctx, store.IDs(id)...))
		case k < 77:
			op = "Retry"
			d := randDelivery()
			d.Attempts, d.LastError = rng.IntN(5), fmt.Sprint("error ", step)
			err := s.Retry(ctx, d)
			if i := m.find(d.ID); i >= 0 {
				require.NoError(t, err)
				it := m.items[i]
				it.leased = false
				it.d.Attempts, it.d.NotBefore, it.d.LastError = d.Attempts, d.NotBefore, d.LastError
			} else {
				require.ErrorIs(t, err, store.ErrNotFound)
			}
		case k < 82:
			op = "Drop"
			f := randFilter()
			idx := m.matching(f)
			for i := len(idx) - 1; i >= 0; i-- {
				m.remove(idx[i])
			}
			n, err := s.DropDeliveries(ctx, f)
			require.NoError(t, err)
			require.Equal(t, len(idx), n, "step %d: DropDeliveries(%+v)", step, f)
		case k < 90:
			op = "Shed"
			host := pick(hosts)
			keep := len(m.matching(store.DeliveryFilter{Host: host})) - 1 - rng.IntN(3) // may be < 0
			ts := []string{pick(types), pick(types)}
			want := m.shed(host, keep, ts)
			n, err := s.ShedDeliveries(ctx, host, keep, ts)
			require.NoError(t, err)
			require.Equal(t, want, n, "step %d: ShedDeliveries(%q, %d, %v)", step, host, keep, ts)
		default:
			op = "Count"
			f := randFilter()
			n, err := s.CountDeliveries(ctx, f)
			require.NoError(t, err)
			require.Equal(t, len(m.matching(f)), n, "step %d: CountDeliveries(%+v)", step, f)
		}
		checkInvariants(t, s)
		// Compare the whole state (without testify: this runs very often).
		if len(s.q.ByID) != len(m.items) {
			t.Fatalf("step %d (%s): %d deliveries, want %d", step, op, len(s.q.ByID), len(m.items))
		}
		for _, it := range m.items {
			// The model clears expired leases only in Lease, as the store does.
			got := s.q.ByID[it.d.ID]
			if got == nil || got.Delivery() != it.d || got.Leased() != it.leased {
				t.Fatalf("step %d (%s): delivery %s: got %+v, want %+v (leased %v)", step, op, it.d.ID, got, it.d, it.leased)
			}
		}
		if len(s.q.Payloads) != len(m.payloads) {
			t.Fatalf("step %d (%s): %d payloads, want %d", step, op, len(s.q.Payloads), len(m.payloads))
		}
		for id, body := range m.payloads {
			if p := s.q.Payloads[id]; p == nil || string(p.Body) != body {
				t.Fatalf("step %d (%s): payload %s: got %+v, want %q", step, op, id, p, body)
			}
		}
	}
}

// checkInvariants checks the consistency of the Store's indexes and heaps.
// It runs after every step of TestModel, so it avoids testify's costly
// assertions.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Fatalf("invariant: "+format, args...)
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	q := &s.q
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
	bySub := map[string]int{}
	for id, it := range q.ByID {
		if sub := it.Subscriber(); sub != "" {
			bySub[sub]++
			l := q.bySub[sub]
			check(l != nil && int(it.Ext) < len(*l) && (*l)[it.Ext] == it, "item %s: subscriber list index", id)
		}
	}
	check(len(q.bySub) == len(bySub), "%d subscriber lists, %d subscribers", len(q.bySub), len(bySub))
	for sub, l := range q.bySub {
		check(len(*l) == bySub[sub], "subscriber %s: list of %d, %d items", sub, len(*l), bySub[sub])
	}
	check(len(s.markExp) == len(s.marks), "%d marks, %d in the expiry heap", len(s.marks), len(s.markExp))
	for id, m := range s.marks {
		check(id == m.id && s.markExp[m.idx] == m, "mark %s: expiry heap index", id)
	}
	for i := 1; i < len(s.markExp); i++ {
		check(!s.markExp[i].until.Before(s.markExp[(i-1)/2].until), "mark heap order")
	}
}
