package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// seenIDs returns the ids of a *store.SeenError err wraps, or fails t.
func seenIDs(t *testing.T, err error) []string {
	t.Helper()
	var seen *store.SeenError
	if !assert.True(t, errors.As(err, &seen), "want a *store.SeenError, got %v", err) {
		return nil
	}
	return seen.IDs
}

// testEnqueueMarks checks the deduplication marks Enqueue takes in the
// change that queues the work they guard.
func testEnqueueMarks(t *testing.T, newStore factory) {
	later := func() time.Time { return time.Now().Add(time.Hour) }
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	const a, b, c = "activity:https://a.example/1", "announced:https://a.example/note", "activity:https://a.example/2"

	subtest(t, newStore, "TakenWithTheWork", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.Enqueue(ctx, []store.Payload{payload("p1")},
			[]store.Delivery{delivery("d1", "p1", "a.example", t0)},
			store.Mark{ID: a, Until: later()}, store.Mark{ID: b, Until: later()}))
		assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}))
		assert.False(t, markSeen(t, s, a, later()), "a mark Enqueue took")
		assert.False(t, markSeen(t, s, b, later()), "a mark Enqueue took")
	})

	subtest(t, newStore, "LiveMarkStoresNothing", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.True(t, markSeen(t, s, b, later()))
		err := s.Enqueue(ctx, []store.Payload{payload("p1")},
			[]store.Delivery{delivery("d1", "p1", "a.example", t0)},
			store.Mark{ID: a, Until: later()}, store.Mark{ID: b, Until: later()})
		assert.Equal(t, []string{b}, seenIDs(t, err), "the live marks")
		assert.Zero(t, count(t, s, store.DeliveryFilter{}), "deliveries stored beside a live mark")
		assertNoPayload(t, s, "p1")
		assert.True(t, markSeen(t, s, a, later()), "a mark taken beside a live one")

		// Every live mark is named, in the order given.
		err = s.Enqueue(ctx, nil, nil, store.Mark{ID: c, Until: later()},
			store.Mark{ID: b, Until: later()}, store.Mark{ID: a, Until: later()})
		assert.Equal(t, []string{b, a}, seenIDs(t, err))
		assert.True(t, markSeen(t, s, c, later()), "a mark taken beside live ones")
	})

	subtest(t, newStore, "MarksOnly", func(t *testing.T, s store.Store) {
		require.NoError(t, s.Enqueue(t.Context(), nil, nil, store.Mark{ID: a, Until: later()}))
		assert.False(t, markSeen(t, s, a, later()))
		assert.Zero(t, count(t, s, store.DeliveryFilter{}))
	})

	subtest(t, newStore, "Expired", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.True(t, markSeen(t, s, a, past()))
		require.NoError(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: a, Until: past()}),
			"an expired mark is not live")
		require.NoError(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: a, Until: later()}),
			"an expired mark is not kept")
		assert.False(t, markSeen(t, s, a, later()))
	})

	subtest(t, newStore, "CheckOnly", func(t *testing.T, s store.Store) {
		// A mark whose Until has passed is checked, not kept: the relay
		// asks whether a mark is live this way.
		ctx := t.Context()
		require.True(t, markSeen(t, s, a, later()))
		assert.Equal(t, []string{a}, seenIDs(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: a})), "a live mark is seen")
		require.NoError(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: b}), "an absent mark is not")
		assert.True(t, markSeen(t, s, b, later()), "and it was not kept")
	})

	subtest(t, newStore, "RepeatedInOneCall", func(t *testing.T, s store.Store) {
		require.NoError(t, s.Enqueue(t.Context(), nil, nil, store.Mark{ID: a, Until: later()}, store.Mark{ID: a, Until: later()}))
		assert.False(t, markSeen(t, s, a, later()))
	})

	subtest(t, newStore, "FailedEnqueueTakesNoMark", func(t *testing.T, s store.Store) {
		err := s.Enqueue(t.Context(), nil, []store.Delivery{delivery("d1", "unknown", "a.example", t0)},
			store.Mark{ID: a, Until: later()})
		require.Error(t, err, "a delivery of an unknown payload")
		assert.True(t, markSeen(t, s, a, later()), "a mark taken by a failed Enqueue")
	})

	subtest(t, newStore, "Forget", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: a, Until: later()}))
		require.NoError(t, s.ForgetSeen(ctx, a))
		assert.NoError(t, s.Enqueue(ctx, nil, nil, store.Mark{ID: a, Until: later()}), "a forgotten mark")
	})

	// Of concurrent Enqueue and MarkSeen calls taking the same mark,
	// exactly one succeeds, and only its deliveries are queued.
	subtest(t, newStore, "Concurrent", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		const workers, rounds = 16, 5
		for r := range rounds {
			id := fmt.Sprintf("activity:https://a.example/race/%d", r)
			var (
				mu      sync.Mutex
				winners []int
			)
			parallel(workers, func(w int) {
				var err error
				if w%4 == 3 {
					var fresh bool
					fresh, err = s.MarkSeen(ctx, id, later())
					if err == nil && !fresh {
						err = &store.SeenError{IDs: []string{id}}
					}
				} else {
					d := delivery(fmt.Sprintf("r%d-w%d", r, w), "p1", fmt.Sprintf("w%d.example", w), t0)
					err = s.Enqueue(ctx, []store.Payload{payload("p1")}, []store.Delivery{d}, store.Mark{ID: id, Until: later()})
				}
				if err == nil {
					mu.Lock()
					winners = append(winners, w)
					mu.Unlock()
					return
				}
				assert.Equal(t, []string{id}, seenIDs(t, err))
			})
			require.Len(t, winners, 1, "concurrent takers of %q that succeeded", id)
			want, host := 0, fmt.Sprintf("w%d.example", winners[0])
			if winners[0]%4 != 3 {
				want = 1
				assert.Equal(t, 1, count(t, s, store.DeliveryFilter{Host: host}), "the winner's delivery")
			}
			assert.Equal(t, want, count(t, s, store.DeliveryFilter{}), "deliveries queued in round %d", r)
			_, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: host})
			require.NoError(t, err)
		}
	})
}

// testCompleteSeveral checks Complete with several ids.
func testCompleteSeveral(t *testing.T, newStore factory) {
	subtest(t, newStore, "Batch", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		enqueue(t, s, []store.Payload{payload("p1"), payload("p2")},
			delivery("d1", "p1", "a.example", t0), delivery("d2", "p1", "b.example", t0),
			delivery("d3", "p1", "c.example", t0), delivery("d4", "p2", "a.example", t0))
		require.Len(t, lease(t, s, t0, 10, time.Minute), 4)
		// Repeated and absent ids are ignored; leased deliveries are removed.
		require.NoError(t, s.Complete(ctx, store.IDs("d1", "d4", "d1", "missing")...))
		require.NoError(t, s.Complete(ctx))
		assert.Equal(t, []string{"d2", "d3"}, sortedIDs(lease(t, s, at(time.Hour), 10, time.Minute)))
		assertPayload(t, s, "p1", payload("p1").Body)
		assertNoPayload(t, s, "p2")
		require.NoError(t, s.Complete(ctx, store.IDs("d3", "d2")...))
		assert.Zero(t, count(t, s, store.DeliveryFilter{}))
		assertNoPayload(t, s, "p1")
	})
}
