package main

import "testing"

func TestMemoryLimitFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, nonHeap uint64
		want          int64
	}{
		{0, 0, minMemoryLimit},
		{20 * mib, 8 * mib, minMemoryLimit},                   // 20 + 3 + 8 + 6 < 64
		{30 * mib, 40 * mib, 81 * mib},                        // 30 + 5 + 40 + 6: the least headroom
		{48 * mib, 12 * mib, 74 * mib},                        // 48 + 8 + 12 + 6
		{96 * mib, 8 * mib, 132 * mib},                        // 96 + 16 + 8 + 12: an eighth of the live heap
		{1 << 62, 1 << 62, (1<<50)*2 + (1<<50)/6 + (1<<50)/8}, // clamped, no overflow
	} {
		if got := memoryLimitFor(c.live, c.nonHeap); got != c.want {
			t.Errorf("memoryLimitFor(%d, %d) = %d, want %d", c.live, c.nonHeap, got, c.want)
		}
	}
}
