package filestore

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/internal/queueindex"
)

// load checks the file's format, creating the buckets of a new file, and
// loads the state kept in memory. It repairs what a bug could leave
// behind: payloads no delivery refers to are removed, and so are deliveries
// whose payload is missing. A panic (a damaged file) is returned as
// ErrCorrupt.
func (s *Store) load() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, p)
		}
	}()
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := s.initFormat(tx); err != nil {
			return err
		}
		if err := s.loadValues(tx); err != nil {
			return err
		}
		if err := s.loadSubscribers(tx); err != nil {
			return err
		}
		return s.loadQueue(tx)
	})
}

// initFormat creates the buckets and the format mark of a new file, and
// checks those of an existing one.
func (s *Store) initFormat(tx *bolt.Tx) error {
	meta := tx.Bucket(bMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return fmt.Errorf("%w: %s is a bbolt database but not a fedirelay store", ErrFormat, s.path)
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(keyFormat, []byte(Format))
	}
	if f := meta.Get(keyFormat); string(f) != Format {
		if f == nil {
			return fmt.Errorf("%w: %s has no format mark", ErrFormat, s.path)
		}
		return fmt.Errorf("%w: %s has format %q; this version reads %q", ErrFormat, s.path, f, Format)
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("%w: %s: bucket %q is missing", ErrCorrupt, s.path, name)
		}
	}
	return nil
}

func (s *Store) loadValues(tx *bolt.Tx) error {
	return tx.Bucket(bValues).ForEach(func(k, v []byte) error {
		if len(k) == 0 || k[0] != 'v' {
			return fmt.Errorf("%w: %s: bad value key %q", ErrCorrupt, s.path, k)
		}
		s.values[string(k[1:])] = cloneBytes(v)
		return nil
	})
}

func (s *Store) loadSubscribers(tx *bolt.Tx) error {
	err := tx.Bucket(bSubs).ForEach(func(k, v []byte) error {
		var sub store.Subscriber
		if err := json.Unmarshal(v, &sub); err != nil {
			return fmt.Errorf("%w: %s: subscriber %q: %v", ErrCorrupt, s.path, k, err)
		}
		sub.ActorID = string(k)
		utcSubscriber(&sub)
		s.subs.Put(sub) // keys come sorted: appended at the end
		return nil
	})
	return err
}

// loadReleaseEvery is how many deliveries loadQueue reads between two
// releases of the mapping's pages (see releaseMapping), so that reading a
// large queue does not make the whole file resident at once.
const loadReleaseEvery = 8192

func (s *Store) loadQueue(tx *bolt.Tx) error {
	pb, db := tx.Bucket(bPayloads), tx.Bucket(bDeliveries)
	var orphans [][]byte // deliveries without payload
	n := 0
	err := db.ForEach(func(k, v []byte) error {
		if n++; n%loadReleaseEvery == 0 {
			s.releasePages(tx.Size())
		}
		seq, r, err := decodeRecord(k, v)
		if err != nil {
			return fmt.Errorf("%w: %s: delivery %q: %v", ErrCorrupt, s.path, k, err)
		}
		if _, ok := s.q.Payloads[r.PayloadID]; !ok {
			if pb.Get([]byte(r.PayloadID)) == nil {
				orphans = append(orphans, cloneBytes(k))
				return nil
			}
			s.q.Payloads[r.PayloadID] = &queueindex.Payload{ID: r.PayloadID}
		}
		if _, dup := s.q.ByID[r.ID]; dup {
			return fmt.Errorf("%w: %s: delivery %q stored twice", ErrCorrupt, s.path, r.ID)
		}
		d := store.Delivery(r)
		s.q.Add(seq, &d)
		return nil
	})
	if err != nil {
		return err
	}
	var unused [][]byte // payloads without delivery
	err = pb.ForEach(func(k, _ []byte) error {
		if _, ok := s.q.Payloads[string(k)]; !ok {
			unused = append(unused, cloneBytes(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range orphans {
		if err := db.Delete(k); err != nil {
			return err
		}
	}
	for _, k := range unused {
		if err := pb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
