package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWarnDataDirMode checks the warning about a data directory that other
// users may read (it holds the relay's private key).
func TestWarnDataDirMode(t *testing.T) {
	warnings := func(dir string) []string {
		var got []string
		warnDataDirMode(dir, func(msg string) { got = append(got, msg) })
		return got
	}
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	if got := warnings(dir); assert.Len(t, got, 1, "mode 0755") {
		assert.Contains(t, got[0], "0755")
		assert.Contains(t, got[0], "chmod 700")
	}
	require.NoError(t, os.Chmod(dir, 0o750))
	assert.Len(t, warnings(dir), 1, "mode 0750: readable by the group")
	require.NoError(t, os.Chmod(dir, 0o700))
	assert.Empty(t, warnings(dir), "mode 0700")
	assert.Empty(t, warnings(filepath.Join(dir, "missing")), "a directory the store will create 0700")

	// Open creates a missing directory private, and the relay's store
	// then holds the key in a private place.
	created := filepath.Join(dir, "data")
	st, err := openStore(created)
	require.NoError(t, err)
	require.NoError(t, st.Close())
	assert.Empty(t, warnings(created), "the directory the store created")
}
