package relay

import (
	"context"
	"time"
)

// Clock is the relay's source of time. The relay reads the time (signature
// dates, retry schedules, circuit-breaker cool-offs, dormancy, statistics)
// and waits for it (the delivery dispatcher's polls, the periodic flush of
// delivery statistics, the traffic summaries, the block list's reloads)
// only through its Clock, so that tests can run a relay
// on a fake clock and move time forward at will, delivery request timeouts
// (Config.RequestTimeout and the shorter ones learnt for slow hosts)
// included. The exceptions always use real time: the timeouts of fetches
// (Config.RequestTimeout for documents, KeyFetchTimeout), the brief
// gathering of completed deliveries into one store write, the
// dispatcher's brief wait for a batch of free workers, and Ready's limits
// (how long the store may take to answer, and a Lease before the delivery
// loop counts as stuck).
//
// A Clock must be safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives the current time once d has
	// passed, like time.After; with d <= 0 it receives at once (the
	// delivery loop relies on it after a jump). The relay does not stop
	// these waits; an implementation must not leak resources when the
	// channel is never read (a buffered channel of one is enough).
	After(d time.Duration) <-chan time.Time
}

// realClock is the Clock used when Config.Clock is nil: the system clock.
type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// withTimeout returns a copy of ctx that is cancelled with cause once d
// has passed on the relay's Clock, and the function that releases it.
func (r *Relay) withTimeout(ctx context.Context, d time.Duration, cause error) (context.Context, context.CancelFunc) {
	if _, real := r.clock.(realClock); real {
		return context.WithTimeoutCause(ctx, d, cause)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	after := r.clock.After(d) // now, not in the goroutine: the wait starts on return
	go func() {
		select {
		case <-after:
			cancel(cause)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}
