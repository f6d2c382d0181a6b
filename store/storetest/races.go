package storetest

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// testRaces calls methods that change the same records from several
// goroutines at once and checks the invariants between them: payload
// reference counts, idempotent Enqueue, whole subscribers. Like the
// Concurrency group it is meant to be run with -race.
func testRaces(t *testing.T, newStore factory) {
	subtest(t, newStore, "PayloadsDropShedComplete", func(t *testing.T, s store.Store) {
		// Each payload is shared by one delivery to each of five hosts.
		// Concurrently, the deliveries to h0 are completed one by one,
		// those to h1 dropped one by one and those to h2 shed one by one,
		// while readers check that payloads with a delivery left stay
		// readable. Deliveries to h3 exist for even payloads only, and
		// those to h4 are leased, so never shed nor dropped here.
		ctx := t.Context()
		const payloads = 30
		host := func(h int) string { return fmt.Sprintf("h%d.example", h) }
		var (
			ps []store.Payload
			ds []store.Delivery
		)
		for p := range payloads {
			pid := fmt.Sprintf("p%02d", p)
			ps = append(ps, payload(pid))
			for h := range 5 {
				if h == 3 && p%2 == 1 {
					continue
				}
				d := delivery(fmt.Sprintf("%s-h%d", pid, h), pid, host(h), at(time.Duration(p)*time.Second))
				d.Subscriber = fmt.Sprintf("https://%s/actor/%d", host(h), p) // one per delivery, for DropDeliveries
				ds = append(ds, d)
			}
		}
		enqueue(t, s, ps, ds...)
		leasedH0 := lease(t, s, at(time.Hour), payloads, 24*time.Hour, host(1), host(2), host(3), host(4))
		require.Len(t, leasedH0, payloads)
		leasedH4 := lease(t, s, at(time.Hour), payloads, 24*time.Hour, host(1), host(2), host(3))
		require.Len(t, leasedH4, payloads)

		var stop sync.WaitGroup
		stop.Add(3)
		readersDone := make(chan struct{})
		go func() { stop.Wait(); close(readersDone) }()
		parallel(5, func(w int) {
			switch w {
			case 0:
				defer stop.Done()
				for _, d := range leasedH0 {
					assert.NoError(t, s.Complete(ctx, d.Ref()))
				}
			case 1:
				defer stop.Done()
				for p := range payloads {
					n, err := s.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: fmt.Sprintf("https://%s/actor/%d", host(1), p)})
					assert.NoError(t, err)
					assert.Equal(t, 1, n, "DropDeliveries of one delivery")
				}
			case 2:
				defer stop.Done()
				for keep := payloads - 1; keep >= 0; keep-- {
					n, err := s.ShedDeliveries(ctx, host(2), keep, []string{"Create"})
					assert.NoError(t, err)
					assert.Equal(t, 1, n, "ShedDeliveries to keep %d", keep)
				}
			default: // every payload has a delivery to h4 left: none may go
				for {
					for p := range payloads {
						_, err := s.GetPayload(ctx, fmt.Sprintf("p%02d", p))
						assert.NoError(t, err, "payload of queued deliveries reclaimed")
					}
					select {
					case <-readersDone:
						return
					default:
					}
				}
			}
		})
		for h := range 3 {
			assert.Zero(t, count(t, s, store.DeliveryFilter{Host: host(h)}), "deliveries left to %s", host(h))
		}
		// Now only h3 (even payloads) and h4 (every payload) refer to them.
		for _, d := range leasedH4 {
			require.NoError(t, s.Complete(ctx, d.Ref()))
		}
		for p := range payloads {
			pid := fmt.Sprintf("p%02d", p)
			if p%2 == 0 {
				assertPayload(t, s, pid, payload(pid).Body)
			} else {
				assertNoPayload(t, s, pid)
			}
		}
		n, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: host(3)})
		require.NoError(t, err)
		assert.Equal(t, payloads/2, n)
		for p := range payloads {
			assertNoPayload(t, s, fmt.Sprintf("p%02d", p))
		}
		assert.Zero(t, count(t, s, store.DeliveryFilter{}))
	})

	subtest(t, newStore, "EnqueueSameIDs", func(t *testing.T, s store.Store) {
		// Enqueue is idempotent by delivery ID, also between concurrent
		// callers: each ID is queued once, and the payload is reclaimed
		// with the last of them.
		ctx := t.Context()
		const workers, fanout, rounds = 8, 10, 5
		for r := range rounds {
			pid := fmt.Sprintf("p%d", r)
			var ds []store.Delivery
			for i := range fanout {
				ds = append(ds, delivery(fmt.Sprintf("%s-d%d", pid, i), pid, fmt.Sprintf("h%d.example", i), at(time.Duration(r)*time.Minute)))
			}
			parallel(workers, func(int) {
				assert.NoError(t, s.Enqueue(ctx, []store.Payload{payload(pid)}, ds))
			})
			assert.Equal(t, fanout, count(t, s, store.DeliveryFilter{}), "deliveries queued by %d concurrent Enqueues of the same IDs", workers)
			got := lease(t, s, at(time.Hour), 10*fanout, time.Hour)
			assert.ElementsMatch(t, ids(ds), ids(got), "each ID leased once")
			for _, d := range got[:len(got)-1] {
				require.NoError(t, s.Complete(ctx, d.Ref()))
			}
			assertPayload(t, s, pid, payload(pid).Body)
			require.NoError(t, s.Complete(ctx, got[len(got)-1].Ref()))
			assertNoPayload(t, s, pid)
			assert.Zero(t, count(t, s, store.DeliveryFilter{}))
		}
	})

	subtest(t, newStore, "DeleteUpdateSubscriber", func(t *testing.T, s store.Store) {
		// While one goroutine deletes a subscriber over and over, others
		// update it: every version read is whole (one update's fields, not
		// a mix), and the host index agrees with the record.
		ctx := t.Context()
		const actor, host = "https://a.example/actor", "a.example"
		const updaters, updates = 4, 50
		whole := func(sub store.Subscriber, what string) {
			assert.Equal(t, actor, sub.ActorID, what)
			assert.Equal(t, host, sub.Host, what)
			assert.Equal(t, store.StateAccepted, sub.State, what)
			assert.Equal(t, strconv.FormatInt(sub.Delivered, 10), sub.Note, "%s: Note and Delivered from different updates", what)
			assert.Equal(t, sub.Delivered, sub.Failed, "%s: Failed and Delivered from different updates", what)
			assert.Equal(t, sub.Note, sub.LastError, "%s: Note and LastError from different updates", what)
		}
		var done sync.WaitGroup
		done.Add(updaters)
		finished := make(chan struct{})
		go func() { done.Wait(); close(finished) }()
		parallel(updaters+2, func(w int) {
			switch {
			case w < updaters:
				defer done.Done()
				for i := range updates {
					n := int64(w*updates + i + 1)
					got, err := s.UpdateSubscriber(ctx, actor, func(p *store.Subscriber, found bool) error {
						if found {
							whole(*p, "fn's copy")
						}
						p.Host, p.State = host, store.StateAccepted
						p.Delivered, p.Failed = n, n
						p.Note = strconv.FormatInt(n, 10)
						p.LastError = p.Note
						return nil
					})
					if assert.NoError(t, err) {
						whole(got, "UpdateSubscriber's result")
						assert.Equal(t, n, got.Delivered, "UpdateSubscriber returned another update")
					}
				}
			case w == updaters:
				for {
					assert.NoError(t, s.DeleteSubscriber(ctx, actor))
					select {
					case <-finished:
						return
					default:
					}
				}
			default:
				for {
					sub, err := s.GetSubscriber(ctx, actor)
					if errors.Is(err, store.ErrNotFound) {
						// deleted
					} else if assert.NoError(t, err) {
						whole(sub, "GetSubscriber")
					}
					subs, err := s.ListSubscribers(ctx, store.SubscriberFilter{Host: host})
					if assert.NoError(t, err) && assert.LessOrEqual(t, len(subs), 1) && len(subs) == 1 {
						whole(subs[0], "ListSubscribers")
					}
					select {
					case <-finished:
						return
					default:
					}
				}
			}
		})
		sub, err := s.GetSubscriber(ctx, actor)
		subs, lerr := s.ListSubscribers(ctx, store.SubscriberFilter{Host: host})
		require.NoError(t, lerr)
		all, lerr := s.ListSubscribers(ctx, store.SubscriberFilter{})
		require.NoError(t, lerr)
		if errors.Is(err, store.ErrNotFound) {
			assert.Empty(t, subs, "host index lists a deleted subscriber")
			assert.Empty(t, all, "ListSubscribers lists a deleted subscriber")
		} else if assert.NoError(t, err) {
			whole(sub, "final GetSubscriber")
			if assert.Len(t, subs, 1, "host index") {
				assertSubscriber(t, sub, subs[0])
			}
			assert.Len(t, all, 1)
		}
	})

	subtest(t, newStore, "TakeoverLosesTheLease", func(t *testing.T, s store.Store) {
		// A holder whose lease expired and was leased by another caller
		// can neither complete nor retry the delivery; the new holder can.
		ctx := t.Context()
		d := delivery("d1", "p1", "a.example", t0)
		enqueue(t, s, []store.Payload{payload("p1")}, d)
		first := lease(t, s, t0, 10, time.Minute)
		require.Equal(t, []string{"d1"}, ids(first))
		second := lease(t, s, at(2*time.Minute), 10, time.Minute)
		require.Equal(t, []string{"d1"}, ids(second), "an expired lease is leased again")
		require.NotEqual(t, first[0].Token, second[0].Token, "a new lease has a new token")

		require.NoError(t, s.Complete(ctx, first[0].Ref()), "Complete by the holder whose lease was taken over")
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}), "the old holder's Complete removed the delivery")
		assertPayload(t, s, "p1", payload("p1").Body)
		old := first[0]
		old.Attempts, old.NotBefore = 1, at(2*time.Minute)
		assert.ErrorIs(t, s.Retry(ctx, old), store.ErrLeaseLost, "Retry by the holder whose lease was taken over")
		assert.Empty(t, lease(t, s, at(2*time.Minute+time.Second), 10, time.Minute),
			"the old holder's Retry released the new holder's lease")

		retried := second[0]
		retried.Attempts, retried.NotBefore = 1, at(time.Hour)
		require.NoError(t, s.Retry(ctx, retried), "Retry by the new holder")
		third := lease(t, s, at(time.Hour), 10, time.Minute)
		require.Equal(t, []string{"d1"}, ids(third))
		assert.Equal(t, 1, third[0].Attempts)
		assert.NotContains(t, []string{first[0].Token, second[0].Token}, third[0].Token)
		require.NoError(t, s.Complete(ctx, third[0].Ref()), "Complete by the holder of the last lease")
		assert.Zero(t, count(t, s, store.DeliveryFilter{}), "the delivery is gone")
		assertNoPayload(t, s, "p1")
	})

	subtest(t, newStore, "ExpiredLeaseNotTakenOver", func(t *testing.T, s store.Store) {
		// A lease that ran out, with no one leasing the delivery since,
		// still lets its holder finish: retry, then complete.
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("p1")}, delivery("d1", "p1", "a.example", t0),
			delivery("d2", "p1", "b.example", t0))
		got := lease(t, s, t0, 10, time.Minute)
		require.Len(t, got, 2)
		for i := range got {
			if got[i].ID == "d1" {
				got[i].Attempts, got[i].NotBefore = 1, at(time.Hour)
				require.NoError(t, s.Retry(ctx, got[i]), "Retry after the lease ran out")
			}
		}
		require.NoError(t, s.Complete(ctx, refs(got)...), "Complete after the lease ran out")
		assert.Zero(t, count(t, s, store.DeliveryFilter{}))
		assertNoPayload(t, s, "p1")
	})

	subtest(t, newStore, "TokenOfAnEarlierCopy", func(t *testing.T, s store.Store) {
		// A delivery completed and enqueued again under the same ID is a
		// new one: the token of the earlier copy acts on neither.
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("p1")}, delivery("d1", "p1", "a.example", t0))
		first := lease(t, s, t0, 10, time.Minute)
		require.Len(t, first, 1)
		require.NoError(t, s.Complete(ctx, first[0].Ref()))
		require.Zero(t, count(t, s, store.DeliveryFilter{}))

		enqueue(t, s, []store.Payload{payload("p1")}, delivery("d1", "p1", "a.example", t0))
		require.NoError(t, s.Complete(ctx, first[0].Ref()))
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}), "an earlier copy's token completed the new copy")
		old := first[0]
		old.Attempts = 3
		assert.ErrorIs(t, s.Retry(ctx, old), store.ErrLeaseLost, "an earlier copy's token retried the new copy")

		again := lease(t, s, at(time.Minute), 10, time.Minute)
		require.Len(t, again, 1)
		assert.Zero(t, again[0].Attempts)
		assert.NotEqual(t, first[0].Token, again[0].Token)
		require.NoError(t, s.Complete(ctx, first[0].Ref()))
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}), "an earlier copy's token completed the leased new copy")
		require.NoError(t, s.Complete(ctx, again[0].Ref()))
		assert.Zero(t, count(t, s, store.DeliveryFilter{}))
	})
}
