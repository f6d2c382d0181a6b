package relay

// Health checks: is the process serving (/healthz), and can it do its work
// (/readyz: the store answers and the delivery loop runs).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/fedirelay/relay/store"
)

// healthState is what readiness is decided on besides asking the store.
type healthState struct {
	leaseStart atomic.Int64 // Unix nanoseconds a Lease call began; 0 when none runs
}

// leasing records that the dispatcher started a Lease at t, or finished
// it (zero t).
func (h *healthState) leasing(t time.Time) {
	if t.IsZero() {
		h.leaseStart.Store(0)
		return
	}
	h.leaseStart.Store(t.UnixNano())
}

// Health limits: how long the store may take to answer the readiness
// probe, and how long one Lease of the delivery loop may take before the
// loop counts as stuck.
const (
	readyStoreTimeout = 5 * time.Second
	maxLeaseDuration  = time.Minute
)

// Ready reports whether the relay can do its work: nil when it is started
// and not closed, its store answers a read within 5 seconds (and, for a
// store with an Err method such as filestore, has not failed), and the
// delivery loop is not stuck in a store call for over a minute. Otherwise
// it returns an error saying what is wrong. It is safe for concurrent use
// and reads the store once.
func (r *Relay) Ready(ctx context.Context) error {
	if r.isClosed() {
		return ErrClosed
	}
	r.closeMu.Lock()
	started := r.queue.started
	r.closeMu.Unlock()
	if !started || r.queue.stopping() {
		return errors.New("relay: delivery not started")
	}
	if f, ok := r.baseStore().(interface{ Err() error }); ok {
		if err := f.Err(); err != nil {
			return fmt.Errorf("relay: store failed: %w", err)
		}
	}
	if t := r.health.leaseStart.Load(); t != 0 && time.Since(time.Unix(0, t)) > maxLeaseDuration {
		return fmt.Errorf("relay: delivery loop waiting on the store for %s", time.Since(time.Unix(0, t)).Round(time.Second))
	}
	ctx, cancel := context.WithTimeout(ctx, readyStoreTimeout)
	defer cancel()
	if _, err := r.store.GetValue(ctx, keyValueName); err != nil {
		return fmt.Errorf("relay: store does not answer: %w", err)
	}
	return nil
}

// baseStore returns the store without the Observer's wrapper.
func (r *Relay) baseStore() store.Store {
	if o, ok := r.store.(observedStore); ok {
		return o.Store
	}
	return r.store
}

// ServeHealthz answers a liveness probe: 200 "ok" whenever the process
// serves HTTP, even while the relay is closing. Mount it where you like
// (examples/relay serves it at /healthz of the admin listener).
func (r *Relay) ServeHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("ok\n"))
}

// ServeReadyz answers a readiness probe: 200 "ready" when Ready returns
// nil, 503 with the reason otherwise (see Ready).
func (r *Relay) ServeReadyz(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := r.Ready(req.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// noteLag records how long the oldest of the deliveries just leased at
// now had been due (see DeliveryStatus.Lag).
func (q *deliveryQueue) noteLag(ds []store.Delivery, now time.Time) {
	var lag time.Duration
	for _, d := range ds {
		lag = max(lag, now.Sub(d.NotBefore))
	}
	q.mu.Lock()
	q.lag, q.lagAt = lag, now
	q.mu.Unlock()
}

// lagLocked estimates the age of the oldest due delivery at now; q.mu
// must be held.
func (q *deliveryQueue) lagLocked(now time.Time) time.Duration {
	if q.lagAt.IsZero() {
		return 0
	}
	if q.busy >= q.r.cfg.Workers {
		return q.lag + now.Sub(q.lagAt)
	}
	return q.lag
}
