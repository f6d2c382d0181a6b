package relay

// Rate budgets: a subscriber (or topic follower) capped at N posts per
// hour gets at most N Creates and Announces in any window of an hour that
// starts with a post it received; further posts in the window are dropped
// for it and counted. Updates, Deletes and Moves are never counted and
// always go through. Budgets are kept in memory by each process.

import (
	"sync"
	"sync/atomic"
	"time"
)

// budgets counts posts per budget key (a subscriber's actor id, or
// "topic " + a topic follower's inbox). The zero value is ready to use.
type budgets struct {
	mu      sync.Mutex
	windows map[string]*budgetWindow
	dropped atomic.Int64
}

type budgetWindow struct {
	start   time.Time
	used    int
	dropped int64
}

// allows reports whether key has room for one more post under limit at
// now, without spending it (see spend): a fan-out charges its recipients
// only once it is stored. It counts a refusal as a drop.
func (b *budgets) allows(key string, limit int, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.window(key, now)
	if w.used < limit {
		return true
	}
	w.dropped++
	b.dropped.Add(1)
	return false
}

// spend charges one post to each key.
func (b *budgets) spend(keys []string, now time.Time) {
	if len(keys) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range keys {
		b.window(k, now).used++
	}
}

// window returns key's current window, starting a new one when the last
// is an hour old. b.mu is held.
func (b *budgets) window(key string, now time.Time) *budgetWindow {
	if b.windows == nil {
		b.windows = map[string]*budgetWindow{}
	}
	w := b.windows[key]
	if w == nil {
		w = &budgetWindow{start: now}
		b.windows[key] = w
	}
	if now.Sub(w.start) >= time.Hour {
		w.start, w.used = now, 0
	}
	return w
}

// droppedFor returns how many posts the budget of key dropped.
func (b *budgets) droppedFor(key string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.windows[key]; w != nil {
		return w.dropped
	}
	return 0
}

// BudgetDrops returns how many posts rate budgets dropped for the
// subscriber actorID since the relay started (0 for an unknown one), and
// for all subscribers and topic followers together.
func (r *Relay) BudgetDrops(actorID string) (subscriber, total int64) {
	return r.budgets.droppedFor(actorID), r.budgets.dropped.Load()
}
