// Package pgstore is a store.Store on PostgreSQL (13 or later), for relays
// that keep their state in the database they already run and back up, and
// for several relay processes sharing one database.
//
// Every method is one transaction (the removals of deliveries then reclaim
// unused payloads in a statement of their own), so any number of processes
// may use the same database (and schema) at once:
//
//   - Lease picks due deliveries with SELECT … FOR UPDATE SKIP LOCKED, one
//     Lease at a time under an advisory lock, and gives each a lease (a row
//     of fedirelay_leases) with a token from a sequence; Complete and Retry
//     act only under a delivery's latest token (see store.LeaseRef).
//   - Enqueue takes its deduplication marks with INSERT … ON CONFLICT,
//     replacing only expired ones, in the transaction that stores the work;
//     marks expire by the database's clock (now()).
//   - Enqueue, Retry and value changes are announced with NOTIFY; every Store
//     LISTENs on one connection of its own and passes them on through the
//     store.Notifier channels, so an idle process starts at once.
//
// Open creates the schema, or migrates it to this version, in one
// transaction under an advisory lock, so processes starting together do not
// race. Tables live in the first schema of the connection's search_path
// (public by default); give each relay its own database or search_path.
//
// Ids and keys are stored as text: they must be valid UTF-8 without NUL
// bytes (the relay's always are). Those longer than 64 KiB (16 ×
// store.PortableKeyLen) are refused with an error wrapping
// store.ErrTooLong.
package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedirelay/relay/store"
)

var (
	_ store.Store    = (*Store)(nil)
	_ store.Notifier = (*Store)(nil)
)

// Notification channels.
const (
	queueChannel  = "fedirelay_queue"
	valuesChannel = "fedirelay_values"
)

// Store is a store.Store on a PostgreSQL database. Create one with Open;
// it is safe for concurrent use by many goroutines and processes.
type Store struct {
	pool *pgxpool.Pool

	closeOnce sync.Once
	closed    chan struct{}
	listening sync.WaitGroup

	queueWake  chan struct{}
	valuesWake chan struct{}

	// sweepDue is set when a removal or its reclaim failed: the listener
	// reclaims every unused payload at its next reaping (see removed);
	// sweeping is set while it does.
	sweepDue, sweeping atomic.Bool
}

// The Store implements store.Store, store.Notifier and
// store.SubscribersUpdater.
var (
	_ store.Store              = (*Store)(nil)
	_ store.Notifier           = (*Store)(nil)
	_ store.SubscribersUpdater = (*Store)(nil)
)

// Open connects to the database named by connString (a postgres:// URL or
// key=value pairs, as libpq takes them, Unix socket directories included;
// pool_max_conns sets the pool size, at least 16 by default: more on
// machines with more CPUs),
// creates or migrates the schema and starts listening for other
// processes' notifications. ctx bounds the connection and the migration.
// The Store owns the connections: Close releases them.
func Open(ctx context.Context, connString string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgx's parse errors may quote the string, password included.
		return nil, errors.New("pgstore: invalid connection string")
	}
	if !strings.Contains(connString, "pool_max_conns") {
		// pgxpool's default, 4 (or the number of CPUs), leaves the relay's
		// workers waiting for connections; one is held for LISTEN.
		cfg.MaxConns = max(cfg.MaxConns, defaultMaxConns)
	}
	return OpenConfig(ctx, cfg)
}

// defaultMaxConns is the size of the connection pool unless the connection
// string sets pool_max_conns.
const defaultMaxConns = 16

// OpenConfig is Open with a parsed pool configuration, for callers that
// set pool sizes or connection parameters themselves. Unlike Open, it
// keeps cfg.MaxConns as given (pgxpool's default is 4, or the number of
// CPUs); one connection is held for LISTEN, so allow for the relay's
// workers.
//
// Each connection then sets, unless the configuration's runtime parameters,
// or the role's or database's settings, do (cfg itself is not changed):
//   - plan_cache_mode = force_custom_plan: every statement is planned for
//     its own arguments. The queue grows from nothing to many thousand
//     deliveries within seconds, and a plan cached while it was small (a
//     sequential scan) would read the whole queue at every call until the
//     next ANALYZE; planning costs far less.
//   - idle_in_transaction_session_timeout = 1min: the store's transactions
//     take milliseconds, and one left open by a stalled process must not
//     hold its locks (Leases wait for one another) for long.
func OpenConfig(ctx context.Context, cfg *pgxpool.Config) (*Store, error) {
	cfg = cfg.Copy()
	var settings []string
	for _, p := range []struct{ name, value, serverDefault string }{
		{"idle_in_transaction_session_timeout", "1min", "0"},
		{"plan_cache_mode", "force_custom_plan", "auto"},
	} {
		if _, set := cfg.ConnConfig.RuntimeParams[p.name]; !set {
			// Only over the server's default: a value the role or the
			// database sets stays.
			settings = append(settings, "SELECT set_config('"+p.name+"', '"+p.value+"', false) WHERE current_setting('"+
				p.name+"') = '"+p.serverDefault+"'")
		}
	}
	after := cfg.AfterConnect
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		for _, q := range settings {
			if _, err := conn.Exec(ctx, q); err != nil {
				return err
			}
		}
		if after != nil {
			return after(ctx, conn)
		}
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connecting: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	s := &Store{
		pool:       pool,
		closed:     make(chan struct{}),
		queueWake:  make(chan struct{}, 1),
		valuesWake: make(chan struct{}, 1),
	}
	s.sweepDue.Store(true) // payloads a process left between a removal and its reclaim
	s.sweep(ctx)
	s.listening.Add(1)
	go s.listen()
	return s, nil
}

// Close stops listening and closes the connections, waiting for calls in
// progress to return them. Afterwards every method returns
// store.ErrClosed. Closing a closed Store returns nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.listening.Wait()
		s.pool.Close()
	})
	return nil
}

// check returns ctx.Err() or store.ErrClosed when a call must not start.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closed:
		return store.ErrClosed
	default:
		return nil
	}
}

// wrap turns a failed call's error into the one the contract asks for:
// ctx.Err() if ctx ended, store.ErrClosed if the store was closed
// meanwhile, else err with the method's name.
func (s *Store) wrap(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	select {
	case <-s.closed:
		return store.ErrClosed
	default:
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrLeaseLost) {
		return err
	}
	var seen *store.SeenError
	if errors.As(err, &seen) {
		return err
	}
	return fmt.Errorf("pgstore: %s: %w", method, err)
}

// maxKeyLen is the longest id or key the store accepts: 16 times
// store.PortableKeyLen. Keys are looked up by hash, so the length only
// bounds the size of rows and statements.
const maxKeyLen = 16 * store.PortableKeyLen

// tooLong returns an error wrapping store.ErrTooLong if one of keys is
// longer than maxKeyLen.
func tooLong(method string, keys ...string) error {
	for _, k := range keys {
		if len(k) > maxKeyLen {
			return fmt.Errorf("pgstore: %s: %d bytes: %w", method, len(k), store.ErrTooLong)
		}
	}
	return nil
}

// retryable reports whether a transaction failed on a conflict with a
// concurrent one (unique or foreign key violation from a race,
// serialization failure, deadlock) and may be run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "23505", "23503", "40001", "40P01":
		return true
	}
	return false
}

// tx runs fn in a transaction, again if it failed on a conflict with a
// concurrent transaction (up to maxTxRuns times: each conflict means that
// another transaction made progress).
func (s *Store) tx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return runAgain(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// runAgain runs fn, again while it fails on a conflict with a concurrent
// transaction (see retryable), up to maxTxRuns times in all: each conflict
// means that another transaction made progress.
func runAgain(ctx context.Context, fn func() error) error {
	var err error
	for range maxTxRuns {
		err = fn()
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	return err
}

const maxTxRuns = 100

// GetValue returns the value stored under key, or store.ErrNotFound.
func (s *Store) GetValue(ctx context.Context, key string) ([]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if len(key) > maxKeyLen {
		return nil, store.ErrNotFound
	}
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM fedirelay_values WHERE key_hash = fedirelay_hash($1)`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	return nonNil(v), s.wrap(ctx, "GetValue", err)
}

// nonNil returns b, or an empty slice if b is nil.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// PutValue stores value under key and notifies the other processes.
func (s *Store) PutValue(ctx context.Context, key string, value []byte) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := tooLong("PutValue", key); err != nil {
		return err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO fedirelay_values (key, value) VALUES ($1, $2)
			ON CONFLICT (key_hash) DO UPDATE SET value = EXCLUDED.value`, key, nonNil(value))
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, valuesChannel)
		}
		return err
	})
	return s.wrap(ctx, "PutValue", err)
}

// CreateValue stores value under key if key is absent (INSERT … ON
// CONFLICT DO NOTHING) and returns the value stored under key afterwards.
func (s *Store) CreateValue(ctx context.Context, key string, value []byte) ([]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if err := tooLong("CreateValue", key); err != nil {
		return nil, err
	}
	var v []byte
	err := s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO fedirelay_values (key, value) VALUES ($1, $2)
			ON CONFLICT (key_hash) DO NOTHING`, key, nonNil(value))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			v = slices.Clone(nonNil(value))
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, valuesChannel)
			return err
		}
		// Read Committed: this statement sees the row of the transaction
		// the INSERT waited for.
		return tx.QueryRow(ctx, `SELECT value FROM fedirelay_values WHERE key_hash = fedirelay_hash($1)`, key).Scan(&v)
	})
	return nonNil(v), s.wrap(ctx, "CreateValue", err)
}

// DeleteValue removes key; removing an absent key returns nil.
func (s *Store) DeleteValue(ctx context.Context, key string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if len(key) > maxKeyLen {
		return nil
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM fedirelay_values WHERE key_hash = fedirelay_hash($1)`, key)
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, valuesChannel)
		}
		return err
	})
	return s.wrap(ctx, "DeleteValue", err)
}

// ListValues returns the values whose key starts with prefix.
func (s *Store) ListValues(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	rows, err := s.pool.Query(ctx, `SELECT key, value FROM fedirelay_values WHERE starts_with(key, $1)`, prefix)
	if err == nil {
		var k string
		var v []byte
		_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
			out[k] = slices.Clone(nonNil(v))
			return nil
		})
	}
	if err != nil {
		return nil, s.wrap(ctx, "ListValues", err)
	}
	return out, nil
}

// MarkSeen implements store.Store.MarkSeen; marks expire by the
// database's clock.
func (s *Store) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	if err := tooLong("MarkSeen", id); err != nil {
		return false, err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := takeMarks(ctx, tx, []store.Mark{{ID: id, Until: until}})
		return err
	})
	var seen *store.SeenError
	if errors.As(err, &seen) {
		return false, nil
	}
	return err == nil, s.wrap(ctx, "MarkSeen", err)
}

// takeMarks takes marks (the first of repeated ids) and returns the ids of
// those that were live, in order; it takes them all only if none was.
// Marks whose Until is not after the database's now are checked, not kept.
func takeMarks(ctx context.Context, tx pgx.Tx, marks []store.Mark) ([]string, error) {
	if len(marks) == 0 {
		return nil, nil
	}
	var ids []string
	var untils []time.Time
	for _, m := range marks {
		if !slices.Contains(ids, m.ID) {
			ids = append(ids, m.ID)
			untils = append(untils, m.Until)
		}
	}
	// An expired mark is replaced; a live one is left and reported by its
	// absence from the result. The INSERT waits for concurrent
	// transactions taking the same ids, so of two only one gets a row back.
	rows, err := tx.Query(ctx, `INSERT INTO fedirelay_marks AS m (id, until)
		SELECT * FROM unnest($1::text[], $2::timestamptz[])
		ON CONFLICT (id_hash) DO UPDATE SET until = EXCLUDED.until WHERE m.until <= now()
		RETURNING m.id`, ids, untils)
	if err != nil {
		return nil, err
	}
	taken, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var live []string
	for _, id := range ids {
		if !slices.Contains(taken, id) {
			live = append(live, id)
		}
	}
	if live != nil {
		return live, &store.SeenError{IDs: live}
	}
	// Check-only marks (already expired) need not stay; the listener's
	// periodic reaping would reclaim them anyway.
	_, err = tx.Exec(ctx, `DELETE FROM fedirelay_marks
		WHERE id_hash IN (SELECT fedirelay_hash(id) FROM unnest($1::text[]) AS id) AND until <= now()`, ids)
	return nil, err
}

// ForgetSeen removes the mark on id.
func (s *Store) ForgetSeen(ctx context.Context, id string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if len(id) > maxKeyLen {
		return nil
	}
	_, err := s.pool.Exec(ctx, `DELETE FROM fedirelay_marks WHERE id_hash = fedirelay_hash($1)`, id)
	return s.wrap(ctx, "ForgetSeen", err)
}

// migrations are the schema versions, in order: migrations/NNN_name.sql.
//
//go:embed migrations/*.sql
var migrations embed.FS

// SchemaVersion is the version of the schema this package creates and
// uses: the number of its newest migration.
const SchemaVersion = 5

// migrate brings the schema to SchemaVersion in one transaction. An
// advisory lock serializes processes starting at once; a database whose
// schema is newer than this package is refused.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	slices.Sort(files)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('fedirelay schema ' || current_schema()))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS fedirelay_schema (version integer NOT NULL)`); err != nil {
			return err
		}
		var version int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM fedirelay_schema`).Scan(&version); err != nil {
			return err
		}
		if version > SchemaVersion {
			return fmt.Errorf("schema version %d is newer than this program's %d", version, SchemaVersion)
		}
		for _, f := range files {
			n, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(f, "migrations/"), "_", 2)[0])
			if err != nil {
				return fmt.Errorf("migration %s: %w", f, err)
			}
			if n <= version {
				continue
			}
			sql, err := migrations.ReadFile(f)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return fmt.Errorf("migration %s: %w", f, err)
			}
			version = n
		}
		_, err := tx.Exec(ctx, `DELETE FROM fedirelay_schema; INSERT INTO fedirelay_schema VALUES (`+strconv.Itoa(version)+`)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: migrating the schema: %w", err)
	}
	return nil
}
