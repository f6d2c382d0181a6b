package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// parallel runs fn(0) ... fn(n-1) in goroutines, started together, and
// waits for them. fn must report failures with assert (t.FailNow is not
// allowed outside the test goroutine).
func parallel(n int, fn func(i int)) {
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

func testConcurrency(t *testing.T, newStore factory) {
	subtest(t, newStore, "UpdateSubscriber", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		const workers, increments = 8, 25
		actor := "https://a.example/actor"
		parallel(workers, func(int) {
			for range increments {
				_, err := s.UpdateSubscriber(ctx, actor, func(p *store.Subscriber, found bool) error {
					if !found {
						p.Host, p.State = "a.example", store.StateAccepted
					}
					p.Delivered++
					return nil
				})
				assert.NoError(t, err)
			}
		})
		got, err := s.GetSubscriber(ctx, actor)
		require.NoError(t, err)
		assert.Equal(t, int64(workers*increments), got.Delivered, "lost updates")
	})

	subtest(t, newStore, "MarkSeen", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		const workers, rounds = 16, 10
		until := time.Now().Add(time.Hour)
		for r := range rounds {
			id := fmt.Sprintf("https://a.example/activities/%d", r)
			var (
				mu    sync.Mutex
				fresh int
			)
			parallel(workers, func(int) {
				isNew, err := s.MarkSeen(ctx, id, until)
				assert.NoError(t, err)
				if isNew {
					mu.Lock()
					fresh++
					mu.Unlock()
				}
			})
			assert.Equal(t, 1, fresh, "concurrent MarkSeen(%q) calls that saw it new", id)
		}
	})

	subtest(t, newStore, "CreateValue", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		const workers = 16
		got := make([][]byte, workers)
		parallel(workers, func(i int) {
			v, err := s.CreateValue(ctx, "relay/key", []byte(fmt.Sprintf("key-%d", i)))
			assert.NoError(t, err)
			got[i] = v
		})
		stored, err := s.GetValue(ctx, "relay/key")
		require.NoError(t, err)
		for i, v := range got {
			assert.Equal(t, stored, v, "CreateValue caller %d got another value than the one stored", i)
		}
	})

	subtest(t, newStore, "Lease", func(t *testing.T, s store.Store) {
		// Workers lease concurrently, within one lease period: no delivery
		// may be handed to two of them, and a Lease returns nothing only
		// when the other workers' Leases may have taken all that was left.
		ctx := t.Context()
		const n, hosts, workers = 400, 10, 8
		var ds []store.Delivery
		for i := range n {
			host := fmt.Sprintf("h%d.example", i%hosts)
			ds = append(ds, delivery(fmt.Sprintf("d%03d", i), "p", host, at(time.Duration(i%7)*time.Second)))
		}
		enqueue(t, s, []store.Payload{payload("p")}, ds...)
		var (
			mu     sync.Mutex
			leased = make(map[string]int)
		)
		parallel(workers, func(w int) {
			for {
				got, err := s.Lease(ctx, store.LeaseRequest{Now: at(time.Minute), Limit: 7, Duration: time.Hour})
				if !assert.NoError(t, err) {
					return
				}
				if len(got) == 0 {
					// All were leased: by the Leases whose deliveries are
					// counted, and at most one batch of each other worker.
					mu.Lock()
					left := n - len(leased)
					mu.Unlock()
					assert.LessOrEqual(t, left, (workers-1)*7, "Lease returned nothing, %d deliveries not leased", left)
					return
				}
				mu.Lock()
				for _, d := range got {
					leased[d.ID]++
				}
				mu.Unlock()
				if w%2 == 0 { // some workers complete as they go
					for _, d := range got {
						assert.NoError(t, s.Complete(ctx, d.Ref()))
					}
				}
			}
		})
		assert.Len(t, leased, n, "deliveries leased")
		for id, times := range leased {
			if times != 1 {
				assert.Fail(t, fmt.Sprintf("%s leased %d times within one lease period", id, times))
			}
		}
	})

	subtest(t, newStore, "LeaseHostCap", func(t *testing.T, s store.Store) {
		HostCapConcurrently(t, s, s, s, s)
	})

	subtest(t, newStore, "Queue", func(t *testing.T, s store.Store) {
		// Producers enqueue while consumers lease, retry and complete; in
		// the end every delivery was completed once and every payload
		// reclaimed.
		ctx := t.Context()
		const producers, consumers, batches, fanout = 4, 4, 10, 10
		var (
			mu        sync.Mutex
			completed = make(map[string]int)
			produced  sync.WaitGroup
			done      = make(chan struct{})
		)
		produced.Add(producers)
		go func() { produced.Wait(); close(done) }()
		deadline := time.Now().Add(30 * time.Second)
		parallel(producers+consumers, func(w int) {
			if w < producers {
				defer produced.Done()
				for b := range batches {
					pid := fmt.Sprintf("p%d-%d", w, b)
					var ds []store.Delivery
					for i := range fanout {
						ds = append(ds, delivery(fmt.Sprintf("%s-%d", pid, i), pid, fmt.Sprintf("h%d.example", i), t0))
					}
					assert.NoError(t, s.Enqueue(ctx, []store.Payload{payload(pid)}, ds))
				}
				return
			}
			for {
				got, err := s.Lease(ctx, store.LeaseRequest{Now: t0, Limit: 5, Duration: time.Hour})
				if !assert.NoError(t, err) {
					return
				}
				if len(got) == 0 {
					select {
					case <-done: // nothing due and nothing more to come
						n, err := s.CountDeliveries(ctx, store.DeliveryFilter{})
						if !assert.NoError(t, err) || n == 0 {
							return
						}
					default:
					}
					if time.Now().After(deadline) {
						assert.Fail(t, "the queue did not drain")
						return
					}
					time.Sleep(time.Millisecond)
					continue
				}
				for _, d := range got {
					if d.Attempts == 0 && len(d.ID)%2 == 0 { // retry some once
						d.Attempts++
						assert.NoError(t, s.Retry(ctx, d))
						continue
					}
					_, err := s.GetPayload(ctx, d.PayloadID)
					assert.NoError(t, err, "payload of a queued delivery")
					assert.NoError(t, s.Complete(ctx, d.Ref()))
					mu.Lock()
					completed[d.ID]++
					mu.Unlock()
				}
			}
		})
		assert.Len(t, completed, producers*batches*fanout)
		for id, n := range completed {
			assert.Equal(t, 1, n, "%s completed %d times", id, n)
		}
		assert.Equal(t, 0, count(t, s, store.DeliveryFilter{}))
		for w := range producers {
			for b := range batches {
				assertNoPayload(t, s, fmt.Sprintf("p%d-%d", w, b))
			}
		}
	})
}

// HostCapConcurrently checks that store.LeaseRequest.HostCap holds when
// several callers lease at once: stores are views of one queue (one store
// given several times, or stores sharing one database), and each gets two
// workers that lease with HostCap 2, hold what they got for a moment and
// complete it. A host never has more deliveries held than the cap, every
// delivery is completed once, and the queue drains. It enqueues through
// stores[0] into an empty queue.
func HostCapConcurrently(t *testing.T, stores ...store.Store) {
	t.Helper()
	require.NotEmpty(t, stores)
	ctx := t.Context()
	const n, hosts, hostCap = 240, 3, 2
	var ds []store.Delivery
	for i := range n {
		ds = append(ds, delivery(fmt.Sprintf("d%03d", i), "p", fmt.Sprintf("h%d.example", i%hosts), t0))
	}
	enqueue(t, stores[0], []store.Payload{payload("p")}, ds...)
	var (
		mu        sync.Mutex
		held      = map[string]int{} // per host: counted after Lease, uncounted before Complete
		most      int
		completed = map[string]int{}
	)
	deadline := time.Now().Add(60 * time.Second)
	parallel(2*len(stores), func(w int) {
		s := stores[w%len(stores)]
		for {
			got, err := s.Lease(ctx, store.LeaseRequest{Now: at(time.Minute), Limit: 3, Duration: time.Hour, HostCap: hostCap})
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			finished := len(completed) == n
			for _, d := range got {
				held[d.Host]++
				most = max(most, held[d.Host])
				assert.LessOrEqual(t, held[d.Host], hostCap, "deliveries held for %s", d.Host)
			}
			mu.Unlock()
			if finished {
				return
			}
			if len(got) == 0 {
				if time.Now().After(deadline) {
					assert.Fail(t, "the queue did not drain")
					return
				}
				time.Sleep(time.Millisecond)
				continue
			}
			time.Sleep(time.Millisecond) // hold the leases while others lease
			mu.Lock()
			for _, d := range got {
				held[d.Host]--
				completed[d.ID]++
			}
			mu.Unlock()
			assert.NoError(t, s.Complete(ctx, refs(got)...))
		}
	})
	assert.Equal(t, hostCap, most, "some host reached the cap")
	assert.Len(t, completed, n, "deliveries completed")
	for id, times := range completed {
		if times != 1 {
			assert.Fail(t, fmt.Sprintf("%s completed %d times", id, times))
		}
	}
}
