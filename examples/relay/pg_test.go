package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/pgstore"
)

// testDatabaseURL returns a connection string for a new, empty schema of
// the test database (FEDIRELAY_TEST_DATABASE_URL), dropped at the end of
// the test. Without the variable the test is skipped, or fails when
// CI=true.
func testDatabaseURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("FEDIRELAY_TEST_DATABASE_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FEDIRELAY_TEST_DATABASE_URL is not set: CI runs the PostgreSQL tests (see .ci/postgres.sh)")
		}
		t.Skip("FEDIRELAY_TEST_DATABASE_URL is not set; run with .ci/postgres.sh go test ./examples/relay/")
	}
	name := fmt.Sprintf("relay_%d_%d", os.Getpid(), schemaSeq.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+name+" CASCADE; CREATE SCHEMA "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		if conn, err := pgx.Connect(ctx, url); err == nil {
			_, _ = conn.Exec(ctx, "DROP SCHEMA "+name+" CASCADE")
			_ = conn.Close(ctx)
		}
	})
	return pgstore.WithParam(url, "search_path", name)
}

var schemaSeq atomic.Int64

// TestMoveBetweenFileStoreAndPostgres moves a relay from its data
// directory to PostgreSQL and back with export and import: the state
// survives both moves, and the relay started on the database has the same
// key.
func TestMoveBetweenFileStoreAndPostgres(t *testing.T) {
	dbURL := testDatabaseURL(t)
	dir, back := t.TempDir(), t.TempDir()
	p := startRelayProcess(t, dir)
	key := actorKey(t, p.BaseURL)
	p.stop(t)

	doc, data := exportDoc(t, dir)
	require.NoError(t, runBackup("import", []string{"-database-url", dbURL}, bytes.NewReader(data), nil))
	var out bytes.Buffer
	require.NoError(t, runBackup("export", []string{"-database-url", dbURL}, nil, &out))
	var fromDB store.Backup
	require.NoError(t, json.Unmarshal(out.Bytes(), &fromDB))
	fromDB.ExportedAt = doc.ExportedAt
	assert.Equal(t, doc, fromDB, "PostgreSQL holds the exported state")

	onDB := startRelayProcess(t, t.TempDir(), "-database-url", dbURL)
	assert.Equal(t, key, actorKey(t, onDB.BaseURL), "the relay on PostgreSQL keeps its key")
	onDB.stop(t)

	require.NoError(t, runBackup("import", []string{"-data", back}, bytes.NewReader(out.Bytes()), nil))
	again, _ := exportDoc(t, back)
	again.ExportedAt = doc.ExportedAt
	assert.Equal(t, doc, again, "and back to a data directory")
}

func TestDatabaseURLFromEnvironment(t *testing.T) {
	dbURL := testDatabaseURL(t)
	t.Setenv("DATABASE_URL", dbURL)
	var out bytes.Buffer
	require.NoError(t, runBackup("export", nil, nil, &out), "export reads DATABASE_URL, not the missing -data")
	assert.Contains(t, out.String(), store.BackupFormat)
}

func TestConnectionStringPasswordNeverShown(t *testing.T) {
	// How a connection string is shown: pgstore's TestRedactConnString.
	// A database that cannot be reached: the error names it, without the
	// password.
	for _, conn := range []string{
		"postgres://relay:s3cret@127.0.0.1:1/relay?connect_timeout=2",
		"host=127.0.0.1 port=1 user=relay password=s3cret dbname=relay connect_timeout=2",
		"postgres://relay:s3cret@127.0.0.1:1/relay?bad_option=%zz",
	} {
		_, err := openRelayStore(t.TempDir(), conn)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "s3cret")
	}
}
