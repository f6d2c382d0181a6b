package relay

import (
	"context"
	"errors"
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

// entry returns the statistics of subscriber, creating them. With seed
// set, the start of a failure run is read from the store the first time
// (only failures need it, so successes cost no store read).
func (st *deliveryStats) entry(ctx context.Context, subscriber string, seed bool) *subStats {
	st.mu.Lock()
	e := st.m[subscriber]
	if e == nil {
		e = &subStats{}
		st.m[subscriber] = e
	}
	seeded := e.seeded
	st.mu.Unlock()
	if !seed || seeded {
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

// success records a delivery answered 2xx.
func (st *deliveryStats) success(ctx context.Context, subscriber string, now time.Time) {
	e := st.entry(ctx, subscriber, false)
	st.mu.Lock()
	defer st.mu.Unlock()
	e.delivered++
	if now.After(e.lastSuccess) {
		e.lastSuccess = now
	}
	e.runStart, e.failingSince, e.seeded = time.Time{}, time.Time{}, true
}

// failure records a failed attempt and returns when the subscriber's
// current run of failures began.
func (st *deliveryStats) failure(ctx context.Context, subscriber string, now time.Time, cause string) time.Time {
	e := st.entry(ctx, subscriber, true)
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
		if s.LastSuccess.After(e.lastFailure) {
			break // another process has delivered since
		}
		if s.FailingSince.IsZero() || e.failingSince.Before(s.FailingSince) {
			s.FailingSince = e.failingSince
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

// flush writes the statistics kept in memory to the store.
func (st *deliveryStats) flush(ctx context.Context) error {
	type pending struct {
		id string
		e  subStats
	}
	st.mu.Lock()
	var todo []pending
	for id, e := range st.m {
		switch {
		case e.dirty():
			todo = append(todo, pending{id, *e})
			e.delivered, e.failed = 0, 0
		case e.runStart.IsZero():
			// Written, and not failing: nothing worth keeping in memory.
			delete(st.m, id)
		}
	}
	st.mu.Unlock()
	// Written concurrently, so that a store that commits concurrent
	// changes together (filestore) makes a few transactions, not one per
	// subscriber.
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		firstEr error
		next    = make(chan pending)
	)
	for range min(flushParallelism, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				_, err := st.r.store.UpdateSubscriber(ctx, p.id, func(s *store.Subscriber, found bool) error {
					if !found {
						return store.ErrNotFound
					}
					e := p.e
					st.mu.Lock()
					if cur := st.m[p.id]; cur != nil && cur.revivals != e.revivals {
						// Revived since the copy: its failure run is over.
						e.runStart = time.Time{}
					}
					st.mu.Unlock()
					e.apply(s)
					return nil
				})
				switch {
				case errors.Is(err, store.ErrNotFound):
					st.forget(p.id)
				case err != nil:
					// Put the counts back so that they are written next time.
					st.mu.Lock()
					if e := st.m[p.id]; e != nil {
						e.delivered += p.e.delivered
						e.failed += p.e.failed
					}
					st.mu.Unlock()
					errMu.Lock()
					if firstEr == nil {
						firstEr = err
					}
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

// flushParallelism bounds the concurrent store writes of a flush.
const flushParallelism = 32

// SubscriberStatus is the delivery status of one subscriber: its record
// (state, protocol, inboxes) with delivery statistics that include what the
// relay has not yet written to the store, and its backlog.
type SubscriberStatus struct {
	store.Subscriber
	// Backlog is the number of deliveries queued for the subscriber,
	// including those being attempted.
	Backlog int
}

// Status returns the delivery status of a subscriber: Delivered and Failed
// count the attempts that succeeded and failed, LastSuccess, LastFailure
// and LastError describe the latest ones, FailingSince is when the current
// run of failures began (zero while deliveries succeed), State is
// store.StateDormant once the subscriber failed for Config.DormantAfter,
// and Backlog counts its queued deliveries. It returns an error matching
// ErrNotSubscribed for an actor without a subscription, and store errors
// as they are. Status is safe for concurrent use.
func (r *Relay) Status(ctx context.Context, actorID string) (SubscriberStatus, error) {
	s, err := r.Subscriber(ctx, actorID)
	if err != nil {
		return SubscriberStatus{}, err
	}
	n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{Subscriber: actorID})
	if err != nil {
		return SubscriberStatus{}, err
	}
	return SubscriberStatus{Subscriber: s, Backlog: n}, nil
}

// Statuses returns the delivery status (see Status) of every subscriber
// that matches f, ordered by actor id. It costs one CountDeliveries per
// subscriber.
func (r *Relay) Statuses(ctx context.Context, f store.SubscriberFilter) ([]SubscriberStatus, error) {
	subs, err := r.Subscribers(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]SubscriberStatus, 0, len(subs))
	for _, s := range subs {
		n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{Subscriber: s.ActorID})
		if err != nil {
			return nil, err
		}
		out = append(out, SubscriberStatus{Subscriber: s, Backlog: n})
	}
	return out, nil
}

// HostStatus describes deliveries to one receiving host.
type HostStatus struct {
	// Host is the lower-cased host[:port].
	Host string
	// Circuit is "closed", "open" or "half-open" (see Config.BreakerThreshold).
	Circuit string
	// OpenUntil is when an open circuit lets a probe through.
	OpenUntil time.Time
	// InFlight counts deliveries to the host being attempted or waiting
	// for one of its worker slots in this process.
	InFlight int
	// Slow reports that a request to the host timed out, or waited
	// Config.MinRequestTimeout, since it last answered (see
	// Config.SlowHostWorkers); Timeout is then the shortened request
	// timeout its next delivery gets (zero for hosts that are not slow).
	Slow    bool
	Timeout time.Duration
}

// DeliveryStatus is an overview of the relay's delivery queue.
type DeliveryStatus struct {
	// Backlog is the number of queued deliveries, all hosts together.
	Backlog int
	// InFlight counts the deliveries this process has leased and not
	// finished.
	InFlight int
	// Hosts lists the hosts with deliveries in flight, a circuit that is
	// not closed or that are slow, in no particular order.
	Hosts []HostStatus
}

// DeliveryStatus returns an overview of the delivery queue. It is safe for
// concurrent use and returns store errors as they are.
func (r *Relay) DeliveryStatus(ctx context.Context) (DeliveryStatus, error) {
	n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{})
	if err != nil {
		return DeliveryStatus{}, err
	}
	q := r.queue
	now := r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	st := DeliveryStatus{Backlog: n, InFlight: q.busy}
	hosts := map[string]*HostStatus{}
	get := func(h string) *HostStatus {
		if hosts[h] == nil {
			hosts[h] = &HostStatus{Host: h, Circuit: breakerClosed.String()}
		}
		return hosts[h]
	}
	for h, k := range q.perHost {
		get(h).InFlight = k
	}
	for h, t := range q.slow {
		hs := get(h)
		hs.Slow, hs.Timeout = true, t
	}
	for h := range q.breakers {
		if b := q.refreshBreakerLocked(h, now); b.state != breakerClosed {
			hs := get(h)
			hs.Circuit = b.state.String()
			if b.state == breakerOpen {
				hs.OpenUntil = b.until
			}
		}
	}
	for _, hs := range hosts {
		st.Hosts = append(st.Hosts, *hs)
	}
	return st, nil
}
