package relay

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// statsFlushInterval is how often delivery statistics kept in memory are
// written to the store (and at Close).
const statsFlushInterval = 10 * time.Second

// subStats is what the relay learnt about deliveries to one subscriber and
// has not yet written to the store, plus the start of its current run of
// failures.
type subStats struct {
	delivered, failed int64 // not yet flushed
	lastSuccess       time.Time
	lastFailure       time.Time
	lastError         string
	// runStart is the first failure since the last success seen by this
	// process, if the last outcome was a failure; zero otherwise.
	runStart time.Time
	// failingSince is the start of the subscriber's current run of
	// failures, seeded from the store: what dormancy is decided on.
	failingSince time.Time
	seeded       bool // failingSince was read from the store
	// revivals counts revives (see revive), so that a flush can tell that
	// the failure run it copied ended meanwhile.
	revivals int
}

func (s *subStats) dirty() bool { return s.delivered != 0 || s.failed != 0 }

// deliveryStats keeps per-subscriber delivery statistics in memory, so that
// a delivery costs no store write beyond Complete; they are flushed to the
// store's Subscriber records every statsFlushInterval and at Close.
type deliveryStats struct {
	r  *Relay
	mu sync.Mutex
	m  map[string]*subStats
}

func newDeliveryStats(r *Relay) *deliveryStats {
	return &deliveryStats{r: r, m: map[string]*subStats{}}
}

// seededEntry returns the statistics of subscriber, creating them, and
// reads the start of its failure run from the store the first time (only
// failures need it, so successes cost no store read).
func (st *deliveryStats) seededEntry(ctx context.Context, subscriber string) *subStats {
	st.mu.Lock()
	e := st.entryLocked(subscriber)
	seeded := e.seeded
	st.mu.Unlock()
	if seeded {
		return e
	}
	var since time.Time
	if s, err := st.r.store.GetSubscriber(ctx, subscriber); err == nil {
		since = s.FailingSince
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if !e.seeded {
		e.seeded = true
		if e.failingSince.IsZero() || (!since.IsZero() && since.Before(e.failingSince)) {
			e.failingSince = since
		}
	}
	return e
}

// entryLocked returns the statistics of subscriber, creating them.
func (st *deliveryStats) entryLocked(subscriber string) *subStats {
	e := st.m[subscriber]
	if e == nil {
		e = &subStats{}
		st.m[subscriber] = e
	}
	return e
}

// success records a delivery answered 2xx.
func (st *deliveryStats) success(subscriber string, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e := st.entryLocked(subscriber)
	e.delivered++
	if now.After(e.lastSuccess) {
		e.lastSuccess = now
	}
	e.runStart, e.failingSince, e.seeded = time.Time{}, time.Time{}, true
}

// failure records a failed attempt and returns when the subscriber's
// current run of failures began.
func (st *deliveryStats) failure(ctx context.Context, subscriber string, now time.Time, cause string) time.Time {
	e := st.seededEntry(ctx, subscriber)
	st.mu.Lock()
	defer st.mu.Unlock()
	e.failed++
	if !now.Before(e.lastFailure) {
		e.lastFailure, e.lastError = now, cause
	}
	if e.runStart.IsZero() {
		e.runStart = now
	}
	if e.failingSince.IsZero() {
		e.failingSince = now
	}
	return e.failingSince
}

// revive forgets a subscriber's run of failures (it became active again).
// It is called before the store records the revive, so that a flush that
// copied the run earlier does not write it back afterwards.
func (st *deliveryStats) revive(subscriber string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if e := st.m[subscriber]; e != nil {
		e.runStart, e.failingSince, e.seeded = time.Time{}, time.Time{}, true
		e.revivals++
	}
}

// restart moves the start of a subscriber's failure run kept in memory to
// the later of s.RevivedAt and s.LastSuccess if the run began before: the
// store shows that another process revived the subscriber, or delivered to
// it, since.
func (st *deliveryStats) restart(subscriber string, s store.Subscriber) {
	reset := s.RevivedAt
	if s.LastSuccess.After(reset) {
		reset = s.LastSuccess
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if e := st.m[subscriber]; e != nil && !e.failingSince.IsZero() && e.failingSince.Before(reset) {
		e.failingSince = reset
		if !e.runStart.IsZero() && e.runStart.Before(reset) {
			e.runStart = reset
		}
	}
}

// forget drops a removed subscriber's statistics.
func (st *deliveryStats) forget(subscriber string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.m, subscriber)
}

// apply adds what e holds to the stored record s.
func (e *subStats) apply(s *store.Subscriber) {
	switch {
	case !e.runStart.IsZero(): // the last outcome seen here is a failure
		if s.LastSuccess.After(e.lastFailure) || s.RevivedAt.After(e.lastFailure) {
			break // another process has delivered, or revived it, since
		}
		// A run that began before another process's revive or success
		// restarted then: compare by time, never copy an older run over.
		since := e.failingSince
		for _, reset := range []time.Time{s.RevivedAt, s.LastSuccess} {
			if since.Before(reset) {
				since = reset
			}
		}
		if s.FailingSince.IsZero() || since.Before(s.FailingSince) {
			s.FailingSince = since
		}
	case !e.lastSuccess.IsZero() && !e.lastSuccess.Before(s.LastFailure):
		s.FailingSince = time.Time{}
	}
	s.Delivered += e.delivered
	s.Failed += e.failed
	if e.lastSuccess.After(s.LastSuccess) {
		s.LastSuccess = e.lastSuccess
	}
	if e.lastFailure.After(s.LastFailure) {
		s.LastFailure, s.LastError = e.lastFailure, e.lastError
	}
}

// merge returns s with the statistics not yet flushed added.
func (st *deliveryStats) merge(s store.Subscriber) store.Subscriber {
	st.mu.Lock()
	defer st.mu.Unlock()
	if e := st.m[s.ActorID]; e != nil && (e.dirty() || !e.runStart.IsZero()) {
		e.apply(&s)
	}
	return s
}

// flush writes the statistics kept in memory to the store: with
// store.SubscribersUpdater when the store has it, up to flushBatch
// subscribers in one call (one at a time for a batch the store refused,
// see flushOneByOne), else one UpdateSubscriber per subscriber.
func (st *deliveryStats) flush(ctx context.Context) error {
	st.mu.Lock()
	var todo []pendingStats
	for id, e := range st.m {
		switch {
		case e.dirty():
			todo = append(todo, pendingStats{id, *e})
			e.delivered, e.failed = 0, 0
		case e.runStart.IsZero():
			// Written, and not failing: nothing worth keeping in memory.
			delete(st.m, id)
		}
	}
	st.mu.Unlock()
	u, ok := st.r.baseStore().(store.SubscribersUpdater)
	if !ok {
		return st.flushEach(ctx, todo)
	}
	var firstErr error
	for chunk := range slices.Chunk(todo, flushBatch) {
		start := time.Now()
		byID := make(map[string]subStats, len(chunk))
		ids := make([]string, len(chunk))
		for k, p := range chunk {
			byID[p.id], ids[k] = p.e, p.id
		}
		missing, err := u.UpdateSubscribers(ctx, ids, func(s *store.Subscriber) error {
			st.applyCopy(s.ActorID, byID[s.ActorID], s)
			return nil
		})
		st.r.events.StoreOp("UpdateSubscribers", time.Since(start))
		if err != nil {
			// One at a time, so that one record the store cannot change
			// does not hold back the others.
			firstErr = cmp.Or(firstErr, st.flushOneByOne(ctx, chunk))
			continue
		}
		for _, id := range missing {
			st.forget(id)
		}
	}
	return firstErr
}

// pendingStats is a copy of a subscriber's statistics that flush writes.
type pendingStats struct {
	id string
	e  subStats
}

// flushOneByOne writes todo with one UpdateSubscriber per subscriber, one
// after the other. After maxFlushFailures failures in a row it puts the
// rest back and stops: the store is failing, not a record.
func (st *deliveryStats) flushOneByOne(ctx context.Context, todo []pendingStats) error {
	var firstErr error
	failures := 0
	for k, p := range todo {
		err := st.writeOne(ctx, p)
		if err == nil {
			failures = 0
			continue
		}
		firstErr = cmp.Or(firstErr, err)
		if failures++; failures == maxFlushFailures {
			for _, q := range todo[k+1:] {
				st.putBack(q.id, q.e)
			}
			break
		}
	}
	return firstErr
}

// maxFlushFailures is how many writes in a row flushOneByOne tries before
// it gives up until the next flush.
const maxFlushFailures = 3

// writeOne writes p with UpdateSubscriber: it forgets a subscriber that is
// gone, and puts p's counts back, to be written next time, when the store
// fails (and returns the error).
func (st *deliveryStats) writeOne(ctx context.Context, p pendingStats) error {
	_, err := st.r.store.UpdateSubscriber(ctx, p.id, func(s *store.Subscriber, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		st.applyCopy(p.id, p.e, s)
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		st.forget(p.id)
		return nil
	case err != nil:
		st.putBack(p.id, p.e)
		return err
	}
	return nil
}

// flushEach writes todo with one UpdateSubscriber per subscriber, at most
// flushParallelism at once, so that a store that commits concurrent
// changes together (filestore) makes a few transactions, not one per
// subscriber. The counts of a subscriber it fails to write are put back,
// to be written next time.
func (st *deliveryStats) flushEach(ctx context.Context, todo []pendingStats) error {
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		firstEr error
		next    = make(chan pendingStats)
	)
	for range min(flushParallelism, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				if err := st.writeOne(ctx, p); err != nil {
					errMu.Lock()
					firstEr = cmp.Or(firstEr, err)
					errMu.Unlock()
				}
			}
		}()
	}
	for _, p := range todo {
		next <- p
	}
	close(next)
	wg.Wait()
	return firstEr
}

// applyCopy adds e, a copy of subscriber's statistics taken by flush, to
// the stored record s.
func (st *deliveryStats) applyCopy(subscriber string, e subStats, s *store.Subscriber) {
	st.mu.Lock()
	if cur := st.m[subscriber]; cur != nil && cur.revivals != e.revivals {
		// Revived since the copy: its failure run is over.
		e.runStart = time.Time{}
	}
	st.mu.Unlock()
	e.apply(s)
}

// putBack returns the counts of e, a copy flush failed to write, so that
// they are written next time.
func (st *deliveryStats) putBack(subscriber string, e subStats) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if cur := st.m[subscriber]; cur != nil {
		cur.delivered += e.delivered
		cur.failed += e.failed
	}
}

// flushBatch is the most subscribers a flush writes in one
// store.SubscribersUpdater call (one transaction).
const flushBatch = 500

// flushParallelism bounds the concurrent store writes of a flush.
const flushParallelism = 32
