package filestore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/storetest"
)

// open opens a store in a new temporary directory, closed at the end of
// the test.
func open(tb testing.TB) *filestore.Store {
	tb.Helper()
	s, err := filestore.Open(tb.TempDir(), nil)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Benchmark(b, func(b *testing.B) store.Store { return open(b) })
}
