package pgstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fedirelay/relay/store"
)

// Enqueue implements store.Store.Enqueue in one transaction: the marks
// (see MarkSeen), the payloads (INSERT … ON CONFLICT DO NOTHING) and the
// deliveries (likewise), then a NOTIFY that wakes idle processes once the
// transaction commits. A delivery whose payload is neither given nor
// stored fails the transaction (a foreign key). Within one call the first
// payload or delivery with a given ID wins; deliveries are leased in the
// order given among equal NotBefore.
func (s *Store) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery, marks ...store.Mark) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	for _, p := range payloads {
		if p.ID == "" {
			return errors.New("pgstore: Enqueue: empty payload ID")
		}
		if err := tooLong("Enqueue", p.ID); err != nil {
			return err
		}
	}
	for _, d := range deliveries {
		if d.ID == "" {
			return errors.New("pgstore: Enqueue: empty delivery ID")
		}
		if err := tooLong("Enqueue", d.ID, d.PayloadID); err != nil {
			return err
		}
	}
	for _, m := range marks {
		if err := tooLong("Enqueue", m.ID); err != nil {
			return err
		}
	}
	pIDs := make([]string, 0, len(payloads))
	pBodies := make([][]byte, 0, len(payloads))
	for _, p := range payloads {
		if !slices.Contains(pIDs, p.ID) {
			pIDs = append(pIDs, p.ID)
			pBodies = append(pBodies, nonNil(p.Body))
		}
	}
	n := len(deliveries)
	var (
		ids, payloadIDs, inboxes, hosts, subs, types, lastErrors = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		attempts                                                 = make([]int32, n)
		notBefore, created                                       = make([]time.Time, n), make([]time.Time, n)
		signers                                                  = make([]string, n)
	)
	for i, d := range deliveries {
		ids[i], payloadIDs[i], inboxes[i], hosts[i] = d.ID, d.PayloadID, d.Inbox, d.Host
		subs[i], types[i], lastErrors[i] = d.Subscriber, d.ActivityType, d.LastError
		attempts[i] = int32(min(max(d.Attempts, 0), 1<<31-1))
		notBefore[i], created[i], signers[i] = d.NotBefore, d.Created, d.Signer
	}
	// A delivery whose payload is not in this call must find it stored: if
	// it does not, trying again cannot help. One whose payload is, may
	// lose it to a concurrent reclaim between the two inserts: that is
	// worth another run.
	allGiven := true
	for _, d := range deliveries {
		allGiven = allGiven && slices.Contains(pIDs, d.PayloadID)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := takeMarks(ctx, tx, marks); err != nil {
			return err
		}
		if len(deliveries) == 0 {
			return nil
		}
		if len(pIDs) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO fedirelay_payloads (id, body)
				SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (id_hash) DO NOTHING`, pIDs, pBodies); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO fedirelay_deliveries
				(id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created, signer)
			SELECT id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created, signer
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::integer[],
				$8::timestamptz[], $9::text[], $10::timestamptz[], $11::text[])
				WITH ORDINALITY AS d (id, payload_id, inbox, host, subscriber, activity_type, attempts, not_before, last_error, created, signer, ord)
			ORDER BY ord
			ON CONFLICT (id_hash) DO NOTHING`,
			ids, payloadIDs, inboxes, hosts, subs, types, attempts, notBefore, lastErrors, created, signers); err != nil {
			var pe *pgconn.PgError
			if !allGiven && errors.As(err, &pe) && pe.Code == "23503" {
				return errMissingPayload
			}
			return err
		}
		// New payloads that no delivery refers to would never be removed.
		if len(pIDs) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM fedirelay_payloads p
				WHERE p.id_hash IN (SELECT fedirelay_hash(id) FROM unnest($1::text[]) AS id)
				AND NOT EXISTS (SELECT 1 FROM fedirelay_deliveries d WHERE d.payload_hash = p.id_hash)`, pIDs); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, queueChannel)
		return err
	})
	return s.wrap(ctx, "Enqueue", err)
}

// errMissingPayload fails an Enqueue of a delivery whose payload is
// neither given nor stored.
var errMissingPayload = errors.New("a delivery's payload is neither given nor stored")

// deliveryColumns are the columns scanDelivery reads, in order.
const deliveryColumns = `d.id, d.payload_id, d.inbox, d.host, d.subscriber, d.activity_type, d.attempts,
	d.not_before, d.last_error, d.created, d.signer, leased.token, d.seq`

// leasedDelivery is a delivery and its place in enqueue order.
type leasedDelivery struct {
	store.Delivery
	seq int64
}

// scanDelivery reads the deliveryColumns of a row.
func scanDelivery(row pgx.CollectableRow) (leasedDelivery, error) {
	var d leasedDelivery
	var token *int64
	err := row.Scan(&d.ID, &d.PayloadID, &d.Inbox, &d.Host, &d.Subscriber, &d.ActivityType, &d.Attempts,
		&d.NotBefore, &d.LastError, &d.Created, &d.Signer, &token, &d.seq)
	d.NotBefore, d.Created = d.NotBefore.UTC(), d.Created.UTC()
	if token != nil {
		d.Token = strconv.FormatInt(*token, 10)
	}
	return d, err
}

// leaseStatement leases deliveries, in one statement: it locks up to $3
// due deliveries ($1 is the time) that no live lease holds and no other
// transaction has locked (FOR UPDATE SKIP LOCKED: those a Complete, Retry
// or removal is changing are passed over), oldest first, leaving out the
// hosts in $2 and, with a host cap $4 > 0, the hosts that have $4 live
// leases; it keeps what fits
// under $5 per host and under the cap, $6 in all, and gives each a lease
// row (fedirelay_leases) until $7 with a new token. A lease committed by
// another Lease since the statement began is never taken over: the
// INSERT's conflict clause replaces only a lease that has run out. The
// deliveries are returned as locked: a Retry committed since the
// statement began shows.
const leaseStatement = `WITH live AS (
		SELECT host, count(*) AS n FROM fedirelay_leases
		WHERE $4 > 0 AND lease_until > $1
		GROUP BY host
	), c AS (
		SELECT d.id_hash, d.id, d.payload_id, d.inbox, d.host, d.subscriber, d.activity_type, d.attempts,
			d.not_before, d.last_error, d.created, d.signer, d.seq
		FROM fedirelay_deliveries d
		WHERE d.not_before <= $1 AND d.host <> ALL($2)
		AND NOT EXISTS (SELECT 1 FROM fedirelay_leases l WHERE l.id_hash = d.id_hash AND l.lease_until > $1)
		AND d.host NOT IN (SELECT host FROM live WHERE n >= $4)
		ORDER BY d.not_before, d.seq LIMIT $3
		FOR UPDATE OF d SKIP LOCKED
	), picked AS (
		SELECT c.id_hash, c.host FROM (
			SELECT id_hash, host, not_before, seq,
				row_number() OVER (PARTITION BY host ORDER BY not_before, seq) AS n
			FROM c) c
		LEFT JOIN live ON live.host = c.host
		WHERE ($5 <= 0 OR c.n <= $5) AND ($4 <= 0 OR c.n <= $4::bigint - coalesce(live.n, 0))
		ORDER BY c.not_before, c.seq LIMIT $6
	), leased AS (
		INSERT INTO fedirelay_leases AS l (id_hash, host, lease_until, token)
		SELECT id_hash, host, $7, nextval('fedirelay_lease_tokens') FROM picked
		ON CONFLICT (id_hash) DO UPDATE SET lease_until = excluded.lease_until, token = excluded.token
			WHERE l.lease_until <= $1
		RETURNING l.id_hash, l.token
	)
	SELECT ` + deliveryColumns + ` FROM leased JOIN c d ON d.id_hash = leased.id_hash`

// Lease implements store.Store.Lease with leaseStatement, in a
// transaction sent in one round trip (see pipelined), after a
// transaction-scoped advisory lock of the schema's queue: Leases of all
// processes run one at a time, each a statement of a few milliseconds at
// most (and the relay leases for many workers at once). The statement's
// snapshot, taken once the lock is held, so shows every lease committed
// before it: it never passes over a delivery as unleased that another
// Lease has just taken (it would then lose it at the insert and return
// less than is due), and with r.HostCap the hosts' counts of live leases
// are exact. Completions and retries take no such lock: they only lower
// the counts and end leases, and a delivery they change or remove is
// checked again when locked.
//
// A lease is a row of its own, so leasing writes no new version of the
// deliveries. With r.PerHost or r.HostCap set it considers the first 2 ×
// r.Limit due deliveries: a host whose backlog fills them all yields
// r.PerHost this time (callers skip hosts they are saturated with).
func (s *Store) Lease(ctx context.Context, r store.LeaseRequest) ([]store.Delivery, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if r.Limit <= 0 {
		return nil, fmt.Errorf("pgstore: Lease: Limit %d must be > 0", r.Limit)
	}
	skip := []string{} // not nil: NULL would match no host
	for h, ok := range r.SkipHosts {
		if ok {
			skip = append(skip, h)
		}
	}
	candidates := r.Limit
	if r.PerHost > 0 || r.HostCap > 0 {
		candidates = min(r.Limit*2, 100_000)
	}
	var got []leasedDelivery
	err := s.pipelined(ctx, func(b *pgx.Batch) {
		b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended('fedirelay lease ' || current_schema(), 0))`)
		b.Queue(leaseStatement, r.Now, skip, candidates, max(r.HostCap, 0), r.PerHost, r.Limit, r.Now.Add(r.Duration))
	}, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err == nil {
			got, err = pgx.CollectRows(rows, scanDelivery)
		}
		return err
	})
	if err != nil {
		return nil, s.wrap(ctx, "Lease", err)
	}
	return sortLeased(got), nil
}

// sortLeased returns the deliveries of got in lease order: by NotBefore,
// then enqueue order.
func sortLeased(got []leasedDelivery) []store.Delivery {
	slices.SortFunc(got, func(a, b leasedDelivery) int {
		return cmp.Or(a.NotBefore.Compare(b.NotBefore), cmp.Compare(a.seq, b.seq))
	})
	out := make([]store.Delivery, len(got))
	for i := range got {
		out[i] = got[i].Delivery
	}
	return out
}

// GetPayload returns the body of a stored payload, or store.ErrNotFound.
func (s *Store) GetPayload(ctx context.Context, id string) ([]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if len(id) > maxKeyLen {
		return nil, store.ErrNotFound
	}
	var body []byte
	err := s.pool.QueryRow(ctx, `SELECT body FROM fedirelay_payloads WHERE id_hash = fedirelay_hash($1)`, id).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	return nonNil(body), s.wrap(ctx, "GetPayload", err)
}

// token returns the number of a lease token: -1 (no delivery's) for one
// this store did not give, nil for the empty token (whoever holds it).
func token(t string) *int64 {
	if t == "" {
		return nil
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		n = -1
	}
	return &n
}

// removeDeliveries removes the deliveries that the query gone (with
// args) selects, by id_hash, in tx, and returns how many it removed and
// the hashes of their payloads, for reclaim once tx is committed.
func removeDeliveries(ctx context.Context, tx pgx.Tx, gone string, args ...any) (int, [][]byte, error) {
	rows, err := tx.Query(ctx, removeSQL(gone), args...)
	if err != nil {
		return 0, nil, err
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	return len(hashes), hashes, err
}

// removeSQL is the statement that removes the deliveries that the query
// gone selects, by id_hash, and returns their payloads' hashes. Their
// lease rows go with them (ON DELETE CASCADE).
func removeSQL(gone string) string {
	return `DELETE FROM fedirelay_deliveries d WHERE d.id_hash IN (` + gone + `) RETURNING d.payload_hash`
}

// lockSQL locks the deliveries with the ids $1 (FOR UPDATE, in the order
// of their hashes, so that two transactions do not wait for each other in
// a cycle) until the transaction ends. Lease locks a delivery before it
// leases it and skips those locked, so once they are locked no Lease can
// take them until the transaction ends, and a statement that begins
// afterwards sees every lease given to them before: it can check lease
// tokens. (A statement that merely locked as it went would not: a lease
// row is another table's, and a delivery row that a Lease only locked is
// not checked again.)
const lockSQL = `SELECT 1 FROM fedirelay_deliveries
	WHERE id_hash IN (SELECT fedirelay_hash(id) FROM unnest($1::text[]) AS id)
	ORDER BY id_hash FOR UPDATE`

// pipelined runs a transaction in one round trip: BEGIN, the statements
// that queue adds, COMMIT. read reads the results of queue's statements,
// in order. It runs again on a conflict with a concurrent transaction, as
// tx does.
func (s *Store) pipelined(ctx context.Context, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	return runAgain(ctx, func() error { return s.pipelinedOnce(ctx, queue, read) })
}

// pipelinedOnce makes one attempt of pipelined.
func (s *Store) pipelinedOnce(ctx context.Context, queue func(*pgx.Batch), read func(pgx.BatchResults) error) (err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release() // which closes a connection left in a transaction
	defer func() {
		if err != nil && !conn.Conn().IsClosed() && ctx.Err() == nil {
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
	}()
	var b pgx.Batch
	b.Queue("BEGIN")
	queue(&b)
	b.Queue("COMMIT")
	br := conn.SendBatch(ctx, &b)
	if _, err = br.Exec(); err == nil {
		err = read(br)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// reclaimSQL removes the payloads among $1 that no delivery refers to:
// every removal of deliveries runs it once the removal is committed, with
// the payloads of the deliveries removed (see removed). Of removals that
// each take away some of a payload's last deliveries, the one whose
// reclaim starts last starts after all of them committed, so its snapshot
// shows the payload unused and removes it: no removal holds a lock on a
// payload while it waits for its own commit. When an Enqueue gives one of
// the payloads a new delivery meanwhile, the foreign key fails the
// statement, which then removes nothing; it runs again (see runAgain),
// and its new snapshot shows that delivery: that payload stays, the
// others go.
const reclaimSQL = `DELETE FROM fedirelay_payloads p WHERE p.id_hash = ANY($1)
	AND NOT EXISTS (SELECT 1 FROM fedirelay_deliveries o WHERE o.payload_hash = p.id_hash)`

// sweepSQL removes every payload that no delivery refers to, as
// reclaimSQL does for some.
const sweepSQL = `DELETE FROM fedirelay_payloads p
	WHERE NOT EXISTS (SELECT 1 FROM fedirelay_deliveries o WHERE o.payload_hash = p.id_hash)`

// removed ends a removal of deliveries that returned err: it reclaims
// the payloads of the deliveries removed (reclaimSQL). A removal that
// failed (its commit may have been made all the same) or whose reclaim
// failed may leave unused payloads, which cost only space: it sets
// sweepDue, and the listener sweeps at its next periodic reaping (see
// sweep), off the removals' path. Open sweeps too (a process may end
// between a removal and its reclaim).
func (s *Store) removed(ctx context.Context, hashes [][]byte, err error) {
	if err == nil && len(hashes) > 0 {
		err = runAgain(ctx, func() error {
			_, err := s.pool.Exec(ctx, reclaimSQL, hashes)
			return err
		})
	}
	if err != nil {
		s.sweepDue.Store(true)
	}
}

// sweep removes every unused payload (sweepSQL) if a removal may have
// left some (sweepDue), and leaves sweepDue set if it fails.
func (s *Store) sweep(ctx context.Context) {
	if !s.sweepDue.Swap(false) {
		return
	}
	err := runAgain(ctx, func() error {
		_, err := s.pool.Exec(ctx, sweepSQL)
		return err
	})
	if err != nil {
		s.sweepDue.Store(true)
	}
}

// Complete implements store.Store.Complete: a transaction sent in one
// round trip (see pipelined) locks the deliveries (lockSQL), then deletes
// those whose token is still valid, whatever their number, in one
// statement; then a statement of its own reclaims the payloads they were
// the last to refer to (see removed).
func (s *Store) Complete(ctx context.Context, refs ...store.LeaseRef) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if len(refs) == 0 {
		return nil
	}
	ids := make([]string, 0, len(refs))
	tokens := make([]*int64, 0, len(refs))
	for _, r := range refs {
		if len(r.ID) <= maxKeyLen {
			ids = append(ids, r.ID)
			tokens = append(tokens, token(r.Token))
		}
	}
	var hashes [][]byte
	err := s.pipelined(ctx, func(b *pgx.Batch) {
		b.Queue(lockSQL, ids)
		b.Queue(removeSQL(`SELECT d.id_hash
			FROM unnest($1::text[], $2::bigint[]) AS r (id, token)
			JOIN fedirelay_deliveries d ON d.id_hash = fedirelay_hash(r.id)
			LEFT JOIN fedirelay_leases l ON l.id_hash = d.id_hash
			WHERE r.token IS NULL OR coalesce(l.token, d.released_token) = r.token`), ids, tokens)
	}, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err == nil {
			hashes, err = pgx.CollectRows(rows, pgx.RowTo[[]byte])
		}
		return err
	})
	s.removed(ctx, hashes, err)
	return s.wrap(ctx, "Complete", err)
}

// Retry implements store.Store.Retry: it stores d.Attempts, d.NotBefore and
// d.LastError and releases the lease if d.Token is still valid.
func (s *Store) Retry(ctx context.Context, d store.Delivery) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if len(d.ID) > maxKeyLen {
		return store.ErrNotFound
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var released *int64
		err := tx.QueryRow(ctx, `SELECT released_token FROM fedirelay_deliveries
			WHERE id_hash = fedirelay_hash($1) FOR UPDATE`, d.ID).Scan(&released)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		// Read now that the delivery is locked: no Lease can take it until
		// this transaction ends, and one that did before is seen.
		current := released
		err = tx.QueryRow(ctx, `DELETE FROM fedirelay_leases WHERE id_hash = fedirelay_hash($1) RETURNING token`, d.ID).Scan(&current)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if t := token(d.Token); t != nil && (current == nil || *current != *t) {
			return store.ErrLeaseLost // the lease row's deletion is rolled back
		}
		_, err = tx.Exec(ctx, `UPDATE fedirelay_deliveries
			SET attempts = $2, not_before = $3, last_error = $4, released_token = $5
			WHERE id_hash = fedirelay_hash($1)`,
			d.ID, int32(min(max(d.Attempts, 0), 1<<31-1)), d.NotBefore, d.LastError, current)
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, queueChannel)
		}
		return err
	})
	return s.wrap(ctx, "Retry", err)
}

// DropDeliveries removes the deliveries matching f, leased or not, in one
// transaction, and reclaims payloads as Complete does.
func (s *Store) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var n int
	var hashes [][]byte
	err := s.tx(ctx, func(tx pgx.Tx) (err error) {
		where, args := deliveryFilter(f)
		n, hashes, err = removeDeliveries(ctx, tx, `SELECT id_hash FROM fedirelay_deliveries WHERE `+where, args...)
		return err
	})
	s.removed(ctx, hashes, err)
	return n, s.wrap(ctx, "DropDeliveries", err)
}

// deliveryFilter returns the WHERE condition selecting f and its
// arguments, naming only the set fields so that the hash indexes serve it.
func deliveryFilter(f store.DeliveryFilter) (string, []any) {
	where, args := "true", []any{}
	if f.Host != "" {
		args = append(args, f.Host)
		where += " AND host = $" + strconv.Itoa(len(args))
	}
	if f.Subscriber != "" {
		args = append(args, f.Subscriber)
		where += " AND subscriber = $" + strconv.Itoa(len(args))
	}
	return where, args
}

// CountDeliveries returns how many deliveries, leased or not, match f.
func (s *Store) CountDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var n int64
	where, args := deliveryFilter(f)
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM fedirelay_deliveries WHERE `+where, args...).Scan(&n)
	return int(n), s.wrap(ctx, "CountDeliveries", err)
}

// ShedDeliveries implements store.Store.ShedDeliveries in one
// transaction, then reclaims payloads as Complete does. A delivery counts
// as leased while it has a lease, expired or not, until Lease takes it
// again or Retry releases it. Concurrent calls for one host may together
// remove a few more than the excess over keep.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if len(types) == 0 {
		return 0, nil
	}
	var n int
	var hashes [][]byte
	err := s.tx(ctx, func(tx pgx.Tx) (err error) {
		rows, err := tx.Query(ctx, `SELECT id_hash FROM fedirelay_deliveries d
			WHERE host = $1 AND activity_type = ANY($3)
			AND NOT EXISTS (SELECT 1 FROM fedirelay_leases l WHERE l.id_hash = d.id_hash)
			ORDER BY created, not_before, seq
			LIMIT greatest((SELECT count(*) FROM fedirelay_deliveries WHERE host = $1) - $2, 0)
			FOR UPDATE OF d SKIP LOCKED`, host, max(keep, 0), types)
		if err != nil {
			return err
		}
		locked, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		if err != nil || len(locked) == 0 {
			return err
		}
		// Checked again now that they are locked: a Lease that took one
		// since the first statement began has committed its lease row.
		n, hashes, err = removeDeliveries(ctx, tx, `SELECT d.id_hash FROM fedirelay_deliveries d
			WHERE d.id_hash = ANY($1)
			AND NOT EXISTS (SELECT 1 FROM fedirelay_leases l WHERE l.id_hash = d.id_hash)`, locked)
		return err
	})
	s.removed(ctx, hashes, err)
	return n, s.wrap(ctx, "ShedDeliveries", err)
}
