package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// batch collects payloads and deliveries to enqueue in one atomic step.
// One delivery is made per inbox: subscribers sharing an inbox get one copy.
type batch struct {
	r          *Relay
	payloads   []store.Payload
	deliveries []store.Delivery
	seen       map[string]bool
}

func newBatch(r *Relay) *batch { return &batch{r: r, seen: map[string]bool{}} }

// add queues p for inbox. The delivery id is derived from the payload and
// the inbox, so queueing the same thing twice is a no-op in the store.
func (b *batch) add(p store.Payload, inbox, subscriber, activityType string) {
	if inbox == "" || b.seen[inbox+" "+p.ID] {
		return
	}
	b.seen[inbox+" "+p.ID] = true
	if !b.seen[p.ID] {
		b.seen[p.ID] = true
		b.payloads = append(b.payloads, p)
	}
	sum := sha256.Sum256([]byte(p.ID + " " + inbox))
	now := b.r.now().UTC()
	b.deliveries = append(b.deliveries, store.Delivery{
		ID:           hex.EncodeToString(sum[:16]),
		PayloadID:    p.ID,
		Inbox:        inbox,
		Host:         hostOf(inbox),
		Subscriber:   subscriber,
		ActivityType: activityType,
		NotBefore:    now,
		Created:      now,
	})
}

// enqueue stores the batch and wakes the dispatcher.
func (b *batch) enqueue(ctx context.Context) error {
	if len(b.deliveries) == 0 {
		return nil
	}
	if err := b.r.store.Enqueue(ctx, b.payloads, b.deliveries); err != nil {
		return fmt.Errorf("relay: queueing %d deliveries: %w", len(b.deliveries), err)
	}
	b.r.queue.wake()
	return nil
}

// leaseDuration is how long a leased delivery stays reserved for this
// process. It is far longer than an attempt can take (RequestTimeout) plus
// the time it may wait behind its host's other deliveries, so a delivery
// is re-leased only when the process holding it died.
func (q *deliveryQueue) leaseDuration() time.Duration {
	return 10*q.r.cfg.RequestTimeout + time.Minute
}

// pollInterval bounds how long due retries wait when nothing wakes the
// dispatcher.
const pollInterval = time.Second

// deliveryQueue moves deliveries from the store to the network: a
// dispatcher leases due deliveries and hands them to a pool of workers,
// never more than Config.PerHostWorkers at once for one host.
type deliveryQueue struct {
	r       *Relay
	wakeCh  chan struct{}
	work    chan store.Delivery
	ctx     context.Context // cancelled to abort in-flight deliveries
	cancel  context.CancelFunc
	stopCh  chan struct{}
	wg      sync.WaitGroup
	started bool

	mu       sync.Mutex
	busy     int                         // deliveries leased and not finished
	perHost  map[string]int              // the same, per host
	overflow map[string][]store.Delivery // leased, waiting for a host slot
}

func newDeliveryQueue(r *Relay) *deliveryQueue {
	ctx, cancel := context.WithCancel(context.Background())
	return &deliveryQueue{
		r:        r,
		wakeCh:   make(chan struct{}, 1),
		work:     make(chan store.Delivery),
		ctx:      ctx,
		cancel:   cancel,
		stopCh:   make(chan struct{}),
		perHost:  map[string]int{},
		overflow: map[string][]store.Delivery{},
	}
}

// wake tells the dispatcher that new work may be due.
func (q *deliveryQueue) wake() {
	select {
	case q.wakeCh <- struct{}{}:
	default:
	}
}

func (q *deliveryQueue) start() error {
	if q.started {
		return errors.New("relay: already started")
	}
	q.started = true
	for range q.r.cfg.Workers {
		q.wg.Add(1)
		go q.worker()
	}
	q.wg.Add(1)
	go q.dispatch()
	return nil
}

// stop ends the dispatcher and waits for in-flight deliveries; if ctx ends
// first they are cancelled (and stay queued in the store).
func (q *deliveryQueue) stop(ctx context.Context) error {
	if !q.started {
		q.cancel()
		return nil
	}
	close(q.stopCh)
	done := make(chan struct{})
	go func() { q.wg.Wait(); close(done) }()
	select {
	case <-done:
		q.cancel()
		return nil
	case <-ctx.Done():
		q.cancel()
		<-done
		return ctx.Err()
	}
}

// dispatch leases due deliveries while workers are free.
func (q *deliveryQueue) dispatch() {
	defer q.wg.Done()
	defer close(q.work)
	timer := time.NewTimer(pollInterval)
	defer timer.Stop()
	for {
		n, err := q.leaseSome()
		if err != nil && !errors.Is(err, context.Canceled) {
			q.r.log.Error("relay: leasing deliveries", "err", err)
		}
		if n > 0 && err == nil {
			select {
			case <-q.stopCh:
				return
			default:
				continue
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(pollInterval)
		select {
		case <-q.stopCh:
			return
		case <-q.wakeCh:
		case <-timer.C:
		}
	}
}

// leaseSome leases as many due deliveries as there are free workers and
// sends them to the workers. It returns how many it leased.
func (q *deliveryQueue) leaseSome() (int, error) {
	cfg := &q.r.cfg
	q.mu.Lock()
	free := cfg.Workers - q.busy
	skip := map[string]bool{}
	for h, n := range q.perHost {
		if n >= cfg.PerHostWorkers {
			skip[h] = true
		}
	}
	q.mu.Unlock()
	if free <= 0 {
		return 0, nil
	}
	ds, err := q.r.store.Lease(q.ctx, store.LeaseRequest{
		Now:       q.r.now().UTC(),
		Limit:     free,
		Duration:  q.leaseDuration(),
		SkipHosts: skip,
		PerHost:   cfg.PerHostWorkers,
	})
	if err != nil {
		return 0, err
	}
	for _, d := range ds {
		q.mu.Lock()
		q.busy++
		q.perHost[d.Host]++
		ready := q.perHost[d.Host] <= cfg.PerHostWorkers
		if !ready {
			q.overflow[d.Host] = append(q.overflow[d.Host], d)
		}
		q.mu.Unlock()
		if ready {
			q.send(d)
		}
	}
	return len(ds), nil
}

// send hands d to a worker. Workers stop only after the dispatcher, so it
// cannot block forever.
func (q *deliveryQueue) send(d store.Delivery) {
	q.work <- d
}

// finished releases d's worker slot and returns the next delivery waiting
// for that host, if any.
func (q *deliveryQueue) finished(d store.Delivery) (next store.Delivery, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.busy--
	if waiting := q.overflow[d.Host]; len(waiting) > 0 {
		next, q.overflow[d.Host] = waiting[0], waiting[1:]
		if len(q.overflow[d.Host]) == 0 {
			delete(q.overflow, d.Host)
		}
		return next, true
	}
	if q.perHost[d.Host]--; q.perHost[d.Host] <= 0 {
		delete(q.perHost, d.Host)
	}
	return next, false
}

func (q *deliveryQueue) worker() {
	defer q.wg.Done()
	for d := range q.work {
		for {
			q.r.deliver(q.ctx, d)
			next, ok := q.finished(d)
			q.wake()
			if !ok {
				break
			}
			d = next
		}
	}
}

// deliver makes one attempt at d and records the outcome in the store.
func (r *Relay) deliver(ctx context.Context, d store.Delivery) {
	body, err := r.store.GetPayload(ctx, d.PayloadID)
	if errors.Is(err, store.ErrNotFound) {
		r.complete(ctx, d)
		return
	}
	if err != nil {
		r.retry(ctx, d, err, 0)
		return
	}
	status, retryAfter, err := r.post(ctx, d.Inbox, body)
	switch {
	case ctx.Err() != nil:
		// Shutting down: the lease expires and the delivery is retried.
		return
	case err == nil && status >= 200 && status < 300:
		r.complete(ctx, d)
		r.recordOutcome(ctx, d, nil)
	case status == http.StatusGone && d.Subscriber != "":
		r.complete(ctx, d)
		r.subscriberGone(ctx, d)
	case err == nil && status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		// The receiver refuses this message; repeating it will not help.
		r.complete(ctx, d)
		r.recordOutcome(ctx, d, fmt.Errorf("HTTP %d", status))
	default:
		if err == nil {
			err = fmt.Errorf("HTTP %d", status)
		}
		r.retry(ctx, d, err, retryAfter)
	}
}

// post signs and sends one delivery. It returns the status, a Retry-After
// delay if the receiver gave one, and a transport error.
func (r *Relay) post(ctx context.Context, inbox string, body []byte) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, inbox, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", activityJSON)
	req.Header.Set("Accept", acceptActivity)
	req.Header.Set("User-Agent", r.cfg.UserAgent)
	if err := r.signer.SignRequest(req, body, r.now()); err != nil {
		return 0, 0, err
	}
	resp, err := r.transport.RoundTrip(req)
	if err != nil {
		return 0, 0, err
	}
	drain(resp)
	return resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), r.now()), nil
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

func (r *Relay) retry(ctx context.Context, d store.Delivery, cause error, retryAfter time.Duration) {
	d.Attempts++
	d.LastError = cause.Error()
	r.recordOutcome(ctx, d, cause)
	if d.Attempts >= r.cfg.MaxAttempts {
		r.log.Warn("relay: giving up delivery", "inbox", d.Inbox, "attempts", d.Attempts, "err", cause)
		r.complete(ctx, d)
		return
	}
	wait := r.backoff(d.Attempts)
	if retryAfter > wait {
		wait = min(retryAfter, maxBackoff)
	}
	d.NotBefore = r.now().UTC().Add(wait)
	if err := r.store.Retry(ctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
		r.log.Error("relay: rescheduling delivery", "inbox", d.Inbox, "err", err)
	}
}

func (r *Relay) complete(ctx context.Context, d store.Delivery) {
	if err := r.store.Complete(ctx, d.ID); err != nil {
		r.log.Error("relay: completing delivery", "inbox", d.Inbox, "err", err)
	}
}

// recordOutcome updates the subscriber's delivery statistics.
func (r *Relay) recordOutcome(ctx context.Context, d store.Delivery, failure error) {
	if d.Subscriber == "" {
		return
	}
	now := r.now().UTC()
	_, err := r.store.UpdateSubscriber(ctx, d.Subscriber, func(s *store.Subscriber, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		if failure == nil {
			s.Delivered++
			s.LastSuccess = now
			s.FailingSince = time.Time{}
			return nil
		}
		s.Failed++
		s.LastFailure = now
		s.LastError = failure.Error()
		if s.FailingSince.IsZero() {
			s.FailingSince = now
		}
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
		r.log.Error("relay: recording delivery outcome", "subscriber", d.Subscriber, "err", err)
	}
}

// subscriberGone ends a subscription whose inbox answered 410 Gone.
func (r *Relay) subscriberGone(ctx context.Context, d store.Delivery) {
	s, err := r.store.GetSubscriber(ctx, d.Subscriber)
	if err != nil {
		return
	}
	r.log.Info("relay: subscriber gone, removing it", "actor", s.ActorID, "inbox", d.Inbox)
	if err := r.removeSubscriber(ctx, &s, nil); err != nil {
		r.log.Error("relay: removing gone subscriber", "actor", s.ActorID, "err", err)
	}
}
