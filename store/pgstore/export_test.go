package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// QueryRowForTest runs sql on one of s's connections.
func QueryRowForTest(ctx context.Context, s *Store, sql string) pgx.Row {
	return s.pool.QueryRow(ctx, sql)
}

// SetSweepDueForTest marks s as having unused payloads to reclaim (as a
// failed removal does).
func SetSweepDueForTest(s *Store) { s.sweepDue.Store(true) }
