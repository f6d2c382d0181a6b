package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/pgstore"
)

// testConfig, when set (only by this command's tests, in the relay child
// process they start), adjusts the relay's configuration before the relay
// is created: short leases, so that a test sees survivors take over a
// killed process's deliveries in seconds.
var testConfig func(*relay.Config)

// Store selection: the file store in -data (the default), or PostgreSQL
// when -database-url, or else the DATABASE_URL environment variable, names
// a database. Several relay processes may share one database (see
// docs/operating.md); a file store serves one process.

// databaseURLHelp is the help text of -database-url.
const databaseURLHelp = "PostgreSQL connection string (postgres://user:pass@host/db, or key=value pairs such as\n" +
	"\"host=/run/postgresql dbname=relay\" for a Unix socket); default $DATABASE_URL. With it, state\n" +
	"lives in the database instead of -data, and several relay processes may share it"

// databaseURLFlag defines -database-url on fs, defaulting to $DATABASE_URL.
func databaseURLFlag(fs *flag.FlagSet) *string {
	return fs.String("database-url", os.Getenv("DATABASE_URL"), databaseURLHelp)
}

// relayStore is the store the relay runs on, with what the command needs
// beside the store.Store methods.
type relayStore struct {
	store.Store
	// where describes the store for the operator, never with a password.
	where string
	// failed is closed when the store can no longer write (file store
	// only; nil otherwise); err tells why.
	failed <-chan struct{}
	err    func() error
	close  func() error
}

// Failed returns a channel closed when the store can no longer write.
func (s *relayStore) Failed() <-chan struct{} { return s.failed }

// Err returns why the store failed.
func (s *relayStore) Err() error { return s.err() }

// Close closes the store.
func (s *relayStore) Close() error { return s.close() }

// openRelayStore opens PostgreSQL if databaseURL is set, else the file
// store in dataDir.
func openRelayStore(dataDir, databaseURL string) (*relayStore, error) {
	if databaseURL == "" {
		st, err := openStore(dataDir)
		if err != nil {
			return nil, err
		}
		return &relayStore{Store: st, where: absPath(dataDir), failed: st.Failed(), err: st.Err, close: st.Close}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := pgstore.Open(ctx, databaseURL)
	if err != nil {
		// pgx's errors name the host, user and database, never the
		// password; redact anyway, in case one quotes the string.
		return nil, errors.New(redactPassword(err.Error(), databaseURL))
	}
	return &relayStore{
		Store: st,
		where: "PostgreSQL " + pgstore.RedactConnString(databaseURL),
		err:   func() error { return nil },
		close: st.Close,
	}, nil
}

// redactPassword removes the password of connString from msg.
func redactPassword(msg, connString string) string {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil || cfg.Password == "" {
		return msg // a string that does not parse is never quoted (see pgstore.Open)
	}
	return strings.ReplaceAll(msg, cfg.Password, "xxxxx")
}
