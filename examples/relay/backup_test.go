package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

// exportDoc runs the export command on dir and decodes its output.
func exportDoc(t *testing.T, dir string) (store.Backup, []byte) {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, runBackup("export", []string{"-data", dir}, nil, &out))
	var doc store.Backup
	require.NoError(t, json.Unmarshal(out.Bytes(), &doc))
	return doc, out.Bytes()
}

// TestExportImportCommands moves a relay to a new data directory with the
// export and import commands: it comes back with its key and subscribers.
func TestExportImportCommands(t *testing.T) {
	ctx := context.Background()
	oldDir, newDir := t.TempDir(), t.TempDir()
	addr := freeAddr(t)
	p := startRelayAt(t, addr, oldDir)
	key := actorKey(t, p.BaseURL)
	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	a := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	b := relaytest.NewInstance(t, relaytest.Pleroma, quiet)
	for _, i := range []*relaytest.Instance{a, b} {
		_, err := i.Subscribe(ctx, p.BaseURL+"/inbox", p.BaseURL+"/actor")
		require.NoError(t, err)
		i.WaitSubscribed(t, 10*time.Second)
	}

	err := runBackup("import", []string{"-data", oldDir}, bytes.NewReader(nil), &bytes.Buffer{})
	require.ErrorIs(t, err, filestore.ErrLocked, "import into the directory of a running relay")
	assert.Contains(t, err.Error(), "is the relay running?")
	p.stop(t)

	doc, data := exportDoc(t, oldDir)
	assert.Equal(t, store.BackupFormat, doc.Format)
	assert.Len(t, doc.Subscribers, 2)
	require.NoError(t, runBackup("import", []string{"-data", newDir}, bytes.NewReader(data), nil))
	again, _ := exportDoc(t, newDir)
	again.ExportedAt = doc.ExportedAt
	assert.Equal(t, doc, again, "the new directory holds the exported state")

	p = startRelayAt(t, addr, newDir)
	assert.Equal(t, key, actorKey(t, p.BaseURL), "the relay keeps its key in the new directory")
	note, err := a.Post(ctx, p.BaseURL+"/inbox", "alice", "after the move")
	require.NoError(t, err, "the publisher is still a subscriber")
	b.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool {
		return rc.Type == "Announce" && rc.ObjectID == note.ID
	})
	p.stop(t)
}

func TestBackupCommandErrors(t *testing.T) {
	dir := t.TempDir()
	err := runBackup("export", []string{"-data", filepath.Join(dir, "missing")}, nil, &bytes.Buffer{})
	assert.ErrorContains(t, err, "no relay state")
	_, statErr := os.Stat(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, statErr, os.ErrNotExist, "export creates nothing")

	assert.Error(t, runBackup("import", []string{"-data", dir}, bytes.NewReader([]byte(`{"format":"other"}`)), nil))
	assert.Error(t, runBackup("import", []string{"-data", dir, "extra"}, bytes.NewReader(nil), nil))

	require.NoError(t, os.WriteFile(filepath.Join(dir, filestore.FileName), []byte("garbage, not a database"), 0o600))
	err = runBackup("export", []string{"-data", dir}, nil, &bytes.Buffer{})
	assert.ErrorIs(t, err, filestore.ErrCorrupt)
}

// TestLegacyKeyFile checks that a data directory of an earlier version,
// which held only relay-key.pem, keeps its key.
func TestLegacyKeyFile(t *testing.T) {
	dir := t.TempDir()
	key, err := httpsig.GenerateKey()
	require.NoError(t, err)
	pemBytes, err := httpsig.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, legacyKeyFile), pemBytes, 0o600))

	doc, _ := exportDoc(t, dir)
	v, ok := doc.Values["relay/private-key.pem"]
	require.True(t, ok)
	require.NotNil(t, v.Text)
	assert.Equal(t, string(pemBytes), *v.Text)
}
