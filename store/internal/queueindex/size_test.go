package queueindex

import (
	"testing"
	"unsafe"
)

// TestItemSize guards the size of an item, which a large backlog holds
// one of per delivery: 96 bytes without extension (a size class of Go's
// allocator), 104 with a 4-byte one (allocated in 112).
func TestItemSize(t *testing.T) {
	if n := unsafe.Sizeof(Item[struct{}]{}); n != 96 {
		t.Errorf("Item[struct{}] takes %d bytes, want 96", n)
	}
	if n := unsafe.Sizeof(Item[int32]{}); n != 104 {
		t.Errorf("Item[int32] takes %d bytes, want 104", n)
	}
}
