package relay

import (
	"math"
	"sync"
	"time"
)

// RateLimit is a token bucket: up to Burst events may happen at once, and
// Rate more per second after that. The relay keeps one bucket per remote
// host. In a Config, the zero value selects the default the field names and
// a negative Rate switches the limit off.
type RateLimit struct {
	Rate  float64 // events per second, refilled continuously
	Burst int     // bucket size; values < 1 count as 1
}

// limiter is a set of token buckets keyed by host. A nil limiter allows
// everything.
type limiter struct {
	rate  float64
	burst float64

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastPrune time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// newLimiter returns a limiter for l, or nil when l disables limiting.
func newLimiter(l RateLimit) *limiter {
	if l.Rate <= 0 {
		return nil
	}
	return &limiter{rate: l.Rate, burst: float64(max(l.Burst, 1)), buckets: map[string]*bucket{}}
}

// pruneEvery is how often full (idle) buckets are forgotten, so that the
// map does not grow with every host ever seen.
const pruneEvery = time.Minute

// allow takes a token from key's bucket. When there is none it returns
// false and how long until there will be one.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastPrune) > pruneEvery {
		l.prune(now)
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.refill(now, l.rate, l.burst)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
	return false, wait
}

// empty reports whether key's bucket has no token left, without taking
// one, and if so how long until it will have one: for limits that count
// failures, checked before the work that may fail.
func (l *limiter) empty(key string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return false, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return false, 0
	}
	b.refill(now, l.rate, l.burst)
	if b.tokens >= 1 {
		return false, 0
	}
	return true, time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
}

// refund gives back a token taken by allow, for an event that turned out
// not to count (a key fetch that succeeded). The bucket never holds more
// than its burst.
func (l *limiter) refund(key string, now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return // pruned: it is full
	}
	b.refill(now, l.rate, l.burst)
	b.tokens = min(l.burst, b.tokens+1)
}

func (b *bucket) refill(now time.Time, rate, burst float64) {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.last = now
	}
}

// prune forgets buckets that have refilled completely: a new bucket would
// be the same.
func (l *limiter) prune(now time.Time) {
	l.lastPrune = now
	for k, b := range l.buckets {
		if b.refill(now, l.rate, l.burst); b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1, for a
// Retry-After header.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
