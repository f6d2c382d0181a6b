package main

import "testing"

func TestMemoryLimitFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, nonHeap uint64
		want          int64
	}{
		{0, 0, minMemoryLimit},
		{20 * mib, 8 * mib, minMemoryLimit},                   // 20 + 4 + 8 + 8 < 64
		{30 * mib, 40 * mib, 84 * mib},                        // 30 + 6 + 40 + 8: the least headroom
		{40 * mib, 8 * mib, 66 * mib},                         // 40 + 8 + 8 + 10: a quarter of the live heap
		{400 * mib, 20 * mib, 600 * mib},                      // 400 + 80 + 20 + 100
		{1 << 62, 1 << 62, (1<<50)*2 + (1<<50)/5 + (1<<50)/4}, // clamped, no overflow
	} {
		if got := memoryLimitFor(c.live, c.nonHeap); got != c.want {
			t.Errorf("memoryLimitFor(%d, %d) = %d, want %d", c.live, c.nonHeap, got, c.want)
		}
	}
}
