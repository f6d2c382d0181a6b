package storetest

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// testCancelDuringWrites cancels a context while many writes that use it
// are under way. A write whose context ends during the call may return
// ctx.Err() with its change applied or not, but never in part, and a
// write that returned nil is applied.
func testCancelDuringWrites(t *testing.T, newStore factory) {
	subtest(t, newStore, "CancelDuringWrites", func(t *testing.T, s store.Store) {
		const workers, maxRounds, cancelAfter = 8, 200, 40
		const batch = 5
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var (
			ok    atomic.Int64
			acked [workers]int // last round whose three writes all returned nil
			tried [workers]int // last round attempted
		)
		versionValue := func(w, r int) []byte {
			return bytes.Repeat([]byte(fmt.Sprintf("%d-%d;", w, r)), 200)
		}
		batchSub := func(w, r int) string { return fmt.Sprintf("https://w%d.example/batch/%d", w, r) }
		parallel(workers, func(w int) {
			actor := fmt.Sprintf("https://w%d.example/actor", w)
			for r := 1; r <= maxRounds; r++ {
				tried[w] = r
				failed := false
				check := func(err error, what string) {
					if err != nil {
						failed = true
						assert.ErrorIs(t, err, context.Canceled, "%s with a context cancelled during the call", what)
					} else if ok.Add(1) == cancelAfter {
						cancel()
					}
				}
				_, err := s.UpdateSubscriber(ctx, actor, func(p *store.Subscriber, _ bool) error {
					p.Host, p.State = fmt.Sprintf("w%d.example", w), store.StateAccepted
					p.Delivered, p.Failed = int64(r), int64(r)
					p.Note = strconv.Itoa(r)
					return nil
				})
				check(err, "UpdateSubscriber")
				check(s.PutValue(ctx, fmt.Sprintf("w%d", w), versionValue(w, r)), "PutValue")
				pid := fmt.Sprintf("w%d-%d", w, r)
				var ds []store.Delivery
				for i := range batch {
					d := delivery(fmt.Sprintf("%s-%d", pid, i), pid, fmt.Sprintf("h%d.example", i), t0)
					d.Subscriber = batchSub(w, r)
					ds = append(ds, d)
				}
				check(s.Enqueue(ctx, []store.Payload{payload(pid)}, ds), "Enqueue")
				if failed {
					return // the context is done: nothing more would be stored
				}
				acked[w] = r
			}
		})
		require.Error(t, ctx.Err(), "the context was not cancelled: too few writes")

		for w := range workers {
			actor := fmt.Sprintf("https://w%d.example/actor", w)
			sub, err := s.GetSubscriber(t.Context(), actor)
			if acked[w] > 0 || err == nil {
				if !assert.NoError(t, err, "worker %d: acknowledged subscriber lost", w) {
					continue
				}
				assert.Equal(t, strconv.FormatInt(sub.Delivered, 10), sub.Note, "worker %d: subscriber from two updates", w)
				assert.Equal(t, sub.Delivered, sub.Failed, "worker %d: subscriber from two updates", w)
				assert.GreaterOrEqual(t, sub.Delivered, int64(acked[w]), "worker %d: acknowledged update lost", w)
				assert.LessOrEqual(t, sub.Delivered, int64(tried[w]), "worker %d: update never made", w)
			}
			v, err := s.GetValue(t.Context(), fmt.Sprintf("w%d", w))
			if acked[w] > 0 || err == nil {
				if !assert.NoError(t, err, "worker %d: acknowledged value lost", w) {
					continue
				}
				found := false
				for r := max(acked[w], 1); r <= tried[w]; r++ {
					found = found || bytes.Equal(v, versionValue(w, r))
				}
				assert.True(t, found, "worker %d: value is not one whole write at or after the last acknowledged", w)
			}
			for r := 1; r <= tried[w]; r++ {
				n := count(t, s, store.DeliveryFilter{Subscriber: batchSub(w, r)})
				if r <= acked[w] {
					assert.Equal(t, batch, n, "worker %d round %d: acknowledged Enqueue lost", w, r)
				} else {
					assert.Contains(t, []int{0, batch}, n, "worker %d round %d: Enqueue applied in part", w, r)
				}
				pid := fmt.Sprintf("w%d-%d", w, r)
				if n == batch {
					assertPayload(t, s, pid, payload(pid).Body)
				} else {
					assertNoPayload(t, s, pid)
				}
			}
		}
		// And the store still works with a live context.
		assertWorking(t, s, "after-cancel")
	})
}
