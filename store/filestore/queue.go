package filestore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/internal/queueindex"
)

// The delivery queue.
//
// On disk, bucket "deliveries" maps a delivery's enqueue sequence number
// (8 bytes, big-endian) to the delivery as JSON (record), and bucket
// "payloads" maps a payload's ID to its body. Keying deliveries by sequence
// makes Enqueue append to the end of the B+tree and Complete, which mostly
// finishes deliveries in the order they were queued, touch few pages.
//
// In memory, every queued delivery is an item of the index shared with
// memstore (store/internal/queueindex): an unleased item sits in the ready
// heap of its host, ordered by (NotBefore, seq); hosts whose ready heap is
// not empty sit in a heap ordered by their first ready item; leased items
// sit in a heap ordered by lease expiry. Lease thus costs O((k + s) log n)
// for k leased deliveries and s skipped hosts. An item's sequence number is
// its key on disk. Payload bodies are not kept in memory, except a new body
// until its commit (so that GetPayload of a delivery Lease returned never
// misses it).
//
// Items are kept small, since a large backlog holds one per delivery (96
// bytes, plus its ID and its entries in the index's maps and heaps): what
// many deliveries share is stored once and referred to, and times are
// stored as seconds and nanoseconds (see queueindex).

// record is a delivery as stored on disk.
type record struct {
	ID           string    `json:"id"`
	PayloadID    string    `json:"p"`
	Inbox        string    `json:"i"`
	Host         string    `json:"h"`
	Subscriber   string    `json:"s,omitempty"`
	ActivityType string    `json:"t,omitempty"`
	Attempts     int       `json:"a,omitempty"`
	NotBefore    time.Time `json:"n"`
	LastError    string    `json:"e,omitempty"`
	Created      time.Time `json:"c"`
	Signer       string    `json:"g,omitempty"`
	Token        string    `json:"-"` // leases live in memory
}

// queue is the index of queued deliveries. Items have no extension.
type queue = *queueindex.Index[struct{}]

// item is a queued delivery.
type item = queueindex.Item[struct{}]

func newQueue() queue { return queueindex.New[struct{}]("store/filestore") }

// recordOfItem returns the item as stored on disk.
func recordOfItem(it *item) record {
	return record(it.Delivery())
}

// utc returns t in UTC, or the zero time.
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

// recordOf returns d as stored on disk, times in UTC.
func recordOf(d *store.Delivery) record {
	return record{
		ID:           d.ID,
		PayloadID:    d.PayloadID,
		Inbox:        d.Inbox,
		Host:         d.Host,
		Subscriber:   d.Subscriber,
		ActivityType: d.ActivityType,
		Attempts:     d.Attempts,
		NotBefore:    utc(d.NotBefore),
		LastError:    d.LastError,
		Created:      utc(d.Created),
		Signer:       d.Signer,
	}
}

// encodeRecord returns the value stored for a delivery.
func encodeRecord(r *record) ([]byte, error) {
	doc, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("store/filestore: encoding delivery: %w", err)
	}
	return doc, nil
}

// seqKey returns the key of the delivery with sequence number seq.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}

// decodeRecord decodes a key and value written for a delivery.
func decodeRecord(k, v []byte) (uint64, record, error) {
	var r record
	if len(k) != 8 {
		return 0, r, errors.New("bad delivery key")
	}
	err := json.Unmarshal(v, &r)
	if err == nil && r.ID == "" {
		err = errors.New("delivery without ID")
	}
	return binary.BigEndian.Uint64(k), r, err
}

// Enqueue implements store.Store.Enqueue, in one commit however many
// deliveries it stores; it returns once they are on disk. It returns an
// error, and stores nothing, if a payload or delivery ID is empty or too
// long, a time cannot be encoded (years outside 0 to 9999), or a delivery's
// PayloadID names neither one of payloads nor a stored payload, and a
// *store.SeenError if one of marks is live (see takeMarks). Within one
// call the first payload, delivery or mark with a given ID wins. A new
// payload that no newly queued delivery refers to is not kept. Times are
// stored, and returned, in UTC.
func (s *Store) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery, marks ...store.Mark) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, m := range marks {
		if err := checkSeenID(m.ID); err != nil {
			return err
		}
	}
	given := make(map[string]int, len(payloads)) // payload ID -> index of its first occurrence
	for i, p := range payloads {
		if p.ID == "" {
			return errors.New("store/filestore: Enqueue: empty payload ID")
		}
		if err := checkKey("payload ID", p.ID); err != nil {
			return err
		}
		if _, dup := given[p.ID]; !dup {
			given[p.ID] = i
		}
	}
	// Encode outside the lock; the sequence number is added under it.
	docs := make([][]byte, len(deliveries))
	firsts := make(map[string]bool, len(deliveries))
	for i := range deliveries {
		d := &deliveries[i]
		if d.ID == "" {
			return errors.New("store/filestore: Enqueue: empty delivery ID")
		}
		if err := checkKey("delivery ID", d.ID); err != nil {
			return err
		}
		if firsts[d.ID] {
			continue
		}
		firsts[d.ID] = true
		r := recordOf(d)
		doc, err := json.Marshal(&r)
		if err != nil {
			return fmt.Errorf("store/filestore: Enqueue: delivery %q: %w", d.ID, err)
		}
		docs[i] = doc
	}

	return s.changeAfter(ctx, func() (func(*bolt.Tx) error, func(), error) {
		q := s.q
		for i := range deliveries {
			d := &deliveries[i]
			_, givenNow := given[d.PayloadID]
			if _, stored := q.Payloads[d.PayloadID]; !stored && !givenNow {
				return nil, nil, fmt.Errorf("store/filestore: Enqueue: delivery %q: unknown payload %q", d.ID, d.PayloadID)
			}
		}
		putMarks, marksOnDisk, err := s.takeMarks(marks)
		if err != nil {
			return nil, nil, err
		}
		var (
			newPayloads = map[string]*queueindex.Payload{}
			keys        [][]byte
			vals        [][]byte
		)
		for i := range deliveries {
			d := &deliveries[i]
			if docs[i] == nil {
				continue // a later duplicate within the call
			}
			if _, queued := q.ByID[d.ID]; queued {
				continue
			}
			if q.Payloads[d.PayloadID] == nil {
				p := &queueindex.Payload{ID: d.PayloadID, Body: cloneBytes(payloads[given[d.PayloadID]].Body)}
				q.Payloads[d.PayloadID] = p
				newPayloads[d.PayloadID] = p
			}
			seq := q.Next()
			q.Add(seq, d)
			keys = append(keys, seqKey(seq))
			vals = append(vals, docs[i])
		}
		if len(keys) == 0 {
			return putMarks, marksOnDisk, nil
		}
		fn := func(tx *bolt.Tx) error {
			if putMarks != nil {
				if err := putMarks(tx); err != nil {
					return err
				}
			}
			pb, db := tx.Bucket(bPayloads), tx.Bucket(bDeliveries)
			db.FillPercent = 0.9 // keys are appended in order: fill pages
			for id, p := range newPayloads {
				if err := pb.Put([]byte(id), p.Body); err != nil {
					return err
				}
			}
			for i, k := range keys {
				if err := db.Put(k, vals[i]); err != nil {
					return err
				}
			}
			return nil
		}
		after := func() { // the bodies are on disk: GetPayload reads them there
			if marksOnDisk != nil {
				marksOnDisk()
			}
			for id, p := range newPayloads {
				if s.q.Payloads[id] == p {
					p.Body = nil
				}
			}
		}
		return fn, after, nil
	})
}

// removeTx removes items from memory and returns the matching change to the
// file: the deliveries, and the payloads that lost their last reference.
func removeTx(q queue, items []*item) func(*bolt.Tx) error {
	if len(items) == 0 {
		return nil
	}
	ids := make([][]byte, len(items))
	var gone [][]byte
	for i, it := range items {
		ids[i] = seqKey(it.Seq())
		if q.Remove(it) {
			gone = append(gone, []byte(it.Payload().ID))
		}
	}
	return func(tx *bolt.Tx) error {
		db, pb := tx.Bucket(bDeliveries), tx.Bucket(bPayloads)
		for _, k := range ids {
			if err := db.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range gone {
			if err := pb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}
}

// Lease implements store.Store.Lease, in memory only: it writes nothing to
// disk, and leases do not survive a restart (every queued delivery is due
// again at its NotBefore after Open). It costs O((k + s) log n) for k leased
// deliveries and s hosts skipped or filled up (r.PerHost). A lease ends at
// r.Now + r.Duration. Deliveries with the same NotBefore are leased in
// enqueue order. Lease returns an error, and leases nothing, if
// r.Limit <= 0.
func (s *Store) Lease(ctx context.Context, r store.LeaseRequest) ([]store.Delivery, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.q.Lease(r)
}

// GetPayload returns a copy of a stored payload's body, read from disk, or
// store.ErrNotFound.
func (s *Store) GetPayload(ctx context.Context, id string) ([]byte, error) {
	if err := s.rlock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	body, err := s.q.Body(id)
	if err != nil || body != nil { // absent, or not committed yet
		return body, err
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bPayloads).Get([]byte(id))
		if v == nil {
			return store.ErrNotFound
		}
		body = cloneBytes(v)
		return nil
	})
	return body, err
}

// Complete implements store.Store.Complete: it removes deliveries whose
// ref's token is still valid (see store.LeaseRef), and each payload once no
// delivery refers to it, in one change to the file (one transaction and
// one sync for the lot), and returns once that is on disk. Absent and
// repeated ids, and deliveries leased again since, are ignored (Complete
// then returns once the changes made before are on disk). On error nothing
// was removed. Leases live in memory: a token from before the store was
// reopened is valid for a delivery not leased since.
func (s *Store) Complete(ctx context.Context, refs ...store.LeaseRef) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		items := make([]*item, 0, len(refs))
		seen := make(map[*item]bool, len(refs))
		for _, ref := range refs {
			if it, ok := s.q.ByID[ref.ID]; ok && !seen[it] && s.q.Holds(it, ref.Token) {
				seen[it] = true
				items = append(items, it)
			}
		}
		return removeTx(s.q, items), nil // nil when there is nothing to remove
	})
}

// Retry implements store.Store.Retry: it stores d.Attempts, d.NotBefore and
// d.LastError (the other fields of d are ignored), releases the lease,
// whether or not the delivery was leased, and returns once the change is on
// disk. It returns store.ErrNotFound if d.ID is not queued and
// store.ErrLeaseLost if d.Token is no longer valid.
func (s *Store) Retry(ctx context.Context, d store.Delivery) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		it, ok := s.q.ByID[d.ID]
		if !ok {
			return nil, store.ErrNotFound
		}
		if !s.q.Holds(it, d.Token) {
			return nil, store.ErrLeaseLost
		}
		r := recordOfItem(it)
		r.Attempts, r.NotBefore, r.LastError = d.Attempts, utc(d.NotBefore), d.LastError
		v, err := encodeRecord(&r)
		if err != nil {
			return nil, err
		}
		s.q.Retry(it, r.Attempts, r.NotBefore, r.LastError)
		key := seqKey(it.Seq())
		return func(tx *bolt.Tx) error { return tx.Bucket(bDeliveries).Put(key, v) }, nil
	})
}

// DropDeliveries removes the deliveries matching f, leased or not, and
// reclaims payloads as Complete does, in one commit. A zero filter matches,
// and removes, every delivery. Filtering by Subscriber alone visits every
// queued delivery.
func (s *Store) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	n := 0
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		items := s.q.Matching(f)
		n = len(items)
		return removeTx(s.q, items), nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// CountDeliveries returns how many deliveries, leased or not, match f. A
// zero filter counts every delivery. Counting by Subscriber visits every
// queued delivery.
func (s *Store) CountDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	if err := s.rlock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.RUnlock()
	return s.q.Count(f), nil
}

// ShedDeliveries implements store.Store.ShedDeliveries, in one commit. A
// negative keep is treated as 0.
func (s *Store) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	n := 0
	err := s.change(ctx, func() (func(*bolt.Tx) error, error) {
		victims := s.q.ShedVictims(host, keep, types)
		n = len(victims)
		return removeTx(s.q, victims), nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
