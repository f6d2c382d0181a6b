package relay

import "time"

// A circuit breaker per receiving host keeps a dead, hanging or throttling
// host from costing the other hosts anything.
//
//   - closed: deliveries flow, up to Config.PerHostWorkers at once.
//     Config.BreakerThreshold consecutive failed attempts (transport errors,
//     timeouts, 5xx, 408) open it. A slow host gets one delivery at a
//     time (see below).
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
//
// Independently of its breaker, a host is slow from when a request to it
// times out, or has waited Config.MinRequestTimeout for its answer, until
// it answers again (any HTTP status). A slow host gets one delivery at a
// time, each timeout halves its request timeout (down to
// MinRequestTimeout), and slow hosts together hold at most
// Config.SlowHostWorkers deliveries, outside the Workers that hosts which
// answer use. A half-open breaker's probe gets the whole RequestTimeout.

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
	// outcomeFailed: the host answered 5xx or 408.
	outcomeFailed
	// outcomeUnreachable: a transport error other than a timeout.
	outcomeUnreachable
	// outcomeTimedOut: the request timed out (see Config.RequestTimeout).
	outcomeTimedOut
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
// Config.PerHostWorkers when its breaker is closed (1 if the host is slow),
// 1 when half-open, 0 when open.
func (q *deliveryQueue) hostCapLocked(host string, now time.Time) int {
	b := q.refreshBreakerLocked(host, now)
	switch {
	case b == nil || b.state == breakerClosed:
		if _, slow := q.slow[host]; slow {
			return 1
		}
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
	case outcomeFailed, outcomeUnreachable, outcomeTimedOut:
		if cfg.BreakerThreshold < 0 {
			// Failures never open the breaker. One a 429 opened is over
			// once its pause is: its probe failing is a failure like any.
			if b != nil && b.state == breakerHalfOpen && b.probing {
				delete(q.breakers, host)
			}
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

// timeoutLocked returns the request timeout of the next attempt to host:
// its learnt timeout while it is slow, except for a half-open breaker's
// probe, which gets Config.RequestTimeout like a host that answers.
func (q *deliveryQueue) timeoutLocked(host string) time.Duration {
	if b := q.breakers[host]; b != nil && b.state == breakerHalfOpen {
		return q.r.cfg.RequestTimeout
	}
	if t, slow := q.slow[host]; slow {
		return t
	}
	return q.r.cfg.RequestTimeout
}

// learnLocked updates what is known of host's slowness from the outcome of
// an attempt whose request timeout was timeout: a timeout makes the host
// slow and halves its timeout (once for attempts sent with the same
// timeout), an answer makes it a host like any other.
func (q *deliveryQueue) learnLocked(host string, o outcome, timeout time.Duration) {
	cfg := &q.r.cfg
	switch o {
	case outcomeTimedOut:
		current, slow := q.slow[host]
		if !slow {
			current = cfg.RequestTimeout
		}
		if timeout <= current { // not sent before the last halving
			current = max(current/2, cfg.MinRequestTimeout)
		}
		if !slow {
			q.r.log.Warn("relay: host is slow, shortening its timeout", "host", host, "timeout", current)
		}
		q.markSlowLocked(host, current)
	case outcomeDelivered, outcomeRefused, outcomeFailed, outcomeThrottled:
		if _, slow := q.slow[host]; slow {
			q.r.log.Info("relay: slow host answers again", "host", host)
			q.slowBusy -= q.perHost[host]
			delete(q.slow, host)
		}
	}
}

// markSlowLocked makes host slow, its next requests timing out after
// timeout. The host's deliveries waiting here for a slot are dropped, to
// be given back to the store (see returnReleased): a slow host gets one
// at a time, leased when it is due.
func (q *deliveryQueue) markSlowLocked(host string, timeout time.Duration) {
	if _, slow := q.slow[host]; !slow {
		q.slowBusy += q.perHost[host]
	}
	q.slow[host] = timeout
	for _, d := range q.overflow[host] {
		q.dropLocked(d)
		q.released = append(q.released, q.forgetLocked(d))
	}
	delete(q.overflow, host)
}
