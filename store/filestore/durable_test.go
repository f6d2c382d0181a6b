package filestore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/storetest"
)

// TestDurable runs the suite's reopen checks: everything survives Close
// and Open of the same directory.
func TestDurable(t *testing.T) {
	storetest.RunDurable(t, func(t *testing.T) store.Store { return open(t) },
		func(t *testing.T, s store.Store) store.Store {
			fs := s.(*filestore.Store)
			require.NoError(t, fs.Close())
			again, err := filestore.Open(fs.Dir(), nil)
			require.NoError(t, err)
			t.Cleanup(func() { _ = again.Close() })
			return again
		})
}
