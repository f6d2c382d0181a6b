package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// TestRetryBackoffSchedule follows one delivery to a failing inbox: each
// attempt is signed anew with a fresh Date, the delay doubles with ±20 %
// jitter, and the delivery is given up after MaxAttempts.
func TestRetryBackoffSchedule(t *testing.T) {
	e := newMemEnv(t, relay.Config{RetryBackoff: time.Minute, MaxAttempts: 5, BreakerThreshold: -1})
	in := e.subscribed("a.test", "b.test")
	f := (&faultPlan{status: http.StatusServiceUnavailable}).install(in[1])
	e.post(in[0], "hello")

	var delays []time.Duration
	var attemptTimes []time.Time
	for n := 1; n < 5; n++ {
		var d store.Delivery
		e.eventually(func() bool {
			rs := e.st.retriesWith(n)
			if len(rs) == 1 {
				d = rs[0]
			}
			return len(rs) == 1
		}, "retry %d", n)
		attemptTimes = append(attemptTimes, e.clock.Now())
		delay := d.NotBefore.Sub(e.clock.Now())
		nominal := time.Minute << (n - 1)
		assert.GreaterOrEqual(t, delay, nominal*8/10, "delay after attempt %d", n)
		assert.LessOrEqual(t, delay, nominal*12/10, "delay after attempt %d", n)
		assert.Equal(t, "HTTP 503", d.LastError)
		delays = append(delays, delay)
		e.clock.Set(d.NotBefore) // the next attempt is due exactly now
	}
	// The fifth attempt is the last: the delivery is dropped.
	e.eventually(func() bool { return f.count() == 5 && e.backlog("b.test") == 0 }, "given up after 5 attempts")
	attemptTimes = append(attemptTimes, e.clock.Now())
	assert.Empty(t, e.st.retriesWith(5))

	jittered := false
	for n, d := range delays {
		jittered = jittered || d != time.Minute<<n
	}
	assert.True(t, jittered, "delays have jitter: %v", delays)

	// Every attempt carried the Date of its own time.
	f.mu.Lock()
	dates := append([]string(nil), f.dates...)
	f.mu.Unlock()
	require.Len(t, dates, 5)
	for k, at := range attemptTimes {
		assert.Equal(t, at.UTC().Format(http.TimeFormat), dates[k], "Date of attempt %d", k+1)
	}

	s, err := e.r.Status(context.Background(), in[1].RelayActorID())
	require.NoError(t, err)
	assert.EqualValues(t, 5, s.Failed)
	assert.EqualValues(t, 1, s.Delivered, "the Accept only")
	assert.Equal(t, "HTTP 503", s.LastError)
	assert.Zero(t, s.Backlog)
}

// TestRetryIsSignedAnewAndDeliveredOnce: after failures, the attempt that
// succeeds carries a valid signature with a fresh Date, and the subscriber
// gets exactly one copy.
func TestRetryIsSignedAnewAndDeliveredOnce(t *testing.T) {
	e := newMemEnv(t, relay.Config{RetryBackoff: time.Minute, BreakerThreshold: -1})
	in := e.subscribed("a.test", "b.test")
	f := (&faultPlan{status: http.StatusInternalServerError}).install(in[1])
	note := e.post(in[0], "hello")
	for n := 1; n <= 2; n++ {
		var d store.Delivery
		e.eventually(func() bool {
			rs := e.st.retriesWith(n)
			if len(rs) > 0 {
				d = rs[0]
			}
			return len(rs) > 0
		})
		if n == 2 {
			f.set(0)
		}
		e.clock.Set(d.NotBefore)
	}
	rc := waitFor(t, in[1], "Create", note.ID)
	assert.Equal(t, e.clock.Now().UTC().Format(http.TimeFormat), rc.Header.Get("Date"))
	assert.Len(t, in[1].Rejected(), 2, "the third attempt verified")
	e.settled()
	assert.Equal(t, 1, countFor(in[1], "Create", note.ID))

	s, err := e.r.Status(context.Background(), in[1].RelayActorID())
	require.NoError(t, err)
	assert.EqualValues(t, 2, s.Delivered, "the Accept and the post")
	assert.EqualValues(t, 2, s.Failed)
	assert.True(t, e.clock.Now().Equal(s.LastSuccess), "last success %v", s.LastSuccess)
	assert.Equal(t, "HTTP 500", s.LastError)
	assert.True(t, s.FailingSince.IsZero(), "no failure run after a success")
	assert.Equal(t, store.StateAccepted, s.State)
}

// TestWhichFailuresAreRetried: 4xx answers other than 408 and 429 are not
// retried; 408, 429, 5xx and transport errors are.
func TestWhichFailuresAreRetried(t *testing.T) {
	for _, tc := range []struct {
		status  int
		retried bool
	}{
		{http.StatusBadRequest, false},
		{http.StatusUnauthorized, false},
		{http.StatusForbidden, false},
		{http.StatusUnprocessableEntity, false},
		{http.StatusRequestTimeout, true},
		{http.StatusTooManyRequests, true},
		{http.StatusInternalServerError, true},
		{http.StatusBadGateway, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			e := newMemEnv(t, relay.Config{BreakerThreshold: -1})
			in := e.subscribed("a.test", "b.test")
			f := (&faultPlan{status: tc.status}).install(in[1])
			e.post(in[0], "hello")
			e.eventually(func() bool { return f.count() == 1 })
			e.settled()
			if tc.retried {
				assert.Len(t, e.st.retriesWith(1), 1)
				assert.Equal(t, 1, e.backlog("b.test"))
			} else {
				assert.Empty(t, e.st.retriesWith(1))
				e.eventually(func() bool { return e.backlog("b.test") == 0 }, "dropped")
			}
			s, err := e.r.Status(context.Background(), in[1].RelayActorID())
			require.NoError(t, err)
			assert.EqualValues(t, 1, s.Failed)
			assert.Equal(t, fmt.Sprintf("HTTP %d", tc.status), s.LastError)
		})
	}
}

// retryAfterHandler answers POSTs with 429 and a Retry-After while on.
type retryAfterHandler struct {
	next  http.Handler
	after string
	mu    sync.Mutex
	on    bool
	posts int
}

func (h *retryAfterHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	on := h.on && r.Method == http.MethodPost
	if r.Method == http.MethodPost {
		h.posts++
	}
	h.mu.Unlock()
	if on {
		w.Header().Set("Retry-After", h.after)
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	h.next.ServeHTTP(w, r)
}

func (h *retryAfterHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.posts
}

// TestRetryAfterIsHonoured: a 429 with Retry-After delays the retry (not
// the shorter backoff) and pauses the whole host meanwhile.
func TestRetryAfterIsHonoured(t *testing.T) {
	e := newMemEnv(t, relay.Config{RetryBackoff: time.Second})
	in := e.subscribed("a.test", "b.test")
	h := &retryAfterHandler{next: in[1], after: "600", on: true}
	e.net.Handle("b.test", h)

	first := e.post(in[0], "one")
	// The worker writes the retry to the store, then records the pause in
	// the host's breaker: wait for both.
	var d store.Delivery
	e.eventually(func() bool {
		rs := e.st.retriesWith(1)
		if len(rs) == 1 {
			d = rs[0]
		}
		return len(rs) == 1 && e.circuit("b.test").Circuit == "open"
	}, "the 429 is retried and pauses the host")
	assert.Equal(t, 600*time.Second, d.NotBefore.Sub(e.clock.Now()), "Retry-After, not the 1 s backoff")

	// Another activity for the paused host waits too.
	second := e.post(in[0], "two")
	e.advance(5 * time.Minute)
	r, _ := e.st.leaseAt(e.clock.Now())
	assert.True(t, r.SkipHosts["b.test"], "the paused host is skipped")
	e.settled()
	assert.Equal(t, 1, h.count(), "nothing sent while paused")
	assert.Equal(t, 2, e.backlog("b.test"))

	h.mu.Lock()
	h.on = false
	h.mu.Unlock()
	e.advance(5 * time.Minute)
	waitFor(t, in[1], "Create", first.ID)
	waitFor(t, in[1], "Create", second.ID)
}

// TestDispatcherLooksAgainAfterClockJump: when the relay's Clock passes
// the dispatcher's next poll while it is leasing, the dispatcher looks at
// the queue again at once, not a poll interval after the new time.
func TestDispatcherLooksAgainAfterClockJump(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	e.settled()
	var jumped time.Time
	var once sync.Once
	e.st.mu.Lock()
	e.st.afterLease = func() {
		once.Do(func() {
			e.clock.Advance(time.Minute)
			e.st.mu.Lock()
			jumped = e.clock.Now()
			e.st.mu.Unlock()
		})
	}
	e.st.mu.Unlock()
	e.clock.Advance(time.Second) // the dispatcher's poll: it leases, and the clock jumps meanwhile
	e.eventually(func() bool {
		e.st.mu.Lock()
		at := jumped
		e.st.mu.Unlock()
		if at.IsZero() {
			return false
		}
		_, ok := e.st.leaseAt(at)
		return ok
	}, "no lease after the clock jumped")
}

// TestCircuitBreakerOpensAndCloses: consecutive failures open a host's
// breaker, nothing is sent during the cool-off (and no attempt is used
// up), then one probe is let through: a failed probe reopens it for twice
// as long, a successful one closes it and the backlog flows.
func TestCircuitBreakerOpensAndCloses(t *testing.T) {
	e := newMemEnv(t, relay.Config{
		RetryBackoff: time.Second, BreakerThreshold: 3, BreakerCooloff: time.Minute, PerHostWorkers: 4, MaxAttempts: 100,
	})
	in := e.subscribed("a.test", "b.test", "c.test")
	f := (&faultPlan{status: http.StatusServiceUnavailable}).install(in[1])
	var notes []*relaytest.Note
	for k := range 6 {
		notes = append(notes, e.post(in[0], fmt.Sprint("post ", k)))
	}
	e.eventually(func() bool { return e.circuit("b.test").Circuit == "open" }, "breaker opens")
	e.settled()
	sent := f.count()
	assert.GreaterOrEqual(t, sent, 3)
	assert.Equal(t, sent, e.st.burnedAttempts(), "an attempt is counted only for a request sent")

	// During the cool-off the host is skipped although its retries are due.
	e.advance(30 * time.Second)
	r, _ := e.st.leaseAt(e.clock.Now())
	assert.True(t, r.SkipHosts["b.test"])
	e.settled()
	assert.Equal(t, sent, f.count(), "nothing sent to an open host")
	assert.Equal(t, 6, e.backlog("b.test"))

	// The other host is not affected.
	for _, n := range notes {
		waitFor(t, in[2], "Create", n.ID)
	}

	// Half-open: exactly one probe, which fails: open for 2 minutes.
	e.advance(31 * time.Second)
	e.eventually(func() bool { return f.count() == sent+1 }, "one probe")
	e.eventually(func() bool { return e.circuit("b.test").Circuit == "open" }, "reopened")
	e.settled()
	assert.Equal(t, sent+1, f.count(), "only the probe was sent")
	assert.True(t, e.clock.Now().Add(2*time.Minute).Equal(e.circuit("b.test").OpenUntil), "cool-off doubled")
	assert.Equal(t, sent+1, e.st.burnedAttempts())

	// The host recovers: the next probe closes the breaker and all flows.
	f.set(0)
	e.advance(2 * time.Minute)
	for _, n := range notes {
		waitFor(t, in[1], "Create", n.ID)
	}
	assert.Equal(t, "closed", e.circuit("b.test").Circuit)
	e.eventually(func() bool { return e.backlog("b.test") == 0 })
}

// TestGoneInboxEndsSubscription: 410 Gone from a subscriber's inbox ends
// its subscription.
func TestGoneInboxEndsSubscription(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test")
	(&faultPlan{status: http.StatusGone}).install(in[1])
	e.post(in[0], "hello")
	e.eventually(func() bool {
		_, err := e.r.Subscriber(context.Background(), in[1].RelayActorID())
		return errors.Is(err, relay.ErrNotSubscribed)
	}, "subscription ends")
	assert.Zero(t, e.backlog("b.test"))
}

// TestGoneActorEndsSubscription: when a subscriber's inbox refuses a
// delivery (404) and its actor answers 410 Gone, the subscription ends;
// while the actor is there, it stays.
func TestGoneActorEndsSubscription(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test", "c.test")
	gone := in[1].RelayActorID()
	for _, i := range in[1:] {
		actor := i.RelayActorID()
		goneActor := i == in[1]
		i.SetFault(func(r *http.Request) int {
			switch {
			case r.Method == http.MethodPost:
				return http.StatusNotFound
			case goneActor && "https://"+r.Host+r.URL.Path == actor:
				return http.StatusGone
			}
			return 0
		})
	}
	e.post(in[0], "hello")
	e.eventually(func() bool {
		_, err := e.r.Subscriber(context.Background(), gone)
		return errors.Is(err, relay.ErrNotSubscribed)
	}, "subscription ends")
	// c.test's delivery may still be queued, or leased but not yet handed
	// to a worker (not counted in flight): wait until it is finished.
	e.drained()
	s, err := e.r.Status(context.Background(), in[2].RelayActorID())
	require.NoError(t, err, "a 404 alone does not end a subscription")
	assert.Equal(t, "HTTP 404", s.LastError)
}

// TestDormancyAndRevival: a subscriber failing for DormantAfter becomes
// dormant (its deliveries dropped, nothing queued for it) and is accepted
// again as soon as it sends something.
func TestDormancyAndRevival(t *testing.T) {
	e := newMemEnv(t, relay.Config{
		DormantAfter: 10 * time.Minute, RetryBackoff: 2 * time.Minute, MaxAttempts: 100, BreakerThreshold: -1,
	})
	in := e.subscribed("a.test", "b.test", "c.test")
	a, b, c := in[0], in[1], in[2]
	f := (&faultPlan{status: http.StatusServiceUnavailable}).install(b)
	ctx := context.Background()

	e.post(a, "first")
	e.eventually(func() bool { return len(e.st.retriesWith(1)) == 1 })
	s, err := e.r.Status(ctx, b.RelayActorID())
	require.NoError(t, err)
	assert.True(t, e.clock.Now().Equal(s.FailingSince), "failing since %v", s.FailingSince)
	assert.Equal(t, store.StateAccepted, s.State)

	// Eleven minutes later the retry fails again: dormant.
	e.advance(11 * time.Minute)
	e.eventually(func() bool {
		s, err = e.r.Status(ctx, b.RelayActorID())
		return err == nil && s.State == store.StateDormant
	}, "dormant")
	// The attempt that made b dormant stores the state before it drops
	// b's deliveries: once it is finished, they are gone.
	e.settled()
	s, err = e.r.Status(ctx, b.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, store.StateDormant, s.State)
	assert.Zero(t, s.Backlog, "deliveries dropped")

	// Nothing is queued for a dormant subscriber.
	before := f.count()
	second := e.post(a, "second")
	waitFor(t, c, "Create", second.ID)
	assert.Zero(t, e.backlog("b.test"))
	e.settled()
	assert.Equal(t, before, f.count())

	// It sends something: accepted again, and it receives again.
	f.set(0)
	own := e.post(b, "I am back")
	waitFor(t, c, "Create", own.ID)
	s, err = e.r.Status(ctx, b.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, s.State)
	assert.True(t, s.FailingSince.IsZero())
	third := e.post(a, "third")
	waitFor(t, b, "Create", third.ID)
}

// TestHostBacklogShedsOldestCreates: a host's backlog over MaxHostBacklog
// loses its oldest Creates; Updates and Deletes are kept.
func TestHostBacklogShedsOldestCreates(t *testing.T) {
	e := newMemEnv(t, relay.Config{MaxHostBacklog: 3, BreakerThreshold: 1, BreakerCooloff: time.Hour, RetryBackoff: time.Hour})
	in := e.subscribed("a.test", "b.test")
	a, b := in[0], in[1]
	f := (&faultPlan{status: http.StatusServiceUnavailable}).install(b)
	ctx := context.Background()

	p0 := e.post(a, "p0") // fails and opens b's breaker; stays queued
	e.eventually(func() bool { return e.circuit("b.test").Circuit == "open" })
	e.settled()
	step := func() { e.clock.Advance(time.Second) } // distinct Created times
	step()
	p1 := e.post(a, "p1")
	step()
	p2 := e.post(a, "p2")
	assert.Equal(t, 3, e.backlog("b.test"))
	step()
	require.NoError(t, a.Edit(ctx, memRelayInbox, p1, "p1 edited")) // sheds p0
	step()
	p3 := e.post(a, "p3") // sheds p1
	step()
	require.NoError(t, a.Delete(ctx, memRelayInbox, p2)) // sheds p2
	step()
	p4 := e.post(a, "p4") // sheds p3
	assert.Equal(t, 3, e.backlog("b.test"), "bounded")

	// Only Deletes and Updates left: the bound cannot be kept.
	step()
	require.NoError(t, a.Edit(ctx, memRelayInbox, p4, "p4 edited")) // sheds p4
	step()
	require.NoError(t, a.Delete(ctx, memRelayInbox, p3))
	assert.Equal(t, 4, e.backlog("b.test"), "Updates and Deletes are kept")

	f.set(0)
	e.advance(time.Hour)
	e.eventually(func() bool { return e.backlog("b.test") == 0 })
	e.settled()
	for _, n := range []*relaytest.Note{p0, p1, p2, p3, p4} {
		assert.Zero(t, countFor(b, "Create", n.ID), "create of %s shed", n.Content)
	}
	assert.Equal(t, 1, countFor(b, "Update", p1.ID))
	assert.Equal(t, 1, countFor(b, "Delete", p2.ID))
	assert.Equal(t, 1, countFor(b, "Update", p4.ID))
	assert.Equal(t, 1, countFor(b, "Delete", p3.ID))
}

// TestSlowHostsDoNotStallOthers: with few workers, a hanging host and a
// failing one hold at most their per-host share, and the other hosts get
// everything.
func TestSlowHostsDoNotStallOthers(t *testing.T) {
	e := newMemEnv(t, relay.Config{Workers: 4, PerHostWorkers: 2, RequestTimeout: time.Hour, BreakerThreshold: -1})
	in := e.subscribed("a.test", "hang.test", "fail.test", "c.test", "d.test")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the relay closes
	var mu sync.Mutex
	hanging, maxHanging := 0, 0
	in[1].SetFault(func(r *http.Request) int {
		if r.Method != http.MethodPost {
			return 0
		}
		mu.Lock()
		hanging++
		maxHanging = max(maxHanging, hanging)
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		hanging--
		mu.Unlock()
		return http.StatusServiceUnavailable
	})
	(&faultPlan{status: http.StatusInternalServerError}).install(in[2])
	var notes []*relaytest.Note
	for k := range 10 {
		notes = append(notes, e.post(in[0], fmt.Sprint("post ", k)))
	}
	for _, n := range notes {
		waitFor(t, in[3], "Create", n.ID)
		waitFor(t, in[4], "Create", n.ID)
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 2, maxHanging, "the hanging host holds its share of workers, no more")
}

// TestFreeWorkersNotHeldBack: the dispatcher leases in batches (a quarter
// of the workers), but a delivery does not wait for a batch of workers to
// be free while the busy ones hang on slow hosts.
func TestFreeWorkersNotHeldBack(t *testing.T) {
	e := newMemEnv(t, relay.Config{Workers: 8, PerHostWorkers: 1, RequestTimeout: time.Hour, BreakerThreshold: -1})
	hosts := []string{"a.test", "c.test"}
	for i := range 7 {
		hosts = append(hosts, fmt.Sprintf("hang%d.test", i))
	}
	in := e.subscribed(hosts...)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the relay closes
	for _, h := range in[2:] {
		h.SetFault(func(r *http.Request) int {
			if r.Method != http.MethodPost {
				return 0
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return http.StatusServiceUnavailable
		})
	}
	// Seven workers hang, one is free: fewer than a batch (two).
	first := e.post(in[0], "first")
	waitFor(t, in[1], "Create", first.ID)
	second := e.post(in[0], "second")
	waitFor(t, in[1], "Create", second.ID) // the fake clock stands still: no poll helps
}

// TestCloseLosesNothing: deliveries not done when the relay closes are
// done by the next relay on the same store, each exactly once, whether
// Close lets the attempts in flight finish or cancels them.
func TestCloseLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline bool
	}{{"graceful", false}, {"deadline", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newMemEnv(t, relay.Config{Workers: 4, PerHostWorkers: 2})
			in := e.subscribed("a.test", "b.test", "c.test")
			gate := make(chan struct{})
			var once sync.Once
			open := func() { once.Do(func() { close(gate) }) }
			t.Cleanup(open)
			for _, i := range in[1:] {
				i.SetFault(func(r *http.Request) int {
					if r.Method != http.MethodPost {
						return 0
					}
					select {
					case <-gate:
						return 0
					case <-r.Context().Done():
						return http.StatusServiceUnavailable // cancelled: not taken
					}
				})
			}
			var notes []*relaytest.Note
			for k := range 20 {
				notes = append(notes, e.post(in[0], fmt.Sprint("post ", k)))
			}
			e.eventually(func() bool {
				st, err := e.r.DeliveryStatus(context.Background())
				return err == nil && st.InFlight > 0
			})

			closed := make(chan error, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { closed <- e.r.Close(ctx) }()
			e.eventually(func() bool { return errors.Is(e.r.Start(), relay.ErrClosed) })
			if tc.deadline {
				cancel()
				assert.ErrorIs(t, <-closed, context.Canceled)
				open()
			} else {
				open()
				assert.NoError(t, <-closed)
			}
			_, err := in[0].Post(context.Background(), memRelayInbox, "alice", "too late")
			var he *relaytest.HTTPError
			require.ErrorAs(t, err, &he, "a closed relay takes nothing")
			assert.Equal(t, http.StatusServiceUnavailable, he.StatusCode)

			// A new relay on the same store delivers the rest at once:
			// released leases need no expiry.
			r2 := e.newRelay(relay.Config{})
			require.NoError(t, r2.Start())
			t.Cleanup(func() { require.NoError(t, r2.Close(context.Background())) })
			for _, i := range in[1:] {
				for _, n := range notes {
					waitFor(t, i, "Create", n.ID)
				}
			}
			e.eventually(func() bool { return e.backlog("b.test")+e.backlog("c.test") == 0 })
			for _, i := range in[1:] {
				for _, n := range notes {
					assert.Equal(t, 1, countFor(i, "Create", n.ID), "exactly one copy")
				}
			}
		})
	}
}

// TestFailedCompleteDoesNotResend: when the store fails to record that a
// delivery was answered 2xx, the delivery is not sent again, even once its
// lease has expired.
func TestFailedCompleteDoesNotResend(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test")
	e.st.mu.Lock()
	e.st.failOnce = true
	e.st.mu.Unlock()
	note := e.post(in[0], "hello")
	waitFor(t, in[1], "Create", note.ID)
	e.eventually(func() bool { return e.st.failedCompletes() == 1 }, "Complete fails")
	// The store answers before the relay keeps the completion for the
	// flusher: wait for that, so that the flush below retries it.
	e.eventually(func() bool { return relay.CompletionsToRetry(e.r) == 1 }, "kept for a retry")
	e.settled()
	assert.Equal(t, 1, e.backlog("b.test"), "Complete failed")
	e.advance(time.Hour) // the lease expires; the flusher retries Complete
	e.eventually(func() bool { return e.backlog("b.test") == 0 })
	e.settled()
	assert.Equal(t, 1, countFor(in[1], "Create", note.ID))
}

// TestBatchCompletion: completions reach the store in batches (one Complete
// call for several deliveries); a failed batch is retried, and the
// deliveries it held are not sent again meanwhile.
func TestBatchCompletion(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	hosts := []string{"a.test", "b.test", "c.test", "d.test", "e.test"}
	in := e.subscribed(hosts...)
	backlog := func() int {
		n := 0
		for _, h := range hosts {
			n += e.backlog(h)
		}
		return n
	}
	// The store holds every Complete call until all four deliveries are
	// answered, so that completions queue up however slowly they come.
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // before the relay's Close
	e.st.mu.Lock()
	e.st.completeHold = hold
	e.st.mu.Unlock()
	note := e.post(in[0], "hello")
	for _, i := range in[1:] {
		waitFor(t, i, "Create", note.ID)
	}
	e.settled()
	// Each of the two completers holds at most one call: unless one of
	// them confirms several already, two completions wait in the queue.
	// One call goes on: its completer takes those waiting, in one call.
	select {
	case hold <- struct{}{}:
	case <-time.After(wait):
		require.Fail(t, "no Complete call")
	}
	e.eventually(func() bool { return e.st.completeBatches() > 0 }, "a Complete call confirms several")
	release()
	e.eventually(func() bool { return backlog() == 0 }, "completed")
	e.st.mu.Lock()
	e.st.completeHold = nil
	e.st.mu.Unlock()

	e.st.mu.Lock()
	e.st.failOnce = true
	e.st.mu.Unlock()
	note2 := e.post(in[0], "again")
	for _, i := range in[1:] {
		waitFor(t, i, "Create", note2.ID)
	}
	e.eventually(func() bool { return e.st.failedCompletes() == 4 }, "Complete fails")
	e.eventually(func() bool { return relay.CompletionsToRetry(e.r) == 4 }, "kept for a retry")
	e.settled()
	assert.Equal(t, 4, backlog(), "Complete failed")
	e.advance(time.Hour) // the leases expire; the flusher retries the completions
	e.eventually(func() bool { return backlog() == 0 })
	e.settled()
	for _, i := range in[1:] {
		assert.Equal(t, 1, countFor(i, "Create", note.ID))
		assert.Equal(t, 1, countFor(i, "Create", note2.ID))
	}
}

// TestStatisticsSurviveClose: counters kept in memory are written to the
// store at Close.
func TestStatisticsSurviveClose(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test")
	n := e.post(in[0], "hello")
	waitFor(t, in[1], "Create", n.ID)
	e.settled()
	sts, err := e.r.Statuses(context.Background(), store.SubscriberFilter{})
	require.NoError(t, err)
	require.Len(t, sts, 2)
	for _, s := range sts {
		if s.ActorID == in[1].RelayActorID() {
			assert.EqualValues(t, 2, s.Delivered, "read before the statistics are written")
		}
	}
	require.NoError(t, e.r.Close(context.Background()))
	s, err := e.st.GetSubscriber(context.Background(), in[1].RelayActorID())
	require.NoError(t, err)
	assert.EqualValues(t, 2, s.Delivered, "the Accept and the post")
	assert.False(t, s.LastSuccess.IsZero())
}

// TestFailedQueueingIsRetried: when the store fails to queue an activity,
// the inbox answers 5xx and the sender's retry of the same activity is
// relayed, not taken for a duplicate. The deduplication marks are taken in
// the Enqueue that queues the work, never on their own (a separate mark
// would survive a crash that lost the work, and the retry would then be
// answered 202 and dropped).
func TestFailedQueueingIsRetried(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test")
	e.st.mu.Lock()
	e.st.enqueueFails = 1
	e.st.mu.Unlock()

	body := createDoc(in[0], "alice", "retried")
	assert.GreaterOrEqual(t, e.send(in[0], body), 500, "queueing failed")
	assert.Equal(t, http.StatusAccepted, e.send(in[0], body), "the retry")
	// The relay announces the unsigned post; b.test fails to fetch the
	// object (a.test does not serve it) and drops the Announce, but it
	// has arrived.
	objectID := in[0].ActorID("alice") + "/statuses/retried"
	e.eventually(func() bool { return countFor(in[1], "Announce", objectID) == 1 }, "the retry relayed")

	assert.Equal(t, http.StatusAccepted, e.send(in[0], body), "a duplicate")
	e.settled()
	assert.Equal(t, 1, countFor(in[1], "Announce", objectID))
	assert.Zero(t, e.st.separateMarks(), "MarkSeen or ForgetSeen called")
}

// TestLargeFanOutInChunks: a fan-out larger than the relay's chunk is
// stored in several store changes; every subscriber gets it once, and a
// repeat of the activity is still recognised.
func TestLargeFanOutInChunks(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	relay.SetEnqueueChunk(e.r, 2)
	in := e.subscribed("a.test", "b.test", "c.test", "d.test", "e.test")
	before := e.st.enqueueCalls()
	body := createDoc(in[0], "alice", "chunked")
	require.Equal(t, http.StatusAccepted, e.send(in[0], body))
	objectID := in[0].ActorID("alice") + "/statuses/chunked"
	for _, i := range in[1:] {
		e.eventually(func() bool { return countFor(i, "Announce", objectID) == 1 }, "%s got the Announce", i.Host())
	}
	assert.Equal(t, 2, e.st.enqueueCalls()-before, "four deliveries in chunks of two")

	assert.Equal(t, http.StatusAccepted, e.send(in[0], body), "a repeat")
	e.settled()
	assert.Equal(t, 2, e.st.enqueueCalls()-before, "a repeat queues nothing")
	for _, i := range in[1:] {
		assert.Equal(t, 1, countFor(i, "Announce", objectID), i.Host())
	}
}

// TestFailedChunkIsRetried: when a later chunk of a fan-out cannot be
// stored, the inbox answers 5xx and takes no mark, so the sender's retry
// reaches every subscriber; the chunk stored before is queued again under
// the same delivery ids and the same Announce id, so a subscriber it
// reached before the retry is sent the same activity (at least once, and
// recognisable by its id), never a different one.
func TestFailedChunkIsRetried(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	relay.SetEnqueueChunk(e.r, 2)
	in := e.subscribed("a.test", "b.test", "c.test", "d.test", "e.test")
	e.st.mu.Lock()
	e.st.enqueueSkip, e.st.enqueueFails = 1, 1
	e.st.mu.Unlock()
	body := createDoc(in[0], "alice", "half")
	assert.GreaterOrEqual(t, e.send(in[0], body), 500, "the second chunk failed")
	assert.Equal(t, http.StatusAccepted, e.send(in[0], body), "the retry")
	objectID := in[0].ActorID("alice") + "/statuses/half"
	for _, i := range in[1:] {
		e.eventually(func() bool { return countFor(i, "Announce", objectID) >= 1 }, "%s got the Announce", i.Host())
	}
	e.settled()
	ids := map[string]bool{}
	for _, i := range in[1:] {
		for _, rc := range i.Received() {
			if rc.Type == "Announce" && rc.ObjectID == objectID {
				ids[rc.ID] = true
			}
		}
		assert.LessOrEqual(t, countFor(i, "Announce", objectID), 2, i.Host())
	}
	assert.Len(t, ids, 1, "one Announce id for the activity")
}

// chunkedRace posts first from in[0] with the relay storing fan-outs in
// chunks of two, and, once its first chunk is stored, posts second from
// sender: while the first fan-out is between chunks, so that the second
// has to wait for it. It returns the second post's status.
func chunkedRace(t *testing.T, e *memEnv, in []*relaytest.Instance, first []byte, sender *relaytest.Instance, second []byte) int {
	t.Helper()
	var once sync.Once
	status := make(chan int, 1)
	e.st.mu.Lock()
	e.st.afterEnqueue = func(ds []store.Delivery, marks []store.Mark) {
		if len(marks) > 0 || len(ds) == 0 {
			return
		}
		once.Do(func() {
			go func() { status <- e.send(sender, second) }()
			e.eventually(func() bool { return relay.FanOutsWaiting(e.r) == 1 }, "the second fan-out waits for the first")
		})
	}
	e.st.mu.Unlock()
	require.Equal(t, http.StatusAccepted, e.send(in[0], first))
	return <-status
}

// announcesOf returns the ids of the Announces of objectID i received.
func announcesOf(i *relaytest.Instance, objectID string) []string {
	var ids []string
	for _, rc := range i.Received() {
		if rc.Type == "Announce" && rc.ObjectID == objectID {
			ids = append(ids, rc.ID)
		}
	}
	return ids
}

// TestChunkedFanOutsOfOneObject: a boost of a post arriving while the
// post's fan-out is stored in chunks does not announce the object again.
func TestChunkedFanOutsOfOneObject(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	relay.SetEnqueueChunk(e.r, 2)
	in := e.subscribed("a.test", "b.test", "c.test", "d.test", "e.test")
	objectID := in[0].ActorID("alice") + "/statuses/raced"
	boost, err := json.Marshal(map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams",
		"id":       in[1].ActorID("alice") + "/statuses/boost1/activity",
		"type":     "Announce",
		"actor":    in[1].ActorID("alice"),
		"to":       []string{relay.PublicCollection},
		"object":   objectID,
	})
	require.NoError(t, err)
	assert.Equal(t, http.StatusAccepted, chunkedRace(t, e, in, createDoc(in[0], "alice", "raced"), in[1], boost))
	e.drained()
	for _, i := range in[1:] {
		assert.Len(t, announcesOf(i, objectID), 1, i.Host())
	}
}

// TestChunkedFanOutRepeated: the same activity arriving again while its
// fan-out is stored in chunks is recognised as a repeat.
func TestChunkedFanOutRepeated(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	relay.SetEnqueueChunk(e.r, 2)
	in := e.subscribed("a.test", "b.test", "c.test", "d.test", "e.test")
	body := createDoc(in[0], "alice", "twice")
	assert.Equal(t, http.StatusAccepted, chunkedRace(t, e, in, body, in[0], body))
	e.drained()
	objectID := in[0].ActorID("alice") + "/statuses/twice"
	for _, i := range in[1:] {
		assert.Len(t, announcesOf(i, objectID), 1, i.Host())
	}
}

// Close waits for nothing but the work in flight: on a fake clock that
// never moves, with deliveries done, an idle dispatcher, flusher and
// policy refresher (all waiting on the clock), Close returns without a
// deadline.
func TestCloseDoesNotWaitOnTheClock(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	in := e.subscribed("a.test", "b.test")
	note := e.post(in[0], "one")
	waitFor(t, in[1], "Create", note.ID)
	e.settled()
	require.NoError(t, e.r.Close(context.Background()))
}

// batchingStore is a store with store.SubscribersUpdater: it records each
// UpdateSubscribers call.
type batchingStore struct {
	*spyStore
	mu      sync.Mutex
	batches [][]string
	refuse  bool // UpdateSubscribers fails, changing nothing
	down    bool // UpdateSubscriber fails too
	singles int  // UpdateSubscriber calls while down
}

func (b *batchingStore) UpdateSubscriber(ctx context.Context, id string, fn func(*store.Subscriber, bool) error) (store.Subscriber, error) {
	b.mu.Lock()
	down := b.down
	if down {
		b.singles++
	}
	b.mu.Unlock()
	if down {
		return store.Subscriber{}, errors.New("the store is down")
	}
	return b.spyStore.UpdateSubscriber(ctx, id, fn)
}

func (b *batchingStore) UpdateSubscribers(ctx context.Context, ids []string, fn func(*store.Subscriber) error) ([]string, error) {
	b.mu.Lock()
	b.batches = append(b.batches, ids)
	refuse := b.refuse
	b.mu.Unlock()
	if refuse {
		return nil, errors.New("a record the store cannot change")
	}
	var missing []string
	for _, id := range ids {
		_, err := b.spyStore.UpdateSubscriber(ctx, id, func(s *store.Subscriber, found bool) error {
			if !found {
				return store.ErrNotFound
			}
			return fn(s)
		})
		if errors.Is(err, store.ErrNotFound) {
			missing = append(missing, id)
		} else if err != nil {
			return nil, err
		}
	}
	return missing, nil
}

// TestStatisticsWrittenInBatches: on a store with
// store.SubscribersUpdater, the statistics of all subscribers are written
// in one call, not one UpdateSubscriber each, and count the same.
func TestStatisticsWrittenInBatches(t *testing.T) {
	bs := &batchingStore{}
	e := newMemEnvWithStore(t, relay.Config{}, func(s *spyStore) store.Store { bs.spyStore = s; return bs })
	in := e.subscribed("a.test", "b.test", "c.test")
	n := e.post(in[0], "hello")
	for _, i := range in[1:] {
		waitFor(t, i, "Create", n.ID)
	}
	e.settled()
	require.NoError(t, e.r.Close(context.Background()))
	bs.mu.Lock()
	batches := bs.batches
	bs.mu.Unlock()
	require.NotEmpty(t, batches, "written with UpdateSubscribers")
	var written []string
	for _, b := range batches {
		written = append(written, b...)
	}
	for _, i := range in {
		assert.Contains(t, written, i.RelayActorID())
	}
	for _, i := range in[1:] {
		s, err := e.st.GetSubscriber(context.Background(), i.RelayActorID())
		require.NoError(t, err)
		assert.EqualValues(t, 2, s.Delivered, "the Accept and the post")
		assert.False(t, s.LastSuccess.IsZero())
	}
}

// TestDisabledBreakerOnlyPausesFor429: with BreakerThreshold < 0, a 429
// pauses the host for its Retry-After, and a failing probe after the pause
// does not open the breaker: the host's deliveries are retried on their
// backoff, as failures always are with the breaker off.
func TestDisabledBreakerOnlyPausesFor429(t *testing.T) {
	e := newMemEnv(t, relay.Config{RetryBackoff: time.Second, BreakerThreshold: -1, MaxAttempts: 100})
	in := e.subscribed("a.test", "b.test")
	f := (&faultPlan{status: http.StatusInternalServerError}).install(in[1])
	h := &retryAfterHandler{next: in[1], after: "60", on: true}
	e.net.Handle("b.test", h)
	e.post(in[0], "one")
	e.eventually(func() bool { return e.circuit("b.test").Circuit == "open" }, "the 429 pauses the host")
	e.settled()
	h.mu.Lock()
	h.on = false
	h.mu.Unlock()

	e.advance(61 * time.Second) // the pause is over: the probe fails (500)
	e.eventually(func() bool { return f.count() == 1 }, "the probe")
	e.eventually(func() bool { return e.circuit("b.test").Circuit == "closed" }, "a failure does not open a disabled breaker")
	e.settled()
	e.advance(5 * time.Second)
	e.eventually(func() bool { return f.count() >= 2 }, "retried on its backoff, not paused")
}

// TestStatisticsFlushFallsBackWhenBatchFails: when the store refuses a
// batch of statistics, they are written one subscriber at a time, so that
// one record it cannot change does not hold back the others.
func TestStatisticsFlushFallsBackWhenBatchFails(t *testing.T) {
	bs := &batchingStore{refuse: true}
	e := newMemEnvWithStore(t, relay.Config{}, func(s *spyStore) store.Store { bs.spyStore = s; return bs })
	in := e.subscribed("a.test", "b.test")
	n := e.post(in[0], "hello")
	waitFor(t, in[1], "Create", n.ID)
	e.settled()
	require.NoError(t, e.r.Close(context.Background()))
	bs.mu.Lock()
	tried := len(bs.batches)
	bs.mu.Unlock()
	require.NotZero(t, tried, "a batch was tried")
	s, err := e.st.GetSubscriber(context.Background(), in[1].RelayActorID())
	require.NoError(t, err)
	assert.EqualValues(t, 2, s.Delivered, "written one at a time")
}

// TestStatisticsFlushStopsWhenStoreFails: when the batch fails and so do
// the writes one at a time, the flush gives up after a few, not after one
// write per subscriber.
func TestStatisticsFlushStopsWhenStoreFails(t *testing.T) {
	bs := &batchingStore{}
	e := newMemEnvWithStore(t, relay.Config{}, func(s *spyStore) store.Store { bs.spyStore = s; return bs })
	in := e.subscribed("a.test", "b.test", "c.test", "d.test", "e.test", "f.test")
	n := e.post(in[0], "hello")
	for _, i := range in[1:] {
		waitFor(t, i, "Create", n.ID)
	}
	e.settled()
	e.eventually(func() bool { // the NodeInfo lookups that follow the Follows are over
		for _, i := range in {
			if s, err := e.st.GetSubscriber(context.Background(), i.RelayActorID()); err != nil || s.Software == "" {
				return false
			}
		}
		return true
	}, "the subscribers' software is known")
	bs.mu.Lock()
	bs.refuse, bs.down = true, true
	bs.mu.Unlock()
	assert.Error(t, e.r.Close(context.Background()), "the statistics could not be written")
	bs.mu.Lock()
	defer bs.mu.Unlock()
	assert.Equal(t, 3, bs.singles, "three writes in a row failed: the flush stopped")
}
