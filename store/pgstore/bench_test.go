package pgstore_test

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/storetest"
)

// The benchmarks run against FEDIRELAY_TEST_DATABASE_URL (see
// .ci/postgres.sh), each in a schema of its own.

func BenchmarkStore(b *testing.B) {
	storetest.Benchmark(b, func(b *testing.B) store.Store { return open(b, newSchema(b)) })
}

// fanOutWorkers is how many deliveries the relay has in flight by default
// on a 2-core machine (Config.Workers = 16 × GOMAXPROCS).
const fanOutWorkers = 32

// fanOutSetup stores 1,000 subscribers on 1,000 hosts and b.N deliveries
// spread over them (fan-outs of a 3,000-byte payload).
func fanOutSetup(b *testing.B, s store.Store) time.Time {
	ctx := b.Context()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const hosts = 1000
	for h := range hosts {
		actor := fmt.Sprintf("https://h%d.example/actor", h)
		if _, err := s.UpdateSubscriber(ctx, actor, func(p *store.Subscriber, _ bool) error {
			p.Host, p.State, p.Protocol, p.Inbox = fmt.Sprintf("h%d.example", h), store.StateAccepted, store.ProtocolMastodon, actor+"/inbox"
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	body := make([]byte, 3000)
	for i := 0; i < b.N; i += hosts {
		pid := "p" + strconv.Itoa(i)
		var ds []store.Delivery
		for j := range min(hosts, b.N-i) {
			d := storetest.SampleDelivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0)
			d.Subscriber = fmt.Sprintf("https://h%d.example/actor", j)
			ds = append(ds, d)
		}
		if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds); err != nil {
			b.Fatal(err)
		}
	}
	return t0
}

// BenchmarkFanOut is the file store's BenchmarkFanOut: fanOutWorkers
// workers each Lease one delivery, read its payload, Complete it and count
// it in its subscriber's statistics (UpdateSubscriber), four transactions
// per delivery. One operation is one delivery.
func BenchmarkFanOut(b *testing.B) {
	s := open(b, newSchema(b))
	t0 := fanOutSetup(b, s)
	storetest.FanOutWorkers(b, s, t0, fanOutWorkers)
}

// BenchmarkRelayDequeue drives the store the way the relay's delivery
// queue does with fanOutWorkers workers: a dispatcher leases for the free
// workers once at least a quarter of them are free (PerHost 4) and hands
// the deliveries to the workers, which read the payload (once per
// payload: the relay caches bodies) and pass the completion to a
// completer that confirms batches (up to 1,024) in one Complete; delivery
// statistics go to the store every 10 s and at the end, one
// UpdateSubscriber per subscriber, 32 at a time. One operation is one
// delivery; no network, no signing.
//
// Shared is what the relay does on a store shared by several processes:
// leases with HostCap 4, completions gathered for at most 5 ms. Alone is
// the lease without HostCap and completions gathered for up to 100 ms, as
// on a store of one process.
func BenchmarkRelayDequeue(b *testing.B) {
	b.Run("Shared", func(b *testing.B) { relayDequeue(b, 4, 5*time.Millisecond) })
	b.Run("Alone", func(b *testing.B) { relayDequeue(b, 0, 100*time.Millisecond) })
}

// relayDequeue is BenchmarkRelayDequeue with the given Lease HostCap and
// completion gathering time.
func relayDequeue(b *testing.B, hostCap int, gatherFor time.Duration) {
	ctx := b.Context()
	s := open(b, newSchema(b))
	t0 := fanOutSetup(b, s)
	b.ResetTimer()
	work := make(chan store.Delivery, fanOutWorkers)
	done := make(chan store.Delivery, 4096)
	var bodies sync.Map
	var busy atomic.Int64 // deliveries leased and not finished by a worker
	var workers, completer sync.WaitGroup
	for range fanOutWorkers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for d := range work {
				if _, ok := bodies.Load(d.PayloadID); !ok {
					body, err := s.GetPayload(ctx, d.PayloadID)
					if err != nil {
						b.Error(err)
						return
					}
					bodies.Store(d.PayloadID, body)
				}
				busy.Add(-1)
				done <- d
			}
		}()
	}
	var statsMu sync.Mutex
	stats := map[string]int64{}
	flush := func() {
		statsMu.Lock()
		todo := stats
		stats = map[string]int64{}
		statsMu.Unlock()
		next := make(chan string)
		var wg sync.WaitGroup
		for range 32 { // the relay's flushParallelism
			wg.Add(1)
			go func() {
				defer wg.Done()
				for sub := range next {
					if _, err := s.UpdateSubscriber(ctx, sub, func(p *store.Subscriber, _ bool) error {
						p.Delivered += todo[sub]
						p.LastSuccess = t0
						return nil
					}); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for sub := range todo {
			next <- sub
		}
		close(next)
		wg.Wait()
	}
	stopFlusher := make(chan struct{})
	var flusher sync.WaitGroup
	flusher.Add(1)
	go func() {
		defer flusher.Done()
		for {
			select {
			case <-stopFlusher:
				return
			case <-time.After(10 * time.Second):
				flush()
			}
		}
	}()
	completer.Add(1)
	go func() {
		defer completer.Done()
		var batch []store.LeaseRef
		gather := time.NewTimer(time.Hour)
		for open := true; open; {
			var d store.Delivery
			select {
			case d, open = <-done:
			case <-gather.C:
			}
			if open && d.ID != "" {
				batch = append(batch, d.Ref())
				statsMu.Lock()
				stats[d.Subscriber]++
				statsMu.Unlock()
				if len(batch) == 1 {
					gather.Reset(gatherFor)
				}
			}
			if len(batch) > 0 && (len(batch) >= 1024 || !open || d.ID == "") {
				if err := s.Complete(ctx, batch...); err != nil {
					b.Error(err)
				}
				batch = batch[:0]
			}
		}
	}()
	for leased := 0; leased < b.N; {
		free := fanOutWorkers - int(busy.Load())
		if free < fanOutWorkers/4 {
			time.Sleep(100 * time.Microsecond)
			continue
		}
		ds, err := s.Lease(ctx, store.LeaseRequest{Now: t0, Limit: free, Duration: time.Minute, PerHost: 4, HostCap: hostCap})
		if err != nil {
			b.Fatal(err)
		}
		if len(ds) == 0 {
			time.Sleep(time.Millisecond) // the rest is leased and not completed yet
			continue
		}
		busy.Add(int64(len(ds)))
		for _, d := range ds {
			work <- d
		}
		leased += len(ds)
	}
	close(work)
	workers.Wait()
	close(done)
	completer.Wait()
	close(stopFlusher)
	flusher.Wait()
	flush()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}
