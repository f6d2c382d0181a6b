package memstore_test

import (
	"testing"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
	"github.com/fedirelay/relay/store/storetest"
)

func newStore(tb testing.TB) store.Store {
	s := memstore.New()
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Benchmark(b, func(b *testing.B) store.Store { return newStore(b) })
}
