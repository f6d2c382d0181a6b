package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// minMemoryLimit is the least soft memory limit the relay gives the Go
// runtime when GOMEMLIMIT is not set (see setMemoryLimit).
const minMemoryLimit = 64 << 20

// memoryLimitFor returns the soft memory limit for a live heap of live
// bytes: 1.5 times the live heap, and at least minMemoryLimit.
func memoryLimitFor(live uint64) int64 {
	return max(minMemoryLimit, int64(min(live, 1<<60)/2*3))
}

// setMemoryLimit gives the Go runtime a soft memory limit unless the
// GOMEMLIMIT environment variable sets one, and reports whether it did.
//
// By default (GOGC=100) the garbage collector lets the heap grow to twice
// what was live after the last collection, so a relay whose live heap is
// 40 MB (10,000 subscribers and a 100,000-delivery backlog) may hold 80 MB
// of heap. With the limit the collector runs earlier instead: the limit is
// max(64 MiB, 1.5 × the live heap), recomputed after every collection, so
// a small relay stays near 64 MiB of Go memory and a large one still has
// half its live heap as headroom (never the endless collections of a
// fixed limit below the live heap). The cost is more frequent collections,
// small next to the relay's signing. Set GOMEMLIMIT (for example
// GOMEMLIMIT=1GiB, or GOMEMLIMIT=off for none) to choose yourself.
func setMemoryLimit() bool {
	if os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	update := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(memoryLimitFor(sample[0].Value.Uint64()))
		}
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
