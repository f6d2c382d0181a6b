package filestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
)

// Values, subscribers and deduplication marks.
//
// On disk, bucket "values" maps 'v'+key to the value and bucket
// "subscribers" maps the actor id to the subscriber as JSON; both are also
// kept in memory. Bucket "seen" maps 's'+id to the mark's expiry (8 bytes,
// see encodeTime) and bucket "seen-expiry" indexes the marks by expiry
// (expiry + id -> nothing), for Reclaim.

// errActorIDChanged is returned by UpdateSubscriber when fn changes ActorID.
var errActorIDChanged = errors.New("store/filestore: UpdateSubscriber: fn changed ActorID")

// GetValue returns a copy of the value stored under key, or store.ErrNotFound.
func (s *Store) GetValue(ctx context.Context, key string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.values.Get(key)
}

// PutValue stores a copy of value under key, replacing any previous value,
// and returns once it is on disk.
func (s *Store) PutValue(ctx context.Context, key string, value []byte) error {
	if err := checkKey("value key", key); err != nil {
		return err
	}
	if err := checkValue(value); err != nil {
		return err
	}
	v := cloneBytes(value)
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		s.values[key] = v
		return putValueTx(key, v), nil
	})
}

func putValueTx(key string, v []byte) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket(bValues).Put(prefixed('v', key), v) }
}

// CreateValue stores a copy of value under key if key is absent and returns
// a copy of the value stored under key afterwards. It returns once that
// value is on disk, even if another caller stored it.
func (s *Store) CreateValue(ctx context.Context, key string, value []byte) ([]byte, error) {
	if err := checkKey("value key", key); err != nil {
		return nil, err
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	var out []byte
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		if v, ok := s.values[key]; ok {
			out = cloneBytes(v)
			return nil, nil
		}
		v := cloneBytes(value)
		s.values[key] = v
		out = cloneBytes(v)
		return putValueTx(key, v), nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteValue removes key; removing an absent key returns nil.
func (s *Store) DeleteValue(ctx context.Context, key string) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		if _, ok := s.values[key]; !ok {
			return nil, nil
		}
		delete(s.values, key)
		return func(tx *bolt.Tx) error { return tx.Bucket(bValues).Delete(prefixed('v', key)) }, nil
	})
}

// ListValues returns copies of the values whose key starts with prefix, in
// a new non-nil map.
func (s *Store) ListValues(ctx context.Context, prefix string) (map[string][]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.values.List(prefix), nil
}

// GetSubscriber returns a copy of the subscriber with the given actor id, or
// store.ErrNotFound.
func (s *Store) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	if err := s.rlock(ctx); err != nil {
		return store.Subscriber{}, err
	}
	defer s.mu.RUnlock()
	return s.subs.Get(actorID)
}

// UpdateSubscriber implements store.Store.UpdateSubscriber. It calls fn
// exactly once, while holding the store's lock: fn must not call the Store
// (it would deadlock) and should be quick. If fn changes ActorID, nothing is
// stored and an error is returned. Times are stored, and returned, in UTC.
// An empty actor id is refused with an error wrapping store.ErrEmptyID.
func (s *Store) UpdateSubscriber(ctx context.Context, actorID string, fn func(sub *store.Subscriber, found bool) error) (store.Subscriber, error) {
	if actorID == "" {
		return store.Subscriber{}, fmt.Errorf("store/filestore: UpdateSubscriber: %w", store.ErrEmptyID)
	}
	if err := checkKey("actor id", actorID); err != nil {
		return store.Subscriber{}, err
	}
	var stored store.Subscriber
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		sub, err := s.subs.Update(actorID, fn, errActorIDChanged)
		if err != nil {
			return nil, err
		}
		utcSubscriber(&sub)
		doc, err := json.Marshal(&sub)
		if err != nil {
			return nil, fmt.Errorf("store/filestore: encoding subscriber: %w", err)
		}
		s.subs.Put(sub) // a copy: fn may keep the pointer it was given
		stored = sub
		return func(tx *bolt.Tx) error { return tx.Bucket(bSubs).Put([]byte(actorID), doc) }, nil
	})
	if err != nil {
		return store.Subscriber{}, err
	}
	return stored, nil
}

// utcSubscriber puts the subscriber's times in UTC, as they come back from
// the file.
func utcSubscriber(s *store.Subscriber) {
	for _, t := range []*time.Time{&s.CreatedAt, &s.UpdatedAt, &s.LastSuccess, &s.LastFailure, &s.FailingSince} {
		*t = utc(*t)
	}
}

// DeleteSubscriber removes a subscriber; removing an absent one returns nil.
// Its queued deliveries are not touched (see DropDeliveries).
func (s *Store) DeleteSubscriber(ctx context.Context, actorID string) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		if !s.subs.Delete(actorID) {
			return nil, nil
		}
		return func(tx *bolt.Tx) error { return tx.Bucket(bSubs).Delete([]byte(actorID)) }, nil
	})
}

// ListSubscribers returns copies of the subscribers matching f, ordered by
// ActorID, in a non-nil slice. With f.Host set it only visits that host's
// subscribers.
func (s *Store) ListSubscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	return s.subs.List(f), nil
}

// encodeTime encodes t as 8 bytes that sort like the times: nanoseconds
// since 1970 with the sign bit flipped, big-endian. Times outside the years
// 1678 to 2262 are clamped.
func encodeTime(t time.Time) []byte {
	var n int64
	switch {
	case t.Before(minTime):
		n = math.MinInt64
	case t.After(maxTime):
		n = math.MaxInt64
	default:
		n = t.UnixNano()
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(n)^(1<<63))
	return b
}

// decodeTime decodes the first 8 bytes of b written by encodeTime.
func decodeTime(b []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(b)^(1<<63)))
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// expiryKey is the key of a mark in the seen-expiry index.
func expiryKey(until []byte, id string) []byte {
	k := make([]byte, 0, len(until)+len(id))
	return append(append(k, until...), id...)
}

// checkSeenID returns an error if id is too long for a deduplication mark.
// The longest key a mark is stored under is its expiry key, 8 bytes more
// than id, which MaxKeyLen leaves room for.
func checkSeenID(id string) error {
	return checkKey("id", id)
}

// MarkSeen implements store.Store.MarkSeen, as an Enqueue of one mark and
// nothing else. Marks expire by the wall clock (time.Now). MarkSeen returns
// once the mark is on disk. Expired marks are reclaimed by Reclaim. An until
// outside the years 1678 to 2262 is clamped to that range.
func (s *Store) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	err := s.Enqueue(ctx, nil, nil, store.Mark{ID: id, Until: until})
	if seen := (*store.SeenError)(nil); errors.As(err, &seen) {
		return false, nil
	}
	return err == nil, err
}

// takeMarks is the part of a change that takes marks: it returns a
// *store.SeenError if one of them is live, else the function that writes
// them in the change's transaction and the one to run once it is committed.
// A mark is live if it is on disk with a time after now, or in a change
// submitted but not yet committed (s.pendingMarks): checking both under
// s.mu, which every change that takes marks holds while it is submitted,
// makes the check and the write atomic. s.mu must be held exclusively.
func (s *Store) takeMarks(marks []store.Mark) (put func(*bolt.Tx) error, after func(), err error) {
	if len(marks) == 0 {
		return nil, nil, nil
	}
	now := s.now()
	var live []string
	var kept []store.Mark
	err = s.db.View(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bSeen)
		for i, m := range marks {
			if slices.ContainsFunc(marks[:i], func(o store.Mark) bool { return o.ID == m.ID }) {
				continue // a repeated id keeps its first mark
			}
			v := seen.Get(prefixed('s', m.ID))
			if s.pendingMarks[m.ID] > 0 || v != nil && decodeTime(v).After(now) {
				live = append(live, m.ID)
			} else if m.Until.After(now) { // a mark that is already expired is not kept
				kept = append(kept, m)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if live != nil {
		return nil, nil, &store.SeenError{IDs: live}
	}
	if kept == nil {
		return nil, nil, nil
	}
	for _, m := range kept {
		s.pendingMarks[m.ID]++
	}
	put = func(tx *bolt.Tx) error {
		seen, exp := tx.Bucket(bSeen), tx.Bucket(bSeenExpiry)
		for _, m := range kept {
			key := prefixed('s', m.ID)
			if old := seen.Get(key); old != nil { // expired
				if err := exp.Delete(expiryKey(old, m.ID)); err != nil {
					return err
				}
			}
			u := encodeTime(m.Until)
			if err := seen.Put(key, u); err != nil {
				return err
			}
			if err := exp.Put(expiryKey(u, m.ID), []byte{}); err != nil {
				return err
			}
		}
		return nil
	}
	after = func() { // on disk now
		for _, m := range kept {
			if s.pendingMarks[m.ID]--; s.pendingMarks[m.ID] == 0 {
				delete(s.pendingMarks, m.ID)
			}
		}
	}
	return put, after, nil
}

// ForgetSeen removes the mark on id, live or expired, and returns once that
// is on disk; forgetting an absent id returns nil.
func (s *Store) ForgetSeen(ctx context.Context, id string) error {
	if err := checkSeenID(id); err != nil {
		return err
	}
	return s.submitTx(ctx, func(tx *bolt.Tx) error {
		seen, exp := tx.Bucket(bSeen), tx.Bucket(bSeenExpiry)
		key := prefixed('s', id)
		old := seen.Get(key)
		if old == nil {
			return nil
		}
		if err := exp.Delete(expiryKey(old, id)); err != nil {
			return err
		}
		return seen.Delete(key)
	})
}

// reclaimBatch bounds the marks one commit removes, so that reclaiming a
// large backlog does not hold up other writes for long.
const reclaimBatch = 10_000

// Reclaim removes the deduplication marks that have expired and returns
// how many it removed. The store calls it in the background every
// Options.ReclaimInterval; it is exported for stores opened without that
// and for tests.
func (s *Store) Reclaim(ctx context.Context) (int, error) {
	total := 0
	for {
		n := 0
		err := s.submitTx(ctx, func(tx *bolt.Tx) error {
			n = 0
			seen, exp := tx.Bucket(bSeen), tx.Bucket(bSeenExpiry)
			limit := encodeTime(s.now())
			// Collect first: deleting under a cursor can make it skip keys.
			var expired [][]byte
			c := exp.Cursor()
			for k, _ := c.First(); k != nil && len(expired) < reclaimBatch; k, _ = c.Next() {
				if bytes.Compare(k[:8], limit) > 0 {
					break
				}
				expired = append(expired, bytes.Clone(k))
			}
			for _, k := range expired {
				key := prefixed('s', string(k[8:]))
				if v := seen.Get(key); v != nil && bytes.Equal(v, k[:8]) {
					if err := seen.Delete(key); err != nil {
						return err
					}
				}
				if err := exp.Delete(k); err != nil {
					return err
				}
			}
			n = len(expired)
			return nil
		})
		total += n
		if err != nil || n < reclaimBatch {
			return total, err
		}
	}
}
