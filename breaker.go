package relay

import "time"

// A circuit breaker per receiving host keeps a dead, hanging or throttling
// host from costing the other hosts anything.
//
//   - closed: deliveries flow, up to Config.PerHostWorkers at once.
//     Config.BreakerThreshold consecutive failed attempts (transport errors,
//     timeouts, 5xx, 408) open it.
//   - open: nothing is sent to the host until the cool-off ends; its queued
//     deliveries stay in the store untouched (the dispatcher skips the host)
//     and deliveries already leased are rescheduled to the end of the
//     cool-off without using up an attempt. A 429 also opens it, for the
//     Retry-After the host asked for.
//   - half-open: after the cool-off one delivery, the probe, is let through.
//     Any answer from the host other than a failure closes the breaker; a
//     failure opens it again for twice the previous cool-off, at most
//     maxCooloffFactor × Config.BreakerCooloff.
//
// The breakers live in the deliveryQueue and are guarded by its mutex.

// maxCooloffFactor bounds the growth of a breaker's cool-off.
const maxCooloffFactor = 64

type breakerState int

const (
	breakerClosed breakerState = iota
	breakerOpen
	breakerHalfOpen
)

func (s breakerState) String() string {
	switch s {
	case breakerOpen:
		return "open"
	case breakerHalfOpen:
		return "half-open"
	}
	return "closed"
}

// breaker is the state of one host. Hosts without a breaker entry are
// closed with no recent failure.
type breaker struct {
	state    breakerState
	failures int           // consecutive failures while closed
	until    time.Time     // end of the cool-off while open
	cooloff  time.Duration // the last cool-off, doubled by a failed probe
	probing  bool          // a probe is in flight (half-open)
}

// outcome is how one delivery attempt ended, as far as the host's breaker
// is concerned.
type outcome int

const (
	// outcomeSkipped: no request was sent (breaker open, payload gone,
	// store error, shutting down).
	outcomeSkipped outcome = iota
	// outcomeDelivered: the host answered 2xx.
	outcomeDelivered
	// outcomeRefused: the host answered a 4xx that is not retried; it is
	// alive.
	outcomeRefused
	// outcomeFailed: transport error, timeout, 5xx or 408.
	outcomeFailed
	// outcomeThrottled: 429 Too Many Requests.
	outcomeThrottled
	// outcomeCanceled: the attempt was cancelled by shutdown.
	outcomeCanceled
)

// refreshBreakerLocked moves host's breaker from open to half-open once its
// cool-off has ended, and returns it (nil for a closed host without
// failures).
func (q *deliveryQueue) refreshBreakerLocked(host string, now time.Time) *breaker {
	b := q.breakers[host]
	if b != nil && b.state == breakerOpen && !now.Before(b.until) {
		b.state = breakerHalfOpen
		b.probing = false
	}
	return b
}

// hostCapLocked returns how many deliveries to host may be in flight now:
// Config.PerHostWorkers when its breaker is closed, 1 when half-open, 0
// when open.
func (q *deliveryQueue) hostCapLocked(host string, now time.Time) int {
	b := q.refreshBreakerLocked(host, now)
	switch {
	case b == nil || b.state == breakerClosed:
		return q.r.cfg.PerHostWorkers
	case b.state == breakerHalfOpen:
		return 1
	}
	return 0
}

// admitLocked decides whether a delivery to host may be attempted now. If
// not, it returns when it should be tried again.
func (q *deliveryQueue) admitLocked(host string, now time.Time) (bool, time.Time) {
	b := q.refreshBreakerLocked(host, now)
	switch {
	case b == nil || b.state == breakerClosed:
		return true, time.Time{}
	case b.state == breakerOpen:
		return false, b.until
	case b.probing:
		// Another delivery is probing the host: wait for its verdict.
		return false, now.Add(q.r.cfg.BreakerCooloff)
	}
	b.probing = true
	return true, time.Time{}
}

// recordLocked updates host's breaker with the outcome of an attempt.
// retryAfter is the delay a 429 asked for.
func (q *deliveryQueue) recordLocked(host string, o outcome, retryAfter time.Duration, now time.Time) {
	cfg := &q.r.cfg
	b := q.breakers[host]
	switch o {
	case outcomeDelivered, outcomeRefused:
		if b != nil {
			if b.state != breakerClosed {
				q.r.log.Info("relay: host answers again, circuit closed", "host", host)
			}
			delete(q.breakers, host)
		}
	case outcomeFailed:
		if b == nil && cfg.BreakerThreshold < 0 {
			return
		}
		if b == nil {
			b = &breaker{}
			q.breakers[host] = b
		}
		switch b.state {
		case breakerHalfOpen:
			if !b.probing {
				return // a straggler that started before the breaker opened
			}
			b.cooloff = min(2*b.cooloff, maxCooloffFactor*cfg.BreakerCooloff)
			q.openLocked(host, b, b.cooloff, now)
		case breakerClosed:
			if b.failures++; cfg.BreakerThreshold > 0 && b.failures >= cfg.BreakerThreshold {
				b.cooloff = cfg.BreakerCooloff
				q.openLocked(host, b, b.cooloff, now)
			}
		}
	case outcomeThrottled:
		if b == nil {
			b = &breaker{}
			q.breakers[host] = b
		}
		pause := retryAfter
		if pause <= 0 {
			pause = cfg.BreakerCooloff
		}
		if b.cooloff == 0 {
			b.cooloff = cfg.BreakerCooloff
		}
		if until := now.Add(min(pause, maxBackoff)); b.state != breakerOpen || until.After(b.until) {
			q.openLocked(host, b, min(pause, maxBackoff), now)
		}
	case outcomeCanceled, outcomeSkipped:
		if b != nil && b.state == breakerHalfOpen {
			b.probing = false
		}
	}
}

func (q *deliveryQueue) openLocked(host string, b *breaker, d time.Duration, now time.Time) {
	if b.state != breakerOpen {
		q.r.log.Warn("relay: circuit opened, pausing deliveries to host", "host", host, "for", d)
	}
	b.state, b.until, b.probing, b.failures = breakerOpen, now.Add(d), false, 0
}
