package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/fedirelay/relay/store"
)

// errActorIDChanged is returned by UpdateSubscriber when fn changes ActorID.
var errActorIDChanged = errors.New("pgstore: UpdateSubscriber: fn changed ActorID")

// GetSubscriber returns the subscriber with the given actor id, or
// store.ErrNotFound.
func (s *Store) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	if err := s.check(ctx); err != nil {
		return store.Subscriber{}, err
	}
	if len(actorID) > maxKeyLen {
		return store.Subscriber{}, store.ErrNotFound
	}
	sub, err := getSubscriber(ctx, s.pool, actorID, false)
	return sub, s.wrap(ctx, "GetSubscriber", err)
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// getSubscriber reads one subscriber, locking its row with forUpdate.
func getSubscriber(ctx context.Context, q querier, actorID string, forUpdate bool) (store.Subscriber, error) {
	sql := `SELECT data FROM fedirelay_subscribers WHERE id_hash = fedirelay_hash($1)`
	if forUpdate {
		sql += ` FOR UPDATE`
	}
	var data []byte
	if err := q.QueryRow(ctx, sql, actorID).Scan(&data); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return store.Subscriber{}, store.ErrNotFound
		}
		return store.Subscriber{}, err
	}
	var sub store.Subscriber
	if err := json.Unmarshal(data, &sub); err != nil {
		return store.Subscriber{}, fmt.Errorf("subscriber %q: %w", actorID, err)
	}
	return sub, nil
}

// UpdateSubscriber implements store.Store.UpdateSubscriber: it reads the
// subscriber's row with SELECT … FOR UPDATE, so concurrent updates of one
// subscriber, in any process, apply one after the other. fn is called again
// if two callers created the same subscriber at once (the loser retries).
func (s *Store) UpdateSubscriber(ctx context.Context, actorID string, fn func(sub *store.Subscriber, found bool) error) (store.Subscriber, error) {
	if actorID == "" {
		return store.Subscriber{}, fmt.Errorf("pgstore: UpdateSubscriber: %w", store.ErrEmptyID)
	}
	if err := s.check(ctx); err != nil {
		return store.Subscriber{}, err
	}
	if err := tooLong("UpdateSubscriber", actorID); err != nil {
		return store.Subscriber{}, err
	}
	var out store.Subscriber
	var fnErr error
	err := s.tx(ctx, func(tx pgx.Tx) error {
		fnErr = nil
		sub, err := getSubscriber(ctx, tx, actorID, true)
		found := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if !found {
			sub = store.Subscriber{ActorID: actorID}
		}
		data, err := change(&sub, actorID, func(s *store.Subscriber) error { return fn(s, found) }, &fnErr)
		if err != nil {
			return err
		}
		if found {
			_, err = tx.Exec(ctx, `UPDATE fedirelay_subscribers SET host = $2, state = $3, data = $4
				WHERE id_hash = fedirelay_hash($1)`, actorID, sub.Host, string(sub.State), data)
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO fedirelay_subscribers (actor_id, host, state, data)
				VALUES ($1, $2, $3, $4)`, actorID, sub.Host, string(sub.State), data)
		}
		out = sub
		return err
	})
	if fnErr != nil && errors.Is(err, fnErr) {
		return store.Subscriber{}, fnErr
	}
	if err != nil {
		return store.Subscriber{}, s.wrap(ctx, "UpdateSubscriber", err)
	}
	// What was stored, read back as GetSubscriber would (JSON round trip:
	// times lose their monotonic reading and location).
	var stored store.Subscriber
	data, _ := json.Marshal(&out)
	if err := json.Unmarshal(data, &stored); err != nil {
		return store.Subscriber{}, err
	}
	return stored, nil
}

// DeleteSubscriber removes a subscriber; removing an absent one returns
// nil. Its queued deliveries are not touched.
func (s *Store) DeleteSubscriber(ctx context.Context, actorID string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if len(actorID) > maxKeyLen {
		return nil
	}
	_, err := s.pool.Exec(ctx, `DELETE FROM fedirelay_subscribers WHERE id_hash = fedirelay_hash($1)`, actorID)
	return s.wrap(ctx, "DeleteSubscriber", err)
}

// ListSubscribers returns the subscribers matching f, ordered by ActorID
// bytewise.
func (s *Store) ListSubscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	where, args := "true", []any{}
	if f.Host != "" {
		args = append(args, f.Host)
		where += " AND host = $1"
	}
	if f.State != "" {
		args = append(args, string(f.State))
		where += " AND state = $" + strconv.Itoa(len(args))
	}
	rows, err := s.pool.Query(ctx, `SELECT data FROM fedirelay_subscribers WHERE `+where+` ORDER BY actor_id`, args...)
	out := []store.Subscriber{}
	if err == nil {
		var data []byte
		_, err = pgx.ForEachRow(rows, []any{&data}, func() error {
			var sub store.Subscriber
			if err := json.Unmarshal(data, &sub); err != nil {
				return err
			}
			out = append(out, sub)
			return nil
		})
	}
	if err != nil {
		return nil, s.wrap(ctx, "ListSubscribers", err)
	}
	return out, nil
}

// UpdateSubscribers implements store.SubscribersUpdater in one
// transaction of two statements: it locks and reads the stored ones among
// actorIDs (SELECT … FOR UPDATE, in the order of their hashes, so that two
// calls do not wait for each other in a cycle), then writes what fn left
// of all of them in one UPDATE.
func (s *Store) UpdateSubscribers(ctx context.Context, actorIDs []string, fn func(sub *store.Subscriber) error) (missing []string, err error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(actorIDs))
	for _, id := range actorIDs {
		if id == "" || len(id) > maxKeyLen {
			missing = append(missing, id) // never stored
		} else {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) == 0 {
		return missing, nil
	}
	var fnErr error
	var stored []string
	err = s.tx(ctx, func(tx pgx.Tx) error {
		fnErr, stored = nil, stored[:0]
		rows, err := tx.Query(ctx, `SELECT actor_id, data FROM fedirelay_subscribers
			WHERE id_hash IN (SELECT fedirelay_hash(id) FROM unnest($1::text[]) AS id)
			ORDER BY id_hash FOR UPDATE`, ids)
		if err != nil {
			return err
		}
		var (
			hosts, states []string
			datas         [][]byte
		)
		var actor string
		var data []byte
		_, err = pgx.ForEachRow(rows, []any{&actor, &data}, func() error {
			var sub store.Subscriber
			if err := json.Unmarshal(data, &sub); err != nil {
				return fmt.Errorf("subscriber %q: %w", actor, err)
			}
			b, err := change(&sub, actor, fn, &fnErr)
			if err != nil {
				return err
			}
			stored = append(stored, actor)
			hosts, states, datas = append(hosts, sub.Host), append(states, string(sub.State)), append(datas, b)
			return nil
		})
		if err != nil || len(stored) == 0 {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE fedirelay_subscribers s SET host = u.host, state = u.state, data = u.data
			FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS u (actor_id, host, state, data)
			WHERE s.id_hash = fedirelay_hash(u.actor_id)`, stored, hosts, states, datas)
		return err
	})
	if fnErr != nil && errors.Is(err, fnErr) {
		return nil, fnErr
	}
	if err != nil {
		return nil, s.wrap(ctx, "UpdateSubscribers", err)
	}
	found := make(map[string]bool, len(stored))
	for _, id := range stored {
		found[id] = true
	}
	for _, id := range ids {
		if !found[id] {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// change calls fn on sub, the stored record of actorID, and returns what
// is to be stored (JSON). An error from fn, or errActorIDChanged if fn
// changed ActorID, is returned and also kept in *fnErr, which the callers
// return as it is instead of wrapping it.
func change(sub *store.Subscriber, actorID string, fn func(*store.Subscriber) error, fnErr *error) ([]byte, error) {
	if err := fn(sub); err != nil {
		*fnErr = err
		return nil, err
	}
	if sub.ActorID != actorID {
		*fnErr = errActorIDChanged
		return nil, errActorIDChanged
	}
	return json.Marshal(sub)
}
