package filestore_test

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/storetest"
)

// fanOutWorkers is how many deliveries the relay has in flight by default
// on a 2-core machine (Config.Workers = 16 × GOMAXPROCS).
const fanOutWorkers = 32

// BenchmarkFanOut measures what the relay's delivery workers do to the
// store, with fanOutWorkers of them at once: Lease one delivery, read its
// payload, Complete it and count it in its subscriber's statistics
// (UpdateSubscriber). One operation is one delivery; deliveries/s is the
// rate the store sustains (concurrent changes share commits).
func BenchmarkFanOut(b *testing.B) {
	ctx := b.Context()
	s := open(b)
	const hosts = 1000
	for h := range hosts {
		sub := sampleSubscriber(fmt.Sprintf("https://h%d.example/actor", h), fmt.Sprintf("h%d.example", h))
		if _, err := s.UpdateSubscriber(ctx, sub.ActorID, func(p *store.Subscriber, _ bool) error { *p = sub; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	body := make([]byte, 3000)
	for i := 0; i < b.N; i += hosts {
		pid := "p" + strconv.Itoa(i)
		var ds []store.Delivery
		for j := range min(hosts, b.N-i) {
			ds = append(ds, delivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0))
		}
		if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds); err != nil {
			b.Fatal(err)
		}
	}
	storetest.FanOutWorkers(b, s, t0, fanOutWorkers)
}

// BenchmarkEnqueueFanOut measures one fan-out to 10,000 subscribers: one
// Enqueue of a payload and 10,000 deliveries, in one commit.
func BenchmarkEnqueueFanOut(b *testing.B) {
	ctx := b.Context()
	s := open(b)
	const n = 10_000
	body := make([]byte, 3000)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		pid := "p" + strconv.Itoa(i)
		ds := make([]store.Delivery, n)
		for j := range ds {
			ds[j] = delivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0)
			ds[j].Subscriber = fmt.Sprintf("https://h%d.example/actor", j)
		}
		b.StartTimer()
		if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := s.DropDeliveries(ctx, store.DeliveryFilter{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkOpenLarge measures Open of a store holding 10,000 subscribers
// and a backlog of 100,000 deliveries (10 fan-outs of 10,000), and reports
// the heap it takes once open (heap-MB).
func BenchmarkOpenLarge(b *testing.B) {
	ctx := b.Context()
	dir := b.TempDir()
	s, err := filestore.Open(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	const subs, fanouts = 10_000, 10
	for i := range subs {
		sub := sampleSubscriber(fmt.Sprintf("https://h%d.example/users/relay", i), fmt.Sprintf("h%d.example", i))
		if _, err := s.UpdateSubscriber(ctx, sub.ActorID, func(p *store.Subscriber, _ bool) error { *p = sub; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	body := make([]byte, 5000)
	for f := range fanouts {
		pid := fmt.Sprintf("https://relay.example/activities/%032d", f)
		ds := make([]store.Delivery, subs)
		for j := range ds {
			ds[j] = delivery(fmt.Sprintf("%032x", f*subs+j), pid, fmt.Sprintf("h%d.example", j), t0)
			ds[j].Subscriber = fmt.Sprintf("https://h%d.example/users/relay", j)
		}
		if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: body}}, ds); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var heap uint64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := filestore.Open(dir, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
}
