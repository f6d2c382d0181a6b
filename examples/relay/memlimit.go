package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Parameters of the soft memory limit the relay sets (see setMemoryLimit).
const (
	// minMemoryLimit is the least limit set.
	minMemoryLimit = 64 << 20
	// minHeadroom is the least room left for new allocations between two
	// collections; the headroom is also at least an eighth of the live heap.
	minHeadroom = 6 << 20
)

// memoryLimitMessage is logged when setMemoryLimit set a limit.
var memoryLimitMessage = fmt.Sprintf("soft memory limit: the collector runs once an eighth of the live heap "+
	"(at least %d MiB) has been allocated beyond it and a sixth for fragmentation, the limit never below %d MiB; "+
	"set GOMEMLIMIT to choose another", minHeadroom>>20, minMemoryLimit>>20)

// memoryLimitFor returns the soft memory limit for a live heap of live
// bytes and nonHeap bytes of other memory of the Go runtime (goroutine
// stacks, the collector's metadata): the live heap, a sixth of it for the
// space lost between heap objects, nonHeap, and a headroom of an eighth of
// the live heap but at least minHeadroom; and at least minMemoryLimit.
func memoryLimitFor(live, nonHeap uint64) int64 {
	live, nonHeap = min(live, 1<<50), min(nonHeap, 1<<50) // no overflow
	limit := live + live/6 + nonHeap + max(minHeadroom, live/8)
	return max(minMemoryLimit, int64(limit))
}

// setMemoryLimit gives the Go runtime a soft memory limit unless the
// GOMEMLIMIT environment variable sets one, and reports whether it did.
//
// By default (GOGC=100) the garbage collector lets the heap grow to twice
// what was live after the last collection: a relay whose live heap is
// 45 MB (10,000 subscribers and a 100,000-delivery backlog) reaches 135 MB
// of resident memory. With the limit, recomputed after every collection
// (memoryLimitFor), the collector runs once about an eighth of the live
// heap (at least 6 MiB) has been allocated, as with GOGC=12; a small relay
// keeps the default, and the limit never comes so close to the live heap
// that the collector would run without end (as under a fixed limit). The
// cost is more garbage-collection CPU for relays whose live heap exceeds
// about 30 MB, and a slower inbox when one post fans out to thousands of
// subscribers (the collector then runs several times per post: ≈ 0.45 s
// instead of ≈ 0.25 s per post to 10,000 subscribers in the backlog run of
// the README's Performance section). Set GOMEMLIMIT (for example
// GOMEMLIMIT=1GiB, or GOMEMLIMIT=off for none) to choose yourself.
func setMemoryLimit() bool {
	if os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	update := func() {
		metrics.Read(samples)
		var v [6]uint64
		for i, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return // unknown to this Go version: keep the last limit
			}
			v[i] = s.Value.Uint64()
		}
		heap := v[2] + v[3] + v[4] + v[5]
		debug.SetMemoryLimit(memoryLimitFor(v[0], v[1]-min(heap, v[1])))
	}
	update()
	afterEachGC(update)
	return true
}

// afterEachGC calls f after every garbage collection, from the finalizer
// goroutine, for the life of the process.
func afterEachGC(f func()) {
	type sentinel struct{ _ [16]byte } // not tiny-allocated: finalizers need their own object
	var rearm func(*sentinel)
	rearm = func(s *sentinel) {
		f()
		runtime.SetFinalizer(s, rearm)
	}
	runtime.SetFinalizer(&sentinel{}, rearm)
}
