package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

func testQueue(t *testing.T, newStore factory) {
	const (
		minute = time.Minute
		hour   = time.Hour
		a, b   = "a.example", "b.example"
		c      = "c.example:8443"
	)
	far := at(1000 * hour) // after every lease the subtests take

	subtest(t, newStore, "Enqueue", func(t *testing.T, s store.Store) {
		body := append([]byte(`{"type":"Create"}`), 0, 0xff) // bodies are bytes
		d1 := store.Delivery{
			ID:           "d1",
			PayloadID:    "p1",
			Inbox:        "https://a.example/inbox",
			Host:         a,
			Subscriber:   "https://a.example/actor",
			ActivityType: "Create",
			NotBefore:    t0,
			Created:      at(-minute),
		}
		d2 := store.Delivery{ // every field set, as a retried delivery has
			ID:           "d2",
			PayloadID:    "p1",
			Inbox:        "https://b.example/users/bob/inbox",
			Host:         b,
			ActivityType: "Delete",
			Attempts:     2,
			NotBefore:    at(time.Second),
			LastError:    "HTTP 502",
			Created:      t0,
			Signer:       "https://relay.example/tag/cats",
		}
		enqueue(t, s, []store.Payload{{ID: "p1", Body: body}}, d1, d2)
		assertPayload(t, s, "p1", body)
		assert.Equal(t, 2, count(t, s, store.DeliveryFilter{}))
		got := lease(t, s, at(time.Second), 10, minute)
		assertDeliveries(t, []store.Delivery{d1, d2}, got, "Lease returns the deliveries as enqueued")

		// Deliveries may refer to a payload stored by an earlier Enqueue.
		d3 := delivery("d3", "p1", c, t0)
		enqueue(t, s, nil, d3)
		assertDeliveries(t, []store.Delivery{d3}, lease(t, s, at(time.Second), 10, minute))
	})

	subtest(t, newStore, "EnqueueInvalid", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("p0")}, delivery("d0", "p0", a, t0))
		for name, deliveries := range map[string][]store.Delivery{
			"unknown payload": {delivery("d1", "p1", a, t0), delivery("d2", "missing", b, t0)},
			"empty ID":        {delivery("d1", "p1", a, t0), delivery("", "p1", b, t0)},
		} {
			err := s.Enqueue(ctx, []store.Payload{payload("p1")}, deliveries)
			assert.Error(t, err, name)
			assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}), "%s: Enqueue stored deliveries", name)
			assertNoPayload(t, s, "p1")
		}
		assert.Equal(t, []string{"d0"}, leaseIDs(t, s, far, 10, minute), "failed Enqueue changed the queue")
		assertPayload(t, s, "p0", payload("p0").Body)
	})

	subtest(t, newStore, "EnqueueQueued", func(t *testing.T, s store.Store) {
		// Enqueueing an ID that is already queued leaves it unchanged, and a
		// stored payload keeps its body.
		d1 := delivery("d1", "p1", a, t0)
		enqueue(t, s, []store.Payload{payload("p1")}, d1)
		require.Equal(t, []string{"d1"}, leaseIDs(t, s, t0, 10, hour))
		retried := d1
		retried.Attempts, retried.NotBefore, retried.LastError = 3, at(10*minute), "timeout"
		require.NoError(t, s.Retry(t.Context(), retried))

		again := d1
		again.Inbox, again.ActivityType, again.NotBefore = "https://a.example/other", "Announce", t0
		again.PayloadID = "p2"
		enqueue(t, s, []store.Payload{{ID: "p1", Body: []byte("new body")}, payload("p2")}, again)
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}))
		assertPayload(t, s, "p1", payload("p1").Body)
		assert.Empty(t, leaseIDs(t, s, at(5*minute), 10, hour), "Enqueue reset NotBefore of a queued delivery")
		assertDeliveries(t, []store.Delivery{retried}, lease(t, s, at(10*minute), 10, hour),
			"Enqueue changed a queued delivery")

		// ... nor does it release a lease.
		enqueue(t, s, nil, d1)
		assert.Empty(t, leaseIDs(t, s, at(11*minute), 10, hour), "Enqueue released a lease")
	})

	subtest(t, newStore, "PayloadKeepsBody", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{{ID: "p", Body: []byte("A")}}, delivery("d1", "p", a, t0))
		enqueue(t, s, []store.Payload{{ID: "p", Body: []byte("B")}}, delivery("d2", "p", b, t0))
		assertPayload(t, s, "p", []byte("A"))
		require.NoError(t, s.Complete(ctx, store.IDs("d1")...))
		assertPayload(t, s, "p", []byte("A"))
		require.NoError(t, s.Complete(ctx, store.IDs("d2")...))
		assertNoPayload(t, s, "p")
		// Once reclaimed, the ID may be stored anew.
		enqueue(t, s, []store.Payload{{ID: "p", Body: []byte("C")}}, delivery("d3", "p", a, t0))
		assertPayload(t, s, "p", []byte("C"))
	})

	subtest(t, newStore, "LeaseEmpty", func(t *testing.T, s store.Store) {
		assert.Empty(t, lease(t, s, far, 10, minute))
	})

	subtest(t, newStore, "LeaseOrder", func(t *testing.T, s store.Store) {
		// Deliveries to several hosts, enqueued out of order.
		var ds []store.Delivery
		for _, x := range []struct {
			id   string
			host string
			ms   int
		}{
			{"a5", a, 5000}, {"b1", b, 1000}, {"c7", c, 7000}, {"a3", a, 3000}, {"a7", a, 7001},
			{"c2", c, 2000}, {"b6", b, 6000}, {"b4", b, 4000}, {"c0", c, 0}, {"b7", b, 6999},
		} {
			ds = append(ds, delivery(x.id, "p", x.host, at(time.Duration(x.ms)*time.Millisecond)))
		}
		enqueue(t, s, []store.Payload{payload("p")}, ds...)
		assert.Equal(t, []string{"c0", "b1", "c2"}, leaseIDs(t, s, far, 3, hour),
			"Lease must return the oldest NotBefore first, across hosts")
		assert.Equal(t, []string{"a3", "b4", "a5", "b6", "b7", "c7", "a7"}, leaseIDs(t, s, far, 100, hour))
	})

	subtest(t, newStore, "LeaseLimit", func(t *testing.T, s store.Store) {
		var ds []store.Delivery
		for i, id := range []string{"d0", "d1", "d2", "d3", "d4"} {
			ds = append(ds, delivery(id, "p", a, at(time.Duration(i)*time.Second)))
		}
		enqueue(t, s, []store.Payload{payload("p")}, ds...)
		assert.Equal(t, []string{"d0", "d1"}, leaseIDs(t, s, far, 2, hour))
		assert.Equal(t, []string{"d2", "d3"}, leaseIDs(t, s, far, 2, hour))
		assert.Equal(t, []string{"d4"}, leaseIDs(t, s, far, 2, hour))
		assert.Empty(t, leaseIDs(t, s, far, 2, hour))
	})

	subtest(t, newStore, "LeaseInvalidLimit", func(t *testing.T, s store.Store) {
		// Limit must be > 0: a store may fail or return nothing, but must
		// not lease anything.
		enqueue(t, s, []store.Payload{payload("p")}, delivery("d1", "p", a, t0))
		for _, limit := range []int{0, -1} {
			got, err := s.Lease(t.Context(), store.LeaseRequest{Now: t0, Limit: limit, Duration: hour})
			if err == nil {
				assert.Empty(t, got, "Lease with Limit %d", limit)
			}
		}
		assert.Equal(t, []string{"d1"}, leaseIDs(t, s, t0, 10, hour), "Lease with Limit <= 0 leased something")
	})

	subtest(t, newStore, "LeaseNotDue", func(t *testing.T, s store.Store) {
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("later", "p", a, at(minute)), delivery("now", "p", b, t0))
		assert.Equal(t, []string{"now"}, leaseIDs(t, s, t0, 10, hour), "only due deliveries")
		assert.Empty(t, leaseIDs(t, s, at(minute-time.Second), 10, hour), "leased before NotBefore")
		assert.Equal(t, []string{"later"}, leaseIDs(t, s, at(minute), 10, hour), "NotBefore <= Now is due")
	})

	subtest(t, newStore, "LeaseDuration", func(t *testing.T, s store.Store) {
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("d1", "p", a, t0), delivery("d2", "p", a, at(time.Second)))
		require.Equal(t, []string{"d1"}, leaseIDs(t, s, at(time.Second), 1, minute))
		assert.Equal(t, []string{"d2"}, leaseIDs(t, s, at(30*time.Second), 10, minute),
			"a leased delivery was leased again within its lease")
		assert.Empty(t, leaseIDs(t, s, at(59*time.Second), 10, minute), "leased again within its lease")
		// d1's lease ended at 1m01s and d2's at 1m30s. Leases that ended
		// keep their place in NotBefore order.
		assert.Equal(t, []string{"d1"}, leaseIDs(t, s, at(2*minute), 1, minute),
			"a delivery whose lease ended is due again, in NotBefore order")
		assert.Equal(t, []string{"d2"}, leaseIDs(t, s, at(2*minute), 10, minute))
		assert.Empty(t, leaseIDs(t, s, at(2*minute+30*time.Second), 10, minute))
		assert.Equal(t, []string{"d1", "d2"}, leaseIDs(t, s, at(4*minute), 10, minute))
	})

	subtest(t, newStore, "LeaseExpiredOrder", func(t *testing.T, s store.Store) {
		// A delivery whose lease ended sorts by its NotBefore, not by the
		// end of its lease.
		enqueue(t, s, []store.Payload{payload("p")}, delivery("old", "p", a, t0))
		require.Equal(t, []string{"old"}, leaseIDs(t, s, t0, 10, hour))
		enqueue(t, s, nil, delivery("new", "p", b, at(minute)))
		assert.Equal(t, []string{"old"}, leaseIDs(t, s, at(2*hour), 1, hour))
	})

	subtest(t, newStore, "LeaseSkipHosts", func(t *testing.T, s store.Store) {
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("a1", "p", a, t0), delivery("a2", "p", a, at(time.Second)),
			delivery("b1", "p", b, at(2*time.Second)),
			delivery("c1", "p", c, at(3*time.Second)), delivery("c2", "p", c, at(4*time.Second)))
		assert.Equal(t, []string{"c1", "c2"}, leaseIDs(t, s, far, 10, hour, a, b), "SkipHosts a, b")
		assert.Equal(t, []string{"b1"}, leaseIDs(t, s, far, 10, hour, a), "SkipHosts a")
		got, err := s.Lease(t.Context(), store.LeaseRequest{
			Now: far, Limit: 10, Duration: hour, SkipHosts: map[string]bool{a: false},
		})
		require.NoError(t, err)
		assert.Equal(t, []string{"a1", "a2"}, ids(got), "SkipHosts entries set to false do not skip")
	})

	subtest(t, newStore, "LeasePerHost", func(t *testing.T, s store.Store) {
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("a0", "p", a, t0), delivery("a1", "p", a, at(1*time.Second)),
			delivery("a2", "p", a, at(2*time.Second)), delivery("a3", "p", a, at(3*time.Second)),
			delivery("b4", "p", b, at(4*time.Second)), delivery("b5", "p", b, at(5*time.Second)),
			delivery("c6", "p", c, at(6*time.Second)))
		leasePH := func(limit, perHost int) []string {
			got, err := s.Lease(t.Context(), store.LeaseRequest{Now: far, Limit: limit, Duration: hour, PerHost: perHost})
			require.NoError(t, err)
			return ids(got)
		}
		assert.Equal(t, []string{"a0", "b4", "c6"}, leasePH(10, 1), "PerHost 1")
		assert.Equal(t, []string{"a1", "a2"}, leasePH(2, 2), "PerHost 2, Limit 2")
		assert.Equal(t, []string{"a3", "b5"}, leasePH(10, 2), "PerHost 2")
		assert.Empty(t, leasePH(10, 2))
	})

	subtest(t, newStore, "LeaseHostCap", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("a0", "p", a, t0), delivery("a1", "p", a, at(1*time.Second)),
			delivery("a2", "p", a, at(2*time.Second)), delivery("a3", "p", a, at(3*time.Second)),
			delivery("a4", "p", a, at(4*time.Second)),
			delivery("b5", "p", b, at(5*time.Second)), delivery("b6", "p", b, at(6*time.Second)),
			delivery("c7", "p", c, at(7*time.Second)))
		leaseCap := func(now time.Time, limit, perHost, hostCap int) []store.Delivery {
			got, err := s.Lease(ctx, store.LeaseRequest{Now: now, Limit: limit, Duration: hour, PerHost: perHost, HostCap: hostCap})
			require.NoError(t, err)
			return got
		}
		got := leaseCap(far, 10, 0, 2)
		require.Equal(t, []string{"a0", "a1", "b5", "b6", "c7"}, ids(got), "HostCap 2: two per host")
		assert.Empty(t, leaseCap(far, 10, 0, 2), "hosts a and b have 2 live leases")

		require.NoError(t, s.Complete(ctx, got[0].Ref())) // a0
		assert.Equal(t, []string{"a2"}, ids(leaseCap(far, 10, 0, 2)), "a completed delivery frees its host's place")
		b5 := got[2]
		b5.Attempts++
		require.NoError(t, s.Retry(ctx, b5))
		assert.Equal(t, []string{"b5"}, ids(leaseCap(far, 10, 0, 2)), "a retried delivery frees its host's place")

		assert.Equal(t, []string{"a3"}, ids(leaseCap(far, 10, 1, 4)), "PerHost 1 applies under HostCap 4")
		assert.Equal(t, []string{"a4"}, ids(leaseCap(far, 10, 0, 4)), "the leases of every call count")
		assert.Empty(t, leaseCap(far, 10, 0, 4))

		assert.Equal(t, []string{"a1", "a2", "b5", "b6", "c7"}, ids(leaseCap(far.Add(2*hour), 10, 0, 2)),
			"leases that ran out do not count")
		assert.Equal(t, []string{"a3"}, ids(leaseCap(far.Add(2*hour), 10, 0, 3)))
	})

	subtest(t, newStore, "GetPayloadMissing", func(t *testing.T, s store.Store) {
		_, err := s.GetPayload(t.Context(), "missing")
		assert.ErrorIs(t, err, store.ErrNotFound)
	})

	subtest(t, newStore, "Complete", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("shared"), payload("own")},
			delivery("d1", "shared", a, t0), delivery("d2", "shared", b, at(time.Second)),
			delivery("d3", "own", c, at(2*time.Second)))
		require.Equal(t, []string{"d1"}, leaseIDs(t, s, t0, 1, minute))

		require.NoError(t, s.Complete(ctx, store.IDs("d1")...), "Complete of a leased delivery")
		assert.Equal(t, 2, count(t, s, store.DeliveryFilter{}))
		assertPayload(t, s, "shared", payload("shared").Body)
		require.NoError(t, s.Complete(ctx, store.IDs("d2")...), "Complete of an unleased delivery")
		assertNoPayload(t, s, "shared")
		assertPayload(t, s, "own", payload("own").Body)

		assert.NoError(t, s.Complete(ctx, store.IDs("d2")...), "Complete of a completed delivery")
		assert.NoError(t, s.Complete(ctx, store.IDs("never")...), "Complete of an absent delivery")
		assert.Equal(t, []string{"d3"}, leaseIDs(t, s, far, 10, minute), "completed deliveries were leased")
		require.NoError(t, s.Complete(ctx, store.IDs("d3")...))
		assertNoPayload(t, s, "own")
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{}))
	})

	subtest(t, newStore, "Retry", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		d := delivery("d1", "p", a, t0)
		enqueue(t, s, []store.Payload{payload("p")}, d)
		require.Len(t, lease(t, s, t0, 10, hour), 1)

		// Retry stores Attempts, NotBefore and LastError only.
		arg := d
		arg.Attempts, arg.NotBefore, arg.LastError = 1, at(5*minute), "timeout"
		arg.Inbox, arg.Host, arg.PayloadID, arg.ActivityType = "https://x.example/inbox", "x.example", "x", "Announce"
		require.NoError(t, s.Retry(ctx, arg))
		want := d
		want.Attempts, want.NotBefore, want.LastError = 1, at(5*minute), "timeout"

		assert.Empty(t, leaseIDs(t, s, at(5*minute-time.Second), 10, hour), "retried delivery due before NotBefore")
		// The hour-long lease would still run: Retry released it.
		assertDeliveries(t, []store.Delivery{want}, lease(t, s, at(5*minute), 10, hour), "Lease after Retry")
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{Host: a}), "Retry moved the delivery")

		// A later Retry replaces the fields again, LastError included.
		arg = want
		arg.Attempts, arg.NotBefore, arg.LastError = 2, at(6*minute), ""
		require.NoError(t, s.Retry(ctx, arg))
		assertDeliveries(t, []store.Delivery{arg}, lease(t, s, at(6*minute), 10, hour))
	})

	subtest(t, newStore, "RetryLater", func(t *testing.T, s store.Store) {
		// A delivery retried later no longer holds its place.
		enqueue(t, s, []store.Payload{payload("p")},
			delivery("d1", "p", a, t0), delivery("d2", "p", a, at(minute)), delivery("d3", "p", b, at(2*minute)))
		require.Equal(t, []string{"d1"}, leaseIDs(t, s, t0, 1, hour))
		d1 := delivery("d1", "p", a, at(hour))
		require.NoError(t, s.Retry(t.Context(), d1))
		assert.Equal(t, []string{"d2", "d3"}, leaseIDs(t, s, at(3*minute), 10, hour))
		assert.Equal(t, []string{"d1"}, leaseIDs(t, s, at(hour), 10, hour))
	})

	subtest(t, newStore, "RetryEarlier", func(t *testing.T, s store.Store) {
		// Retry makes a delivery due at NotBefore even if that is earlier
		// than before, and even if it is already past.
		enqueue(t, s, []store.Payload{payload("p")}, delivery("d1", "p", a, at(hour)), delivery("d2", "p", a, at(2*hour)))
		d1 := delivery("d1", "p", a, t0)
		require.NoError(t, s.Retry(t.Context(), d1))
		assert.Equal(t, []string{"d1"}, leaseIDs(t, s, at(minute), 10, hour))
	})

	subtest(t, newStore, "RetryMissing", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		err := s.Retry(ctx, delivery("never", "p", a, t0))
		assert.ErrorIs(t, err, store.ErrNotFound, "Retry of an absent delivery")

		enqueue(t, s, []store.Payload{payload("p")}, delivery("d1", "p", a, t0))
		require.NoError(t, s.Complete(ctx, store.IDs("d1")...))
		err = s.Retry(ctx, delivery("d1", "p", a, t0))
		assert.ErrorIs(t, err, store.ErrNotFound, "Retry of a completed delivery")
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{}), "Retry brought a delivery back")
		assert.Empty(t, leaseIDs(t, s, far, 10, hour))
	})

	subtest(t, newStore, "DropByHost", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("shared"), payload("own")},
			delivery("a1", "shared", a, t0), delivery("a2", "own", a, at(time.Second)),
			delivery("b1", "shared", b, at(2*time.Second)))
		require.Equal(t, []string{"a1"}, leaseIDs(t, s, t0, 1, minute))

		n, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: a})
		require.NoError(t, err)
		assert.Equal(t, 2, n, "DropDeliveries count, leased deliveries included")
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{Host: a}))
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}))
		assertNoPayload(t, s, "own")
		assertPayload(t, s, "shared", payload("shared").Body)
		assert.Equal(t, []string{"b1"}, leaseIDs(t, s, far, 10, minute), "dropped deliveries were leased")
		assert.ErrorIs(t, s.Retry(ctx, delivery("a1", "shared", a, t0)), store.ErrNotFound, "Retry of a dropped delivery")

		for _, f := range []store.DeliveryFilter{{Host: a}, {Host: "none.example"}} {
			n, err = s.DropDeliveries(ctx, f)
			require.NoError(t, err)
			assert.Equal(t, 0, n, "DropDeliveries(%+v) matching nothing", f)
		}
		n, err = s.DropDeliveries(ctx, store.DeliveryFilter{Host: b})
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		assertNoPayload(t, s, "shared")
	})

	subtest(t, newStore, "DropBySubscriber", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		s1, s2 := "https://s1.example/actor", "https://s2.example/actor"
		mk := func(id, pid, host, sub string) store.Delivery {
			d := delivery(id, pid, host, t0)
			d.Subscriber = sub
			return d
		}
		enqueue(t, s, []store.Payload{payload("p1"), payload("p2")},
			mk("1a", "p1", a, s1), mk("1b", "p1", b, s1),
			mk("2a", "p2", a, s2), mk("2c", "p2", c, s2), mk("xa", "p2", a, ""))
		require.Len(t, lease(t, s, t0, 1, minute), 1)

		n, err := s.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: s1})
		require.NoError(t, err)
		assert.Equal(t, 2, n)
		assertNoPayload(t, s, "p1")
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{Subscriber: s1}))

		n, err = s.DropDeliveries(ctx, store.DeliveryFilter{Host: a, Subscriber: s2})
		require.NoError(t, err)
		assert.Equal(t, 1, n, "both filter fields must match")
		assertPayload(t, s, "p2", payload("p2").Body)
		assert.Equal(t, []string{"2c", "xa"}, sortedIDs(lease(t, s, far, 10, minute)))
	})

	subtest(t, newStore, "Count", func(t *testing.T, s store.Store) {
		s1, s2 := "https://s1.example/actor", "https://s2.example/actor"
		mk := func(id, host, sub string) store.Delivery {
			d := delivery(id, "p", host, t0)
			d.Subscriber = sub
			return d
		}
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{}), "empty queue")
		enqueue(t, s, []store.Payload{payload("p")},
			mk("1", a, s1), mk("2", a, s1), mk("3", a, s2), mk("4", b, s1), mk("5", c, ""))
		require.Len(t, lease(t, s, t0, 2, minute), 2) // leased deliveries are queued
		for _, tc := range []struct {
			f    store.DeliveryFilter
			want int
		}{
			{store.DeliveryFilter{}, 5},
			{store.DeliveryFilter{Host: a}, 3},
			{store.DeliveryFilter{Host: b}, 1},
			{store.DeliveryFilter{Subscriber: s1}, 3},
			{store.DeliveryFilter{Host: a, Subscriber: s1}, 2},
			{store.DeliveryFilter{Host: b, Subscriber: s2}, 0},
			{store.DeliveryFilter{Host: "none.example"}, 0},
			{store.DeliveryFilter{Subscriber: "https://none.example/actor"}, 0},
		} {
			assert.Equal(t, tc.want, count(t, s, tc.f), "CountDeliveries(%+v)", tc.f)
		}
	})

	subtest(t, newStore, "Shed", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		// Each delivery has its own Subscriber, so that CountDeliveries
		// tells which remain without changing anything.
		mk := func(id, pid, typ string, created, notBefore time.Duration) store.Delivery {
			d := delivery(id, pid, a, at(notBefore))
			d.ActivityType, d.Created, d.Subscriber = typ, at(created), "sub:"+id
			return d
		}
		all := []store.Delivery{
			mk("leased", "p", "Create", 0, 0),
			mk("delete", "p", "Delete", 1*time.Second, 2*time.Second),
			mk("announce", "own", "Announce", 2*time.Second, 10*time.Second),
			mk("create-late", "p", "Create", 3*time.Second, 9*time.Second),
			mk("create-early", "p", "Create", 3*time.Second, 8*time.Second),
			mk("create-last", "p", "Create", 4*time.Second, 1*time.Second),
		}
		enqueue(t, s, []store.Payload{payload("p"), payload("own")}, all...)
		enqueue(t, s, nil, delivery("b1", "p", b, t0), delivery("b2", "p", b, t0), delivery("b3", "p", b, t0))
		require.Equal(t, []string{"leased"}, leaseIDs(t, s, t0, 10, hour, b))
		shed := func(host string, keep int, types ...string) int {
			n, err := s.ShedDeliveries(ctx, host, keep, types)
			require.NoError(t, err)
			return n
		}
		remaining := func() []string {
			var out []string
			for _, d := range all {
				if count(t, s, store.DeliveryFilter{Subscriber: d.Subscriber}) > 0 {
					out = append(out, d.ID)
				}
			}
			return out
		}

		assert.Equal(t, 0, shed(a, 6, "Create", "Announce"), "backlog at keep")
		assert.Equal(t, 0, shed(a, 10, "Create", "Announce"), "backlog below keep")
		assert.Equal(t, 2, shed(a, 4, "Create", "Announce"), "shed down to keep")
		// The oldest by Created, then by NotBefore, skipping the leased
		// Create and the Delete.
		assert.Equal(t, []string{"leased", "delete", "create-late", "create-last"}, remaining())
		assertNoPayload(t, s, "own")

		assert.Equal(t, 0, shed(a, 0, "Announce"), "no delivery of the given types left")
		assert.Equal(t, 0, shed(a, 0), "no types")
		assert.Equal(t, 2, shed(a, 1, "Create"), "only unleased deliveries of the given types")
		assert.Equal(t, []string{"leased", "delete"}, remaining(), "the backlog may stay above keep")
		assert.Equal(t, 0, shed(a, 0, "Create", "Announce"), "a leased delivery is never shed")
		assert.Equal(t, []string{"leased", "delete"}, remaining())

		assert.Equal(t, 3, count(t, s, store.DeliveryFilter{Host: b}), "other hosts are untouched")
		assert.Equal(t, 0, shed("none.example", 0, "Create"), "unknown host")
		assertPayload(t, s, "p", payload("p").Body)
	})

	subtest(t, newStore, "ShedOrder", func(t *testing.T, s store.Store) {
		// Shedding one at a time removes the oldest by Created, then by
		// NotBefore; the order of enqueueing does not matter.
		ctx := t.Context()
		mk := func(id string, created, notBefore time.Duration) store.Delivery {
			d := delivery(id, "p", a, at(notBefore))
			d.Created, d.Subscriber = at(created), "sub:"+id
			return d
		}
		enqueue(t, s, []store.Payload{payload("p")},
			mk("4", 3*time.Second, 2*time.Second), mk("1", 0, 5*time.Second), mk("3", 2*time.Second, 0),
			mk("2", time.Second, 9*time.Second), mk("5", 3*time.Second, 3*time.Second))
		for i, id := range []string{"1", "2", "3", "4", "5"} {
			n, err := s.ShedDeliveries(ctx, a, 4-i, []string{"Create"})
			require.NoError(t, err)
			require.Equal(t, 1, n, "ShedDeliveries(keep %d)", 4-i)
			assert.Equal(t, 0, count(t, s, store.DeliveryFilter{Subscriber: "sub:" + id}), "%q was not shed %dth", id, i+1)
		}
		assertNoPayload(t, s, "p")
	})

	subtest(t, newStore, "Copies", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		body := []byte("original body")
		ds := []store.Delivery{delivery("d1", "p", a, t0)}
		want := ds[0]
		require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p", Body: body}}, ds))
		body[0] = 'X'
		ds[0].Inbox = "https://x.example/inbox"

		got, err := s.GetPayload(ctx, "p")
		require.NoError(t, err)
		require.Equal(t, []byte("original body"), got, "Enqueue retained the payload body")
		got[0] = 'Y'
		assertPayload(t, s, "p", []byte("original body"))

		leased := lease(t, s, t0, 10, minute)
		assertDeliveries(t, []store.Delivery{want}, leased, "Enqueue retained the deliveries slice")
		leased[0].Inbox = "https://y.example/inbox"
		assertDeliveries(t, []store.Delivery{want}, lease(t, s, at(hour), 10, minute), "Lease returned stored deliveries")
	})
}

// sortedIDs returns the sorted IDs of ds.
func sortedIDs(ds []store.Delivery) []string {
	out := ids(ds)
	slices.Sort(out)
	return out
}
