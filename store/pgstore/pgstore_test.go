package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/pgstore"
	"github.com/fedirelay/relay/store/storetest"
)

// databaseURL returns the connection string of the test database, from
// FEDIRELAY_TEST_DATABASE_URL. Without it the test is skipped, or fails
// when CI=true (CI never skips the PostgreSQL tests).
func databaseURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("FEDIRELAY_TEST_DATABASE_URL")
	if url != "" {
		return url
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("FEDIRELAY_TEST_DATABASE_URL is not set: CI runs the PostgreSQL tests (see .ci/postgres.sh)")
	}
	skipOnce.Do(func() {
		fmt.Fprintln(os.Stderr, "pgstore: PostgreSQL tests skipped: FEDIRELAY_TEST_DATABASE_URL is not set; run them with .ci/postgres.sh go test ./store/pgstore/")
	})
	t.Skip("FEDIRELAY_TEST_DATABASE_URL is not set; run with .ci/postgres.sh go test ./store/pgstore/")
	return ""
}

var (
	skipOnce   sync.Once
	schemaSeq  atomic.Int64
	schemaBase = fmt.Sprintf("t%d_%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
)

// newSchema creates an empty schema, dropped at the end of the test, and
// returns a connection string whose search_path is that schema.
func newSchema(t testing.TB) string {
	t.Helper()
	url := databaseURL(t)
	name := fmt.Sprintf("%s_%d", schemaBase, schemaSeq.Add(1))
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), "CREATE SCHEMA "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = conn.Exec(context.Background(), "DROP SCHEMA "+name+" CASCADE")
			_ = conn.Close(context.Background())
		}
	})
	return pgstore.WithParam(url, "search_path", name)
}

// open opens a Store on url, closed at the end of the test.
func open(t testing.TB, url string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t *testing.T) store.Store { return open(t, newSchema(t)) }

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore)
}

func TestDurable(t *testing.T) {
	urls := map[store.Store]string{}
	var mu sync.Mutex
	storetest.RunDurable(t, func(t *testing.T) store.Store {
		url := newSchema(t)
		s := open(t, url)
		mu.Lock()
		urls[s] = url
		mu.Unlock()
		return s
	}, func(t *testing.T, s store.Store) store.Store {
		mu.Lock()
		url := urls[s]
		mu.Unlock()
		require.NoError(t, s.(*pgstore.Store).Close())
		s2 := open(t, url)
		mu.Lock()
		urls[s2] = url
		mu.Unlock()
		return s2
	})
}
