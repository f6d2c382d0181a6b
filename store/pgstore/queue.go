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

// deliveryColumns are the columns scanDelivery reads, in order.
const deliveryColumns = `d.id, d.payload_id, d.inbox, d.host, d.subscriber, d.activity_type, d.attempts,
	d.not_before, d.last_error, d.created, d.signer, d.lease_token, d.seq`

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

// Lease implements store.Store.Lease in one statement: it locks the oldest
// due deliveries that no other transaction holds (FOR UPDATE SKIP LOCKED,
// so processes leasing at once get different ones), keeps at most
// r.PerHost per host among them, and gives each a lease until r.Now +
// r.Duration and a new token. With r.PerHost or r.HostCap set it considers
// the first 2 × r.Limit due deliveries: a host whose backlog fills them
// all yields r.PerHost this time (callers skip hosts they are saturated
// with). With r.HostCap set it takes a transaction of three statements
// instead (see leaseCapped).
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
	if r.HostCap > 0 {
		return s.leaseCapped(ctx, r, skip, candidates)
	}
	rows, err := s.pool.Query(ctx, `WITH candidate AS (
			SELECT id_hash, host, not_before, seq FROM fedirelay_deliveries
			WHERE not_before <= $1 AND (lease_until IS NULL OR lease_until <= $1) AND host <> ALL($2)
			ORDER BY not_before, seq LIMIT $3
			FOR UPDATE SKIP LOCKED
		), picked AS (
			SELECT id_hash FROM (
				SELECT id_hash, not_before, seq,
					row_number() OVER (PARTITION BY host ORDER BY not_before, seq) AS n
				FROM candidate) c
			WHERE $4 <= 0 OR n <= $4
			ORDER BY not_before, seq LIMIT $5
		)
		UPDATE fedirelay_deliveries d SET lease_until = $6, lease_token = nextval('fedirelay_lease_tokens')
		FROM picked WHERE d.id_hash = picked.id_hash
		RETURNING `+deliveryColumns,
		r.Now, skip, candidates, r.PerHost, r.Limit, r.Now.Add(r.Duration))
	var got []leasedDelivery
	if err == nil {
		got, err = pgx.CollectRows(rows, scanDelivery)
	}
	if err != nil {
		return nil, s.wrap(ctx, "Lease", err)
	}
	return sortLeased(got), nil
}

// leaseCapped is Lease with r.HostCap set, in one transaction of two
// statements, each sent with its BEGIN or COMMIT in one round trip:
//
//  1. The first locks up to candidates due deliveries (FOR UPDATE SKIP
//     LOCKED), oldest first, leaving out the hosts in skip and those that
//     had r.HostCap live leases when the statement began, then takes a
//     transaction-scoped advisory lock per host among them, in the order
//     of their keys (so that two Leases do not wait for each other in a
//     cycle). From there to its commit, it is the only Lease of those
//     hosts.
//  2. The second, whose snapshot shows every lease committed by the
//     Leases that held those locks before, counts each host's live leases
//     and leases what fits under r.HostCap (and r.PerHost).
//
// Completions and retries take no such lock: they only lower the counts,
// so a Lease that misses one only leases less.
func (s *Store) leaseCapped(ctx context.Context, r store.LeaseRequest, skip []string, candidates int) ([]store.Delivery, error) {
	var got []leasedDelivery
	var err error
	for range maxTxRuns {
		got, err = s.leaseCappedOnce(ctx, r, skip, candidates)
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return nil, s.wrap(ctx, "Lease", err)
	}
	return sortLeased(got), nil
}

// leaseCappedOnce makes one attempt of leaseCapped.
func (s *Store) leaseCappedOnce(ctx context.Context, r store.LeaseRequest, skip []string, candidates int) (got []leasedDelivery, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release() // which closes a connection left in a transaction
	defer func() {
		if err != nil && !conn.Conn().IsClosed() && ctx.Err() == nil {
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
	}()
	var b pgx.Batch
	b.Queue("BEGIN")
	b.Queue(`WITH c AS (
			SELECT id_hash, host FROM fedirelay_deliveries
			WHERE not_before <= $1 AND (lease_until IS NULL OR lease_until <= $1) AND host <> ALL($2)
			AND host NOT IN (SELECT host FROM fedirelay_deliveries
				WHERE lease_until IS NOT NULL AND lease_until > $1
				GROUP BY host HAVING count(*) >= $4)
			ORDER BY not_before, seq LIMIT $3
			FOR UPDATE SKIP LOCKED
		), locked AS (
			SELECT pg_advisory_xact_lock(key) FROM (
				SELECT DISTINCT hashtextextended('fedirelay host ' || host, 0) AS key FROM c) k
			ORDER BY key
		)
		SELECT id_hash, host FROM c WHERE (SELECT count(*) FROM locked) >= 0`,
		r.Now, skip, candidates, r.HostCap)
	br := conn.SendBatch(ctx, &b)
	var hashes [][]byte
	var hosts []string
	if _, err = br.Exec(); err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var hash []byte
			var host string
			_, err = pgx.ForEachRow(rows, []any{&hash, &host}, func() error {
				hashes = append(hashes, slices.Clone(hash))
				if !slices.Contains(hosts, host) {
					hosts = append(hosts, host)
				}
				return nil
			})
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if len(hashes) == 0 {
		_, err = conn.Exec(ctx, "COMMIT")
		return nil, err
	}
	b = pgx.Batch{}
	b.Queue(`WITH live AS (
			SELECT host, count(*) AS n FROM fedirelay_deliveries
			WHERE host = ANY($1) AND lease_until IS NOT NULL AND lease_until > $2
			GROUP BY host
		), picked AS (
			SELECT c.id_hash FROM (
				SELECT id_hash, host, not_before, seq,
					row_number() OVER (PARTITION BY host ORDER BY not_before, seq) AS n
				FROM fedirelay_deliveries WHERE id_hash = ANY($3)) c
			LEFT JOIN live ON live.host = c.host
			WHERE ($4 <= 0 OR c.n <= $4) AND c.n <= $5::bigint - coalesce(live.n, 0)
			ORDER BY c.not_before, c.seq LIMIT $6
		)
		UPDATE fedirelay_deliveries d SET lease_until = $7, lease_token = nextval('fedirelay_lease_tokens')
		FROM picked WHERE d.id_hash = picked.id_hash
		RETURNING `+deliveryColumns,
		hosts, r.Now, hashes, r.PerHost, r.HostCap, r.Limit, r.Now.Add(r.Duration))
	b.Queue("COMMIT")
	br = conn.SendBatch(ctx, &b)
	rows, err := br.Query()
	if err == nil {
		got, err = pgx.CollectRows(rows, scanDelivery)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return got, err
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
// args) selects, by id_hash, and reclaims each payload that no delivery
// refers to any more; it returns how many deliveries it removed. It takes
// three statements: the payloads are locked (FOR UPDATE, in a fixed order)
// before they are checked, and the check, a statement of its own, then
// sees whatever a concurrent Complete of the payload's other deliveries,
// or an Enqueue of new ones, committed meanwhile, so that of concurrent
// removals the last one reclaims the payload.
func removeDeliveries(ctx context.Context, tx pgx.Tx, gone string, args ...any) (int, error) {
	rows, err := tx.Query(ctx, `DELETE FROM fedirelay_deliveries d WHERE d.id_hash IN (`+gone+`)
		RETURNING d.payload_hash`, args...)
	if err != nil {
		return 0, err
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil || len(hashes) == 0 {
		return 0, err
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM fedirelay_payloads WHERE id_hash = ANY($1)
		ORDER BY id_hash FOR UPDATE`, hashes); err != nil {
		return 0, err
	}
	_, err = tx.Exec(ctx, `DELETE FROM fedirelay_payloads p WHERE p.id_hash = ANY($1)
		AND NOT EXISTS (SELECT 1 FROM fedirelay_deliveries o WHERE o.payload_hash = p.id_hash)`, hashes)
	return len(hashes), err
}

// Complete implements store.Store.Complete in one transaction: one
// statement deletes the deliveries whose token is still valid, whatever
// their number, then the payloads they were the last to refer to are
// reclaimed (see removeDeliveries).
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
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := removeDeliveries(ctx, tx, `SELECT d.id_hash
			FROM unnest($1::text[], $2::bigint[]) AS r (id, token)
			JOIN fedirelay_deliveries d ON d.id_hash = fedirelay_hash(r.id)
			WHERE r.token IS NULL OR d.lease_token = r.token`, ids, tokens)
		return err
	})
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
	var current *int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT lease_token FROM fedirelay_deliveries
			WHERE id_hash = fedirelay_hash($1) FOR UPDATE`, d.ID).Scan(&current)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if t := token(d.Token); t != nil && (current == nil || *current != *t) {
			return store.ErrLeaseLost
		}
		_, err = tx.Exec(ctx, `UPDATE fedirelay_deliveries
			SET attempts = $2, not_before = $3, last_error = $4, lease_until = NULL
			WHERE id_hash = fedirelay_hash($1)`,
			d.ID, int32(min(max(d.Attempts, 0), 1<<31-1)), d.NotBefore, d.LastError)
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, queueChannel)
		}
		return err
	})
	return s.wrap(ctx, "Retry", err)
}

// DropDeliveries removes the deliveries matching f, leased or not, and
// reclaims payloads as Complete does, in one transaction.
func (s *Store) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var n int
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		where, args := deliveryFilter(f)
		n, err = removeDeliveries(ctx, tx, `SELECT id_hash FROM fedirelay_deliveries WHERE `+where, args...)
		return err
	})
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

// ShedDeliveries implements store.Store.ShedDeliveries in one transaction. A
// delivery counts as leased while it has a lease, expired or not, until
// Lease takes it again or Retry releases it. Concurrent calls for one host
// may together remove a few more than the excess over keep.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if len(types) == 0 {
		return 0, nil
	}
	var n int
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		n, err = removeDeliveries(ctx, tx, `SELECT id_hash FROM fedirelay_deliveries
			WHERE host = $1 AND activity_type = ANY($3) AND lease_until IS NULL
			ORDER BY created, not_before, seq
			LIMIT greatest((SELECT count(*) FROM fedirelay_deliveries WHERE host = $1) - $2, 0)
			FOR UPDATE SKIP LOCKED`, host, max(keep, 0), types)
		return err
	})
	return n, s.wrap(ctx, "ShedDeliveries", err)
}
