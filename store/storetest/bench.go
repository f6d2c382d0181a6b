package storetest

import (
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fedirelay/relay/store"
)

// Benchmark runs the shared benchmarks against the Store implementation that
// newStore creates: newStore must return a new, empty store each time it is
// called and register its own cleanup (b.Cleanup). The sub-benchmarks are:
//
//   - Enqueue: one payload and 100 deliveries to 100 hosts per operation.
//   - LeaseComplete: Lease batches of 100 from a 10,000-delivery backlog
//     and Complete each delivery; an operation is one delivery, and the
//     deliveries/s metric is the throughput.
//   - LeaseCompleteBatch: as LeaseComplete, with one Complete call per
//     batch of 100, as the relay confirms completions.
//   - LeaseCompleteParallel: as LeaseComplete, from 32 goroutines (the
//     relay's default delivery workers on two cores) that each lease
//     batches of 10, so a store that commits concurrent changes together
//     shows its real throughput. Reports deliveries/s.
//   - LeaseBacklog: a 100,000-delivery backlog over 2,000 hosts, 200 of
//     them (those with the oldest deliveries) in SkipHosts; an operation
//     leases up to 100 deliveries and Retries each to a later time, so the
//     backlog stays the same. Reports deliveries/s.
//   - UpdateSubscriber: an increment of one of 10,000 subscribers.
//   - ListSubscribers: the accepted subscribers out of 10,000, and those of
//     one host.
//   - MarkSeen: a new id per operation.
func Benchmark(b *testing.B, newStore func(b *testing.B) store.Store) {
	b.Run("Enqueue", func(b *testing.B) { benchEnqueue(b, newStore(b)) })
	b.Run("LeaseComplete", func(b *testing.B) { benchLeaseComplete(b, newStore(b)) })
	b.Run("LeaseCompleteBatch", func(b *testing.B) { benchLeaseCompleteBatch(b, newStore(b)) })
	b.Run("LeaseCompleteParallel", func(b *testing.B) { benchLeaseCompleteParallel(b, newStore(b)) })
	b.Run("LeaseBacklog", func(b *testing.B) { benchLeaseBacklog(b, newStore(b)) })
	b.Run("UpdateSubscriber", func(b *testing.B) { benchUpdateSubscriber(b, newStore(b)) })
	b.Run("ListSubscribers", func(b *testing.B) { benchListSubscribers(b, newStore(b)) })
	b.Run("MarkSeen", func(b *testing.B) { benchMarkSeen(b, newStore(b)) })
}

// benchDeliveries returns deliveries first ... first+n-1 of payloadID:
// delivery i goes to host i%hosts and is due at t0 + i milliseconds.
func benchDeliveries(prefix, payloadID string, first, n, hosts int) []store.Delivery {
	ds := make([]store.Delivery, n)
	for j := range ds {
		i := first + j
		ds[j] = delivery(prefix+strconv.Itoa(i), payloadID, "h"+strconv.Itoa(i%hosts)+".example",
			at(time.Duration(i)*time.Millisecond))
	}
	return ds
}

// fill enqueues n deliveries as benchDeliveries numbers them, 100 per
// payload.
func fill(b *testing.B, s store.Store, prefix string, n, hosts int) {
	b.Helper()
	for i := 0; i < n; i += 100 {
		pid := prefix + "p" + strconv.Itoa(i)
		ds := benchDeliveries(prefix, pid, i, min(100, n-i), hosts)
		if err := s.Enqueue(b.Context(), []store.Payload{payload(pid)}, ds); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEnqueue(b *testing.B, s store.Store) {
	ctx := b.Context()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		pid := "p" + strconv.Itoa(i)
		if err := s.Enqueue(ctx, []store.Payload{payload(pid)}, benchDeliveries(pid+"-", pid, 0, 100, 100)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "deliveries/s")
}

func benchLeaseComplete(b *testing.B, s store.Store) { leaseComplete(b, s, false) }

// benchLeaseCompleteBatch is benchLeaseComplete with one Complete call
// for each leased batch of 100, as the relay confirms completions.
func benchLeaseCompleteBatch(b *testing.B, s store.Store) { leaseComplete(b, s, true) }

// leaseComplete leases batches of 100 from a 10,000-delivery backlog
// (refilled when empty) and completes them one by one, or each batch in
// one call.
func leaseComplete(b *testing.B, s store.Store, batched bool) {
	const backlog = 10_000
	ctx := b.Context()
	refills := 0
	fill(b, s, "r0-", backlog, 1000)
	r := store.LeaseRequest{Now: far(), Limit: 100, Duration: time.Minute}
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; {
		got, err := s.Lease(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			b.StopTimer()
			refills++
			fill(b, s, fmt.Sprintf("r%d-", refills), backlog, 1000)
			b.StartTimer()
			continue
		}
		got = got[:min(len(got), b.N-n)]
		n += len(got)
		if batched {
			if err := s.Complete(ctx, refs(got)...); err != nil {
				b.Fatal(err)
			}
			continue
		}
		for _, d := range got {
			if err := s.Complete(ctx, d.Ref()); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

func benchLeaseCompleteParallel(b *testing.B, s store.Store) {
	const goroutines = 32
	ctx := b.Context()
	const batch = 10
	par := (goroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	// Each goroutine may hold up to a batch it will not use.
	fill(b, s, "", b.N+par*runtime.GOMAXPROCS(0)*batch, 1000)
	r := store.LeaseRequest{Now: far(), Limit: batch, Duration: time.Hour}
	b.SetParallelism(par)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var batch []store.Delivery
		for pb.Next() {
			for len(batch) == 0 {
				got, err := s.Lease(ctx, r)
				if err != nil {
					b.Error(err)
					return
				}
				if len(got) == 0 {
					b.Error("Lease: backlog exhausted early")
					return
				}
				batch = got
			}
			if err := s.Complete(ctx, batch[0].Ref()); err != nil {
				b.Error(err)
				return
			}
			batch = batch[1:]
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

func benchLeaseBacklog(b *testing.B, s store.Store) {
	const backlog, hosts, skipped = 100_000, 2_000, 200
	ctx := b.Context()
	fill(b, s, "", backlog, hosts)
	skip := make(map[string]bool, skipped)
	for i := range skipped { // benchDeliveries gives host i the i-th oldest delivery
		skip["h"+strconv.Itoa(i)+".example"] = true
	}
	now := at(time.Duration(backlog) * time.Millisecond)
	leased := 0
	b.ReportAllocs()
	for b.Loop() {
		got, err := s.Lease(ctx, store.LeaseRequest{Now: now, Limit: 100, Duration: time.Minute, SkipHosts: skip})
		if err != nil {
			b.Fatal(err)
		}
		for _, d := range got {
			d.Attempts++
			d.NotBefore = now.Add(time.Hour)
			if err := s.Retry(ctx, d); err != nil {
				b.Fatal(err)
			}
		}
		leased += len(got)
		if len(got) < 100 { // everything not skipped was retried: move on
			now = now.Add(time.Hour)
		}
	}
	b.ReportMetric(float64(leased)/b.Elapsed().Seconds(), "deliveries/s")
}

// benchSubscribers stores n accepted or pending subscribers over n/10 hosts.
func benchSubscribers(b *testing.B, s store.Store, n int) []string {
	b.Helper()
	actors := make([]string, n)
	for i := range actors {
		sub := sampleSubscriber(fmt.Sprintf("https://h%d.example/users/%d", i%(n/10), i))
		if i%3 == 0 {
			sub.State = store.StatePending
		}
		actors[i] = sub.ActorID
		if _, err := s.UpdateSubscriber(b.Context(), sub.ActorID, func(p *store.Subscriber, _ bool) error {
			*p = sub
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	return actors
}

func benchUpdateSubscriber(b *testing.B, s store.Store) {
	ctx := b.Context()
	actors := benchSubscribers(b, s, 10_000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.UpdateSubscriber(ctx, actors[i%len(actors)], func(p *store.Subscriber, _ bool) error {
			p.Delivered++
			p.LastSuccess = t0
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchListSubscribers(b *testing.B, s store.Store) {
	benchSubscribers(b, s, 10_000)
	for _, bc := range []struct {
		name string
		f    store.SubscriberFilter
	}{
		{"Accepted", store.SubscriberFilter{State: store.StateAccepted}},
		{"Host", store.SubscriberFilter{Host: "h7.example"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.ListSubscribers(ctx, bc.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchMarkSeen(b *testing.B, s store.Store) {
	ctx := b.Context()
	until := time.Now().Add(time.Hour)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.MarkSeen(ctx, "https://a.example/activities/"+strconv.Itoa(i), until); err != nil {
			b.Fatal(err)
		}
	}
}

// far is a time after every delivery the benchmarks enqueue.
func far() time.Time { return at(1000 * time.Hour) }

// FanOutWorkers measures what the relay's delivery workers do to the
// store: workers goroutines each Lease one delivery due at now (PerHost 4),
// read its payload, Complete it and count it in its subscriber's
// statistics (UpdateSubscriber: Delivered, LastSuccess), until no delivery
// is left. It resets b's timer first, stops it at the end and reports the
// deliveries/s metric; the caller fills s with b.N deliveries beforehand.
// Errors fail b.
func FanOutWorkers(b *testing.B, s store.Store, now time.Time, workers int) {
	ctx := b.Context()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.Lease(ctx, store.LeaseRequest{Now: now, Limit: 1, Duration: time.Minute, PerHost: 4})
				if err != nil {
					b.Error(err)
					return
				}
				if len(ds) == 0 {
					return
				}
				d := ds[0]
				if _, err := s.GetPayload(ctx, d.PayloadID); err != nil {
					b.Error(err)
					return
				}
				if err := s.Complete(ctx, d.Ref()); err != nil {
					b.Error(err)
					return
				}
				if _, err := s.UpdateSubscriber(ctx, d.Subscriber, func(p *store.Subscriber, _ bool) error {
					p.Delivered++
					p.LastSuccess = now
					return nil
				}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}
