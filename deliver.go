package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// Delivery in a nutshell:
//
//   - An accepted activity is stored (store.Enqueue: the body once, one
//     delivery per inbox) before the inbox answers 202, so it survives a
//     restart with a durable store.
//   - A dispatcher leases due deliveries from the store and hands them to
//     workers: up to Config.Workers deliveries in flight to hosts that
//     answer, plus Config.SlowHostWorkers to slow hosts, never more than
//     Config.PerHostWorkers at once to one host (fewer while the host is
//     slow or its circuit breaker is not closed, see breaker.go), by all
//     the processes sharing the store together.
//   - Signing (the CPU cost) is done by GOMAXPROCS signers for all the
//     workers; a request waiting on the network holds no signing capacity,
//     so signing keeps every core busy however many requests wait, and
//     only the signers' stacks grow to what signing needs.
//   - A 2xx completes the delivery; its id stays in memory until the store
//     confirmed the completion, so a retry never sends a second copy to a
//     subscriber that answered 2xx. Failures are retried with exponential
//     backoff and jitter, each attempt signed anew with a fresh Date.
//   - Per-subscriber statistics are kept in memory and written to the store
//     periodically (stats.go); payload bodies are cached, so a delivery
//     costs the store one Lease share and one Complete.

// leaseDuration is how long a leased delivery stays reserved for this
// process (Config.LeaseDuration).
func (q *deliveryQueue) leaseDuration() time.Duration {
	return q.r.cfg.LeaseDuration
}

// pollInterval bounds how long due retries wait when nothing wakes the
// dispatcher: it leases again pollInterval, on the relay's Clock, after it
// last looked at the queue.
const pollInterval = time.Second

// Completions are confirmed to the store in batches: a completer gathers
// the ids that are ready (waiting at most completeGather for more while the
// batch is small) and confirms them in one Complete call, one transaction
// and one sync for the batch. With the CPU busy signing, completions reach
// the store one at a time, so without batching each would make a commit
// of its own. Nothing waits for a confirmation: q.done keeps completed ids
// from being sent again meanwhile.
//
// On a store shared with other processes, a delivery keeps its place in
// its host's cap (store.LeaseRequest.HostCap) until its completion is
// confirmed, so completers gather for completeGatherShared only, and wake
// the dispatcher once a batch is confirmed: a host's next delivery waits
// for a confirmation a few milliseconds at most.
const (
	completers           = 2
	completeBatch        = 1024
	completeGather       = 100 * time.Millisecond
	completeGatherShared = 5 * time.Millisecond
	completeChBuffer     = 4096
)

// storeTimeout bounds the store writes made on behalf of a delivery.
const storeTimeout = 30 * time.Second

// deliveryQueue moves deliveries from the store to the network: a
// dispatcher leases due deliveries and hands them to a pool of workers,
// never more than a host's cap at once for one host.
type deliveryQueue struct {
	r      *Relay
	stats  *deliveryStats
	bodies *payloadCache
	wakeCh chan struct{}
	work   chan store.Delivery
	// ctx is cancelled to abort in-flight requests (Close's deadline);
	// bgCtx, for store writes, only after them, when the queue is stopped.
	ctx      context.Context
	cancel   context.CancelFunc
	bgCtx    context.Context
	bgCancel context.CancelFunc
	stopCh   chan struct{}
	wg       sync.WaitGroup // dispatcher, workers, flusher
	started  bool

	completeCh chan store.LeaseRef
	cwg        sync.WaitGroup // completers

	signJobs chan signJob   // to the signers
	swg      sync.WaitGroup // signers

	mu       sync.Mutex
	busy     int                         // deliveries leased and not finished
	perHost  map[string]int              // the same, per host
	slowBusy int                         // the same, for the hosts in slow
	slow     map[string]time.Duration    // slow hosts' learnt request timeouts (breaker.go)
	attempts map[string]*attempt         // deliveries being attempted, by id
	ending   map[string]string           // deliveries whose request sweepLocked ended, until finished: id → host
	released []store.Delivery            // dropped, to be given back to the store (returnReleased)
	overflow map[string][]store.Delivery // leased, waiting for a host slot
	held     map[string]string           // leased here, not yet settled: id → token of the latest lease
	done     map[string]completion       // answered 2xx, Complete pending or failed
	breakers map[string]*breaker         // hosts whose breaker is not closed and clean
	backlog  map[string]int              // upper estimate of each host's queued deliveries
	added    map[string]int              // queued here per host since its backlog was counted (shared stores)
	checked  map[string]time.Time        // when a subscriber's actor was last checked for 410
	lag      time.Duration               // how long the oldest delivery of the last Lease had been due
	lagAt    time.Time                   // when that Lease was made
	// leasing is set while the dispatcher leases, until it has looked at
	// what the Lease returned; confirmedWhileLeasing holds the completions
	// confirmed meanwhile, settled by leaseLookedAt (see confirm).
	leasing               bool
	confirmedWhileLeasing []store.LeaseRef
}

func newDeliveryQueue(r *Relay) *deliveryQueue {
	ctx, cancel := context.WithCancel(context.Background())
	bgCtx, bgCancel := context.WithCancel(context.Background())
	return &deliveryQueue{
		r:          r,
		stats:      newDeliveryStats(r),
		bodies:     newPayloadCache(payloadCacheBytes),
		wakeCh:     make(chan struct{}, 1),
		work:       make(chan store.Delivery),
		ctx:        ctx,
		cancel:     cancel,
		bgCtx:      bgCtx,
		bgCancel:   bgCancel,
		stopCh:     make(chan struct{}),
		completeCh: make(chan store.LeaseRef, completeChBuffer),
		signJobs:   make(chan signJob),
		perHost:    map[string]int{},
		slow:       map[string]time.Duration{},
		attempts:   map[string]*attempt{},
		ending:     map[string]string{},
		overflow:   map[string][]store.Delivery{},
		held:       map[string]string{},
		done:       map[string]completion{},
		breakers:   map[string]*breaker{},
		backlog:    map[string]int{},
		added:      map[string]int{},
		checked:    map[string]time.Time{},
	}
}

// wake tells the dispatcher that new work may be due.
func (q *deliveryQueue) wake() {
	select {
	case q.wakeCh <- struct{}{}:
	default:
	}
}

func (q *deliveryQueue) stopping() bool {
	select {
	case <-q.stopCh:
		return true
	default:
		return false
	}
}

func (q *deliveryQueue) start() error {
	if q.started {
		return errors.New("relay: already started")
	}
	q.started = true
	for range completers {
		q.cwg.Add(1)
		go q.completer()
	}
	for range runtime.GOMAXPROCS(0) {
		q.swg.Add(1)
		go q.signer()
	}
	for range q.r.cfg.Workers + q.r.cfg.SlowHostWorkers {
		q.wg.Add(1)
		go q.worker()
	}
	q.wg.Add(2)
	go q.dispatch()
	go q.flusher()
	return nil
}

// stop ends the dispatcher and waits for in-flight deliveries; deliveries
// leased but not started are released at once. If ctx ends first, requests
// in flight are cancelled and their deliveries released for a later
// attempt. Completions and statistics are then written to the store.
func (q *deliveryQueue) stop(ctx context.Context) error {
	var err error
	if q.started {
		close(q.stopCh)
		done := make(chan struct{})
		go func() { q.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
			q.cancel()
			<-done
		}
		close(q.signJobs) // the workers are done
		q.swg.Wait()
		close(q.completeCh)
		q.cwg.Wait()
	}
	q.cancel()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	q.retryCompletes(fctx, true)
	if ferr := q.stats.flush(fctx); ferr != nil {
		q.r.log.Error("relay: writing delivery statistics", "err", ferr)
		if err == nil {
			err = ferr
		}
	}
	q.bgCancel()
	return err
}

// dispatch leases due deliveries while workers are free.
func (q *deliveryQueue) dispatch() {
	defer q.wg.Done()
	defer close(q.work)
	var tick <-chan time.Time
	batchWait := time.NewTimer(leaseBatchWait)
	batchWait.Stop()
	defer batchWait.Stop()
	force := false
	var enqueued <-chan struct{} // by another process sharing the store
	if n, ok := q.r.baseStore().(store.Notifier); ok {
		enqueued = n.QueueChanged()
	}
	for {
		looked := q.r.now()
		n, held, err := q.leaseSome(force)
		force = false
		if err != nil && !errors.Is(err, context.Canceled) {
			q.r.log.Error("relay: leasing deliveries", "err", err)
		}
		if n > 0 && err == nil {
			if q.stopping() {
				return
			}
			continue
		}
		if tick == nil {
			// The poll counts from when the dispatcher looked at the
			// queue: if the Clock passed that poll meanwhile (a jump of a
			// fake clock), it looks again at once.
			tick = q.r.clock.After(pollInterval - q.r.now().Sub(looked))
		}
		var batched <-chan time.Time
		if held {
			// Some workers are free but fewer than a batch: lease for them
			// after leaseBatchWait unless enough are free before, so that
			// work does not wait while the busy ones wait on slow hosts.
			batchWait.Reset(leaseBatchWait)
			batched = batchWait.C
		}
		select {
		case <-q.stopCh:
			return
		case <-q.wakeCh:
		case <-enqueued:
		case <-tick:
			tick = nil
		case <-batched:
			force = true
		}
		batchWait.Stop()
	}
}

// leaseBatchWait bounds how long the dispatcher holds back a Lease while
// fewer than a batch of workers are free (see leaseDueLocked). Like the
// gathering of completions, it uses real time, not the relay's Clock.
const leaseBatchWait = 5 * time.Millisecond

// flusher writes statistics and retries failed completions periodically.
func (q *deliveryQueue) flusher() {
	defer q.wg.Done()
	for {
		select {
		case <-q.stopCh:
			return
		case <-q.r.clock.After(statsFlushInterval):
		}
		if err := q.stats.flush(q.bgCtx); err != nil && q.bgCtx.Err() == nil {
			q.r.log.Error("relay: writing delivery statistics", "err", err)
		}
		q.retryCompletes(q.bgCtx, false)
	}
}

// leaseSome leases as many due deliveries as there are free workers and
// sends them to the workers. It returns how many it dispatched, and held
// when it did not lease because fewer than a batch of workers are free
// (with force, it leases for any free worker).
func (q *deliveryQueue) leaseSome(force bool) (n int, held bool, err error) {
	cfg := &q.r.cfg
	now := q.r.now()
	q.mu.Lock()
	q.sweepLocked(now)
	free := q.freeLocked()
	if free <= 0 || !force && !q.leaseDueLocked() {
		// Lease in batches: a finishing worker wakes the dispatcher again
		// once enough workers are free.
		q.mu.Unlock()
		q.returnReleased()
		return 0, free > 0, nil
	}
	var skip map[string]bool // allocated only if some host is at its cap
	skipIfFull := func(h string) {
		if q.perHost[h] >= q.hostCapLocked(h, now) {
			if skip == nil {
				skip = map[string]bool{}
			}
			skip[h] = true
		}
	}
	for h := range q.perHost {
		skipIfFull(h)
	}
	for h := range q.breakers { // an open breaker's cap is 0
		skipIfFull(h)
	}
	for h := range q.slow {
		if q.slowBusy >= cfg.SlowHostWorkers {
			if skip == nil {
				skip = map[string]bool{}
			}
			skip[h] = true
		}
		skipIfFull(h)
	}
	q.leasing = true
	q.mu.Unlock()
	defer q.leaseLookedAt()
	q.r.health.leasing(time.Now())
	defer q.r.health.leasing(time.Time{})
	hostCap := 0 // this process's own counts keep the cap of an unshared store
	if q.sharedStore() {
		hostCap = cfg.PerHostWorkers
	}
	ds, err := q.r.store.Lease(q.ctx, store.LeaseRequest{
		Now:       now.UTC(),
		Limit:     free,
		Duration:  q.leaseDuration(),
		SkipHosts: skip,
		PerHost:   cfg.PerHostWorkers,
		HostCap:   hostCap,
	})
	if err != nil {
		return 0, false, err
	}
	q.noteLag(ds, now)
	q.returnReleased()
	ready, back, n := q.holdLeased(ds, now)
	for _, d := range back {
		// A slow host gets one delivery at a time, within the slow hosts'
		// share: the others go back to the queue at once.
		q.reschedule(d, d.NotBefore)
	}
	for _, d := range ready {
		q.work <- d // a worker is free: busy counts every leased delivery
	}
	return n, false, nil
}

// holdLeased takes the deliveries a Lease returned at now into the
// queue's counts, all under one lock, so that DeliveryStatus never shows
// some of them neither queued nor in flight. It returns those to hand to
// workers now (the others wait in overflow for a host slot), those to give
// back to the store (a slow host's beyond its one), and how many it holds.
// Deliveries already held or completed here are not counted again: the
// attempt or completion acts under the new lease.
func (q *deliveryQueue) holdLeased(ds []store.Delivery, now time.Time) (ready, back []store.Delivery, n int) {
	slowWorkers := q.r.cfg.SlowHostWorkers
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, d := range ds {
		c, done := q.done[d.ID]
		_, held := q.held[d.ID]
		if held || done {
			// Already being attempted here (its lease ran out meanwhile),
			// or answered 2xx and being completed: never send it twice.
			if held {
				q.held[d.ID] = d.Token
			}
			if done {
				q.done[d.ID] = completion{token: d.Token, queued: c.queued}
			}
			continue
		}
		_, slow := q.slow[d.Host]
		if slow && (q.perHost[d.Host] > 0 || q.slowBusy >= slowWorkers) {
			back = append(back, d)
			continue
		}
		q.held[d.ID] = d.Token
		q.busy++
		q.perHost[d.Host]++
		if slow {
			q.slowBusy++
		}
		n++
		if q.perHost[d.Host] <= max(q.hostCapLocked(d.Host, now), 1) {
			ready = append(ready, d)
		} else {
			q.overflow[d.Host] = append(q.overflow[d.Host], d)
		}
	}
	return ready, back, n
}

// leaseLookedAt ends a Lease once the dispatcher has looked at every
// delivery it returned (each is now held, or its id kept in done): it
// settles the completions confirmed meanwhile (see confirm). One that this
// Lease did not return again was removed by the store and is forgotten; one
// it returned was leased again before the store saw the completion, which
// the store then ignored: it is completed again, under the new lease.
func (q *deliveryQueue) leaseLookedAt() {
	q.mu.Lock()
	q.leasing = false
	var again []store.LeaseRef
	for _, ref := range q.confirmedWhileLeasing {
		c, ok := q.done[ref.ID]
		switch {
		case !ok:
		case c.token == ref.Token:
			delete(q.done, ref.ID)
		default:
			q.done[ref.ID] = completion{token: c.token, queued: true}
			again = append(again, store.LeaseRef{ID: ref.ID, Token: c.token})
		}
	}
	q.confirmedWhileLeasing = q.confirmedWhileLeasing[:0]
	q.mu.Unlock()
	for _, ref := range again {
		q.completeCh <- ref // closed only once the dispatcher has returned
	}
}

// sharedStore reports whether the store may be shared with other relay
// processes (a store.Notifier). Their deliveries count towards the cap of
// a host there (store.LeaseRequest.HostCap), and completions are
// confirmed sooner (see completer).
func (q *deliveryQueue) sharedStore() bool {
	_, ok := q.r.baseStore().(store.Notifier)
	return ok
}

// leaseDueLocked reports whether the dispatcher should lease now: when no
// delivery is in flight, or a quarter of the workers are free. Leasing in
// batches costs the store fewer Lease calls, and waking the dispatcher only
// then saves a wake-up per delivery.
func (q *deliveryQueue) leaseDueLocked() bool {
	free := q.freeLocked()
	return free > 0 && (q.busy == 0 || free >= q.r.cfg.Workers/4)
}

// freeLocked returns how many more deliveries may be leased: Config.Workers
// less those held for hosts that are not slow and those held for slow
// hosts beyond Config.SlowHostWorkers (see sweepLocked).
func (q *deliveryQueue) freeLocked() int {
	return q.r.cfg.Workers - (q.busy - min(q.slowBusy, q.r.cfg.SlowHostWorkers))
}

// forgetLocked forgets that d is leased by this process (q.held) and
// returns it with the token of this process's latest lease of it: the
// dispatcher may have leased d again while it was attempted or waited for
// a host slot. The store is then written under that token.
func (q *deliveryQueue) forgetLocked(d store.Delivery) store.Delivery {
	if t, ok := q.held[d.ID]; ok {
		d.Token = t
	}
	delete(q.held, d.ID)
	return d
}

// dropLocked releases d's place in the counts of deliveries held here
// (busy, perHost, and slowBusy if its host is slow: learnLocked and
// markSlowLocked move a host's held deliveries in and out of slowBusy
// when it changes state).
func (q *deliveryQueue) dropLocked(d store.Delivery) {
	delete(q.ending, d.ID)
	q.busy--
	if _, slow := q.slow[d.Host]; slow {
		q.slowBusy--
	}
	if q.perHost[d.Host]--; q.perHost[d.Host] <= 0 {
		delete(q.perHost, d.Host)
	}
}

// returnReleased gives the deliveries that markSlowLocked took from the
// queue's overflow back to the store, due as they were, without using an
// attempt, under their latest lease.
func (q *deliveryQueue) returnReleased() {
	q.mu.Lock()
	ds := q.released
	q.released = nil
	q.mu.Unlock()
	for _, d := range ds {
		q.reschedule(d, d.NotBefore)
	}
}

// attempt is a delivery being attempted.
type attempt struct {
	id     string // the delivery's
	host   string
	sent   time.Time // when its request was sent; zero while it is signed
	cancel context.CancelCauseFunc
	ended  bool // cancelled by sweepLocked
}

// errTimedOut is the cause of a request that timed out.
var errTimedOut = errors.New("request timed out")

// sweepLocked makes the hosts of requests that have waited
// Config.MinRequestTimeout for an answer slow, and, while slow hosts hold
// more than Config.SlowHostWorkers deliveries, times out their requests
// that have waited that long, oldest first, so that hosts which answer
// keep their Workers whatever hangs.
func (q *deliveryQueue) sweepLocked(now time.Time) {
	cfg := &q.r.cfg
	var waiting []*attempt
	for _, a := range q.attempts {
		if a.sent.IsZero() || a.ended || now.Sub(a.sent) < cfg.MinRequestTimeout {
			continue
		}
		if _, slow := q.slow[a.host]; !slow {
			q.r.log.Warn("relay: host is slow to answer", "host", a.host, "waited", now.Sub(a.sent))
			q.markSlowLocked(a.host, cfg.RequestTimeout)
		}
		waiting = append(waiting, a)
	}
	// Deliveries whose requests an earlier sweep ended stay in slowBusy
	// until their workers have finished with them: they are not excess.
	ending := 0
	for _, h := range q.ending {
		if _, slow := q.slow[h]; slow {
			ending++
		}
	}
	excess := q.slowBusy - ending - cfg.SlowHostWorkers
	if excess <= 0 || len(waiting) == 0 {
		return
	}
	slices.SortFunc(waiting, func(a, b *attempt) int { return a.sent.Compare(b.sent) })
	for _, a := range waiting[:min(excess, len(waiting))] {
		a.ended = true
		q.ending[a.id] = a.host
		a.cancel(fmt.Errorf("%w: slow hosts hold more than %d deliveries", errTimedOut, cfg.SlowHostWorkers))
	}
}

// settle records the outcome of an attempt at d (or of not attempting
// it), whose request timeout was timeout, for its host's breaker and
// slowness (learnLocked), and forgets that d is being attempted. It
// returns d with the token of this process's latest lease of it, under
// which d goes back to the store. It comes before d goes back to the
// store (Retry, Complete), so that the store never shows a delivery whose
// outcome the queue has not taken into account: the dispatcher may lease
// a rescheduled delivery at once, and a status read after the store shows
// the retry sees the host's pause. d keeps its worker slot until finished.
func (q *deliveryQueue) settle(d store.Delivery, o outcome, retryAfter, timeout time.Duration) store.Delivery {
	now := q.r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.recordLocked(d.Host, o, retryAfter, now)
	q.learnLocked(d.Host, o, timeout)
	return q.forgetLocked(d)
}

// finished releases the worker slot of d, settled, and returns the next
// delivery waiting for that host, if any. wake reports whether the
// dispatcher should be woken: when a batch of workers is free, or the
// first one after all were busy (the dispatcher then leases for it after
// leaseBatchWait at the latest).
func (q *deliveryQueue) finished(d store.Delivery) (next store.Delivery, ok, wake bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropLocked(d)
	wake = q.leaseDueLocked() || q.freeLocked() == 1
	if waiting := q.overflow[d.Host]; len(waiting) > 0 {
		// The next delivery waiting for this host takes d's slot (it is
		// counted in busy and perHost already).
		next, q.overflow[d.Host] = waiting[0], waiting[1:]
		if len(q.overflow[d.Host]) == 0 {
			delete(q.overflow, d.Host)
		}
		return next, true, wake
	}
	return next, false, wake
}

func (q *deliveryQueue) worker() {
	defer q.wg.Done()
	for d := range q.work {
		for {
			q.process(d)
			next, ok, wake := q.finished(d)
			q.returnReleased()
			if wake {
				q.wake()
			}
			if !ok {
				break
			}
			d = next
		}
	}
}

// process attempts d unless the relay is stopping or the host's breaker
// holds it back, in which case d is rescheduled without using an attempt.
// It settles d.
func (q *deliveryQueue) process(d store.Delivery) {
	now := q.r.now()
	if q.stopping() {
		d = q.settle(d, outcomeSkipped, 0, 0)
		q.reschedule(d, now)
		return
	}
	q.mu.Lock()
	ok, until := q.admitLocked(d.Host, now)
	timeout := q.timeoutLocked(d.Host)
	q.mu.Unlock()
	if !ok {
		d = q.settle(d, outcomeSkipped, 0, 0)
		q.reschedule(d, until)
		return
	}
	q.deliver(d, timeout)
}

// deliver makes one attempt at d, its request timing out after timeout,
// settles it and records the outcome.
func (q *deliveryQueue) deliver(d store.Delivery, timeout time.Duration) {
	r := q.r
	ctx := q.ctx
	body, err := q.payload(ctx, d.PayloadID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		d = q.settle(d, outcomeSkipped, 0, 0)
		q.complete(d) // dropped meanwhile
		return
	case err != nil && ctx.Err() != nil:
		d = q.settle(d, outcomeCanceled, 0, 0)
		q.reschedule(d, r.now())
		return
	case err != nil:
		r.log.Error("relay: reading payload", "payload", d.PayloadID, "err", err)
		d = q.settle(d, outcomeSkipped, 0, 0)
		q.reschedule(d, r.now().Add(r.cfg.RetryBackoff))
		return
	}
	status, retryAfter, err := q.post(d, body, timeout)
	o := outcomeOf(ctx, status, err)
	q.observe(d, o, status, err)
	d = q.settle(d, o, retryAfter, timeout)
	switch o {
	case outcomeCanceled:
		// Shutting down: the delivery is released for a later attempt.
		q.reschedule(d, r.now())
	case outcomeDelivered:
		q.complete(d)
		if d.Subscriber != "" {
			q.stats.success(d.Subscriber, r.now().UTC())
		}
	case outcomeRefused:
		// The receiver refuses this message; repeating it will not help.
		q.complete(d)
		switch {
		case status == http.StatusGone && d.Subscriber != "":
			r.subscriberGone(q.bgCtx, d.Subscriber, d.Inbox)
		case status == http.StatusGone && d.Signer != "":
			r.topicInboxGone(q.bgCtx, d.Inbox)
		default:
			// Every refusal counts, topic deliveries (no Subscriber)
			// included; only a subscriber's counts against it.
			r.log.Info("relay: delivery refused, not retried", "subscriber", d.Subscriber, "signer", d.Signer, "inbox", d.Inbox, "status", status, "type", d.ActivityType)
			r.events.Dropped("budget", 1)
			if d.Subscriber == "" {
				break
			}
			q.failure(d, fmt.Errorf("HTTP %d", status))
			if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound {
				q.checkActor(d)
			}
		}
	default: // outcomeThrottled, outcomeFailed, outcomeTimedOut, outcomeUnreachable
		if err == nil {
			err = fmt.Errorf("HTTP %d", status)
		}
		q.retry(d, err, retryAfter)
	}
}

// outcomeOf classifies an attempt that got status or err (made with ctx,
// the queue's context): a request that timed out (errTimedOut) apart
// from other transport errors.
func outcomeOf(ctx context.Context, status int, err error) outcome {
	switch {
	case ctx.Err() != nil:
		return outcomeCanceled
	case errors.Is(err, errTimedOut):
		return outcomeTimedOut
	case err != nil:
		return outcomeUnreachable
	case status >= 200 && status < 300:
		return outcomeDelivered
	case status == http.StatusTooManyRequests:
		return outcomeThrottled
	case status >= 400 && !transientStatus(status):
		return outcomeRefused
	}
	return outcomeFailed
}

// payload returns a payload's body, from the cache when possible.
func (q *deliveryQueue) payload(ctx context.Context, id string) ([]byte, error) {
	if b, ok := q.bodies.get(id); ok {
		return b, nil
	}
	b, err := q.r.store.GetPayload(ctx, id)
	if err == nil {
		q.bodies.put(id, b)
	}
	return b, err
}

// post has d signed by a signer (see signDelivery; d.Signer is the
// relay's actor that signs) and sends it, as an attempt that sweepLocked
// can end. It returns the status, a Retry-After delay if the receiver
// gave one, and a transport error: one wrapping errTimedOut if the
// request took longer than timeout (on the relay's Clock) or was ended by
// sweepLocked.
func (q *deliveryQueue) post(d store.Delivery, body []byte, timeout time.Duration) (int, time.Duration, error) {
	r := q.r
	ctx, cancel := context.WithCancelCause(q.ctx)
	defer cancel(nil)
	a := &attempt{id: d.ID, host: d.Host, cancel: cancel}
	q.mu.Lock()
	q.attempts[d.ID] = a
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.attempts, d.ID)
		q.mu.Unlock()
	}()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Inbox, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", activityJSON)
	req.Header.Set("Accept", acceptActivity)
	req.Header.Set("User-Agent", r.cfg.UserAgent)
	signed := make(chan error, 1)
	job := signJob{ctx: ctx, req: req, body: body, subscriber: d.Subscriber, actor: d.Signer, done: signed}
	select {
	case q.signJobs <- job:
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	if err := <-signed; err != nil {
		return 0, 0, err
	}

	ctx, stop := r.withTimeout(ctx, timeout, fmt.Errorf("%w after %v", errTimedOut, timeout))
	defer stop()
	q.mu.Lock()
	a.sent = r.now()
	q.mu.Unlock()
	resp, err := r.transport.RoundTrip(req.WithContext(ctx))
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errTimedOut) {
			err = cause
		}
		return 0, 0, err
	}
	drain(resp)
	return resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), r.now()), nil
}

// signJob asks a signer to sign a delivery's request (see signDelivery)
// and to send the outcome on done.
type signJob struct {
	ctx        context.Context
	req        *http.Request
	body       []byte
	subscriber string
	actor      string       // the delivery's Signer: the relay's actor that signs
	done       chan<- error // buffered
}

// signer signs deliveries for the workers until q.signJobs is closed.
func (q *deliveryQueue) signer() {
	defer q.swg.Done()
	for j := range q.signJobs {
		j.done <- q.r.signDelivery(j.ctx, j.req, j.body, j.subscriber, j.actor)
	}
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// backoff returns the delay before attempt n+1 after n failed attempts:
// RetryBackoff doubling per attempt, capped at maxBackoff, ±20 % jitter.
func (r *Relay) backoff(n int) time.Duration {
	d := r.cfg.RetryBackoff
	for i := 1; i < n && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	jitter := time.Duration(rand.Int64N(int64(d)/5*2+1)) - d/5
	return d + jitter
}

const maxBackoff = 6 * time.Hour

// retry records a failed attempt and schedules the next one after the
// backoff (or the receiver's Retry-After, if later), or gives up after
// Config.MaxAttempts attempts or when the subscriber became dormant.
func (q *deliveryQueue) retry(d store.Delivery, cause error, retryAfter time.Duration) {
	r := q.r
	d.Attempts++
	d.LastError = cause.Error()
	if d.Subscriber != "" && q.failure(d, cause) {
		q.complete(d) // dormant: its deliveries are dropped
		return
	}
	if d.Attempts >= r.cfg.MaxAttempts {
		r.log.Warn("relay: giving up delivery", "inbox", d.Inbox, "attempts", d.Attempts, "err", cause)
		r.events.Dropped("budget", 1)
		q.complete(d)
		return
	}
	wait := r.backoff(d.Attempts)
	if retryAfter > wait {
		wait = min(retryAfter, maxBackoff)
	}
	q.reschedule(d, r.now().Add(wait))
}

// reschedule releases d's lease (d.Token, the latest: see settle) and
// makes it due at notBefore, keeping its Attempts and LastError. If the
// lease was lost meanwhile, the store leaves d to its new holder.
func (q *deliveryQueue) reschedule(d store.Delivery, notBefore time.Time) {
	d.NotBefore = notBefore.UTC()
	ctx, cancel := context.WithTimeout(q.bgCtx, storeTimeout)
	defer cancel()
	err := q.r.store.Retry(ctx, d)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrLeaseLost) {
		q.r.log.Error("relay: rescheduling delivery", "inbox", d.Inbox, "err", err)
	}
}

// completion is a completion waiting for the store: the lease token it
// is made under, and whether a completer has it (false once the store
// failed it, for retryCompletes).
type completion struct {
	token  string
	queued bool
}

// complete removes d from the store, under its lease (d.Token, the
// latest: see settle): if another process leased d meanwhile (this one's
// lease ran out), the store leaves it to that one. Until the store
// confirms it, d's id stays in q.done so that the delivery is not
// attempted again.
func (q *deliveryQueue) complete(d store.Delivery) {
	q.mu.Lock()
	q.done[d.ID] = completion{token: d.Token, queued: true}
	q.mu.Unlock()
	q.completeCh <- d.Ref()
}

// completer confirms completions to the store, in batches.
func (q *deliveryQueue) completer() {
	defer q.cwg.Done()
	shared := q.sharedStore()
	gatherFor := completeGather
	if shared {
		gatherFor = completeGatherShared
	}
	for id := range q.completeCh {
		batch := []store.LeaseRef{id}
		deadline := time.NewTimer(gatherFor)
	gather:
		for len(batch) < completeBatch {
			var ok bool
			select {
			case id, ok = <-q.completeCh:
			case <-deadline.C:
				break gather
			case <-q.stopCh:
				// Shutting down: take what is there, without waiting.
				select {
				case id, ok = <-q.completeCh:
				default:
					break gather
				}
			}
			if !ok {
				break
			}
			batch = append(batch, id)
		}
		deadline.Stop()
		q.confirm(q.bgCtx, batch)
		if shared {
			q.wake() // the hosts of the batch have places again
		}
	}
}

// confirm writes the completions of refs to the store, in one change, and
// records the outcome: forgotten once written, kept for retryCompletes if
// the store failed. The store ignores a completion under a lease that ran
// out if the delivery was leased again: one that this process leased again
// meanwhile is completed again under the new lease, and while the
// dispatcher has not looked at what its Lease returned, a completion that
// seems written is kept in done, so that the delivery is not sent again,
// until leaseLookedAt settles it.
func (q *deliveryQueue) confirm(ctx context.Context, refs []store.LeaseRef) {
	for len(refs) > 0 {
		err := q.r.store.Complete(ctx, refs...)
		var again []store.LeaseRef
		q.mu.Lock()
		for _, ref := range refs {
			c, ok := q.done[ref.ID]
			switch {
			case err == nil && c.token == ref.Token && q.leasing:
				q.confirmedWhileLeasing = append(q.confirmedWhileLeasing, ref)
			case err == nil && c.token == ref.Token:
				delete(q.done, ref.ID)
			case err == nil && ok:
				// Leased again meanwhile: complete it under the new lease.
				again = append(again, store.LeaseRef{ID: ref.ID, Token: c.token})
			default:
				// Failed: for retryCompletes.
				q.done[ref.ID] = completion{token: c.token}
			}
		}
		q.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			q.r.log.Error("relay: completing deliveries", "count", len(refs), "first", refs[0].ID, "err", err)
		}
		refs = again
	}
}

// retryCompletes confirms again the completions the store failed. With
// all set (at stop, when no completer runs), it confirms every pending one.
func (q *deliveryQueue) retryCompletes(ctx context.Context, all bool) {
	q.mu.Lock()
	var refs []store.LeaseRef
	for id, c := range q.done {
		if all || !c.queued {
			refs = append(refs, store.LeaseRef{ID: id, Token: c.token})
			q.done[id] = completion{token: c.token, queued: true}
		}
	}
	q.mu.Unlock()
	for batch := range slices.Chunk(refs, completeBatch) {
		q.confirm(ctx, batch)
	}
}

// failure records a failed attempt in the subscriber's statistics. A
// subscriber failing for Config.DormantAfter becomes dormant: its
// deliveries are dropped, and failure reports true.
func (q *deliveryQueue) failure(d store.Delivery, cause error) bool {
	r := q.r
	now := r.now().UTC()
	since := q.stats.failure(q.bgCtx, d.Subscriber, now, cause.Error())
	if r.cfg.DormantAfter <= 0 || now.Sub(since) < r.cfg.DormantAfter {
		return false
	}
	ctx, cancel := context.WithTimeout(q.bgCtx, storeTimeout)
	defer cancel()
	s, err := r.store.UpdateSubscriber(ctx, d.Subscriber, func(s *store.Subscriber, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		if s.RevivedAt.After(since) || s.LastSuccess.After(since) {
			// Another process revived the subscriber, or delivered to
			// it, after this run of failures began: the run is over.
			return nil
		}
		if s.State == store.StateAccepted {
			s.State = store.StateDormant
			s.UpdatedAt = now
			if s.FailingSince.IsZero() || s.FailingSince.After(since) {
				s.FailingSince = since
			}
		}
		return nil
	})
	if err == nil && s.State != store.StateDormant {
		q.stats.restart(d.Subscriber, s)
	}
	if err != nil || s.State != store.StateDormant {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			r.log.Error("relay: making subscriber dormant", "actor", d.Subscriber, "err", err)
		}
		return false
	}
	r.log.Warn("relay: subscriber failing, now dormant", "actor", d.Subscriber, "failing_since", since)
	n, err := r.store.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: d.Subscriber})
	if err != nil {
		r.log.Error("relay: dropping deliveries of dormant subscriber", "actor", d.Subscriber, "err", err)
	}
	r.events.Dropped("dormant", n)
	return true
}

// payloadCacheBytes bounds the payload bodies kept in memory: hundreds of
// typical activities, the few a fan-out is busy with and more (a miss costs
// one store read, little next to signing).
const payloadCacheBytes = 2 << 20

// payloadCache keeps recently used payload bodies, so that a fan-out reads
// each body from the store at most once. Payload ids name their content,
// so a cached body is never stale. Oldest entries are evicted first.
type payloadCache struct {
	mu    sync.Mutex
	limit int
	size  int
	m     map[string][]byte
	order []string
}

func newPayloadCache(limit int) *payloadCache {
	return &payloadCache{limit: limit, m: map[string][]byte{}}
}

func (c *payloadCache) get(id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[id]
	return b, ok
}

func (c *payloadCache) put(id string, body []byte) {
	if len(body) > c.limit/8 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; ok {
		return
	}
	c.m[id] = body
	c.order = append(c.order, id)
	c.size += len(body)
	for c.size > c.limit && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.size -= len(c.m[old])
		delete(c.m, old)
	}
}
