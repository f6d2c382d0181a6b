package relay_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
)

// slowInbox makes the inboxes it is installed on hang on the relay's
// deliveries until the request ends or, once answerAfter is set, answer
// after that long on the fake clock. It counts the requests, those in
// flight and the most in flight at once since reset.
type slowInbox struct {
	clock   *fakeClock
	release chan struct{} // closed at the end of the test, before the relay closes

	mu          sync.Mutex
	answerAfter time.Duration // 0: hang
	started     int
	inFlight    int
	maxInFlight int
}

func newSlowInbox(t *testing.T, e *memEnv) *slowInbox {
	s := &slowInbox{clock: e.clock, release: make(chan struct{})}
	t.Cleanup(func() { close(s.release) })
	return s
}

func (s *slowInbox) install(ins ...*relaytest.Instance) *slowInbox {
	for _, i := range ins {
		i.SetFault(s.serve)
	}
	return s
}

func (s *slowInbox) serve(r *http.Request) int {
	if r.Method != http.MethodPost {
		return 0
	}
	s.mu.Lock()
	s.started++
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	var answer <-chan time.Time
	if s.answerAfter > 0 {
		answer = s.clock.After(s.answerAfter)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	select {
	case <-answer:
		return 0 // the instance takes the delivery
	case <-r.Context().Done():
	case <-s.release:
	}
	return http.StatusServiceUnavailable
}

func (s *slowInbox) counts() (started, inFlight, maxInFlight int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started, s.inFlight, s.maxInFlight
}

func (s *slowInbox) resetMax() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxInFlight = s.inFlight
}

func (s *slowInbox) answerIn(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answerAfter = d
}

// waitStarted waits until n requests have reached the inboxes.
func (s *slowInbox) waitStarted(e *memEnv, n int) {
	e.t.Helper()
	e.eventually(func() bool { started, _, _ := s.counts(); return started >= n }, "request %d does not arrive", n)
}

// concurrency counts the relay's requests in flight to each host, as the
// relay sees them (an inbox handler may outlive a request that timed out),
// and the most at once since reset.
type concurrency struct {
	next http.RoundTripper
	mu   sync.Mutex
	now  map[string]int
	most map[string]int
}

func (c *concurrency) RoundTrip(req *http.Request) (*http.Response, error) {
	h := req.URL.Host
	c.mu.Lock()
	c.now[h]++
	c.most[h] = max(c.most[h], c.now[h])
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.now[h]--
		c.mu.Unlock()
	}()
	return c.next.RoundTrip(req)
}

func (c *concurrency) max(host string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.most[host]
}

func (c *concurrency) inFlight(host string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now[host]
}

func (c *concurrency) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.most)
	for h, n := range c.now {
		c.most[h] = n
	}
}

// TestSlowHostTimeoutShrinksAndRecovers: each timeout halves a host's
// request timeout down to MinRequestTimeout; timeouts open its circuit
// breaker like other failures; the half-open probe gets the whole
// RequestTimeout, so a host that answers slowly, but within it, is
// delivered to and is a host like any other again.
func TestSlowHostTimeoutShrinksAndRecovers(t *testing.T) {
	e := newMemEnv(t, relay.Config{
		RequestTimeout: 40 * time.Second, MinRequestTimeout: 5 * time.Second,
		RetryBackoff: time.Second, MaxAttempts: 100, BreakerThreshold: 4, BreakerCooloff: time.Minute,
	})
	in := e.subscribed("a.test", "slow.test")
	s := newSlowInbox(t, e).install(in[1])
	note := e.post(in[0], "hello")

	// Attempt k is sent with timeout[k]; once it timed out the host is
	// slow with timeout[k+1]; the retry is due within 2^k seconds.
	timeouts := []time.Duration{40 * time.Second, 20 * time.Second, 10 * time.Second, 5 * time.Second, 5 * time.Second}
	for k := range 3 {
		s.waitStarted(e, k+1)
		e.clock.Advance(timeouts[k])
		e.eventually(func() bool { return e.circuit("slow.test").Timeout == timeouts[k+1] },
			"after a timeout of %v the next is %v", timeouts[k], timeouts[k+1])
		assert.True(t, e.circuit("slow.test").Slow)
		// The host's timeout is learnt before the retry is stored, whose
		// due time is taken then: wait for it before moving the clock.
		e.eventually(func() bool { return len(e.st.retriesWith(k+1)) > 0 }, "retry %d is stored", k+1)
		e.advance(time.Duration(1<<(k+1)) * time.Second)
	}
	s.waitStarted(e, 4)
	e.clock.Advance(timeouts[3])
	e.eventually(func() bool { return e.circuit("slow.test").Circuit == "open" }, "four timeouts open the breaker")
	hs := e.circuit("slow.test")
	assert.True(t, hs.Slow)
	assert.Equal(t, 5*time.Second, hs.Timeout, "never below MinRequestTimeout")
	e.eventually(func() bool { return len(e.st.retriesWith(4)) > 0 }, "retry 4 is stored")

	// The host now answers after 10 s: longer than its learnt timeout,
	// within RequestTimeout, which the probe gets.
	s.answerIn(10 * time.Second)
	e.advance(time.Minute)
	s.waitStarted(e, 5)
	e.clock.Advance(5 * time.Second) // a probe with the learnt timeout would end here
	e.clock.Advance(5 * time.Second) // the host answers
	waitFor(t, in[1], "Create", note.ID)
	e.eventually(func() bool { h := e.circuit("slow.test"); return !h.Slow && h.Circuit == "closed" }, "the host recovers")
	assert.Zero(t, e.circuit("slow.test").Timeout)
	started, _, _ := s.counts()
	assert.Equal(t, 5, started, "four timeouts and the probe")
}

// TestSlowHostGetsOneRequestAtATime: a host gets PerHostWorkers
// deliveries at once until one times out, then one at a time.
func TestSlowHostGetsOneRequestAtATime(t *testing.T) {
	c := &concurrency{now: map[string]int{}, most: map[string]int{}}
	e := newWrappedMemEnv(t, relay.Config{
		PerHostWorkers: 3, RequestTimeout: 40 * time.Second, MinRequestTimeout: 5 * time.Second,
		RetryBackoff: time.Hour, MaxAttempts: 100, BreakerThreshold: -1,
	}, func(next http.RoundTripper) http.RoundTripper { c.next = next; return c })
	in := e.subscribed("a.test", "slow.test", "c.test")
	s := newSlowInbox(t, e).install(in[1])
	var notes []*relaytest.Note
	for k := range 6 {
		notes = append(notes, e.post(in[0], fmt.Sprint("post ", k)))
	}
	for _, n := range notes {
		waitFor(t, in[2], "Create", n.ID)
	}
	// c.test has every post once its handler has run, before the relay
	// has read the answers: wait for the relay to complete them, or moving
	// the clock would time out a request still waiting for its answer.
	e.eventually(func() bool { return e.backlog("c.test") == 0 }, "the deliveries to c.test are completed")
	s.waitStarted(e, 3)
	assert.Equal(t, 3, c.max("slow.test"), "PerHostWorkers")

	// The three time out; the other three are sent one at a time, each
	// with half the previous timeout.
	e.clock.Advance(40 * time.Second)
	e.eventually(func() bool { return e.circuit("slow.test").Timeout == 20*time.Second }, "the host is slow")
	e.eventually(func() bool { return c.inFlight("slow.test") <= 1 }, "the three requests end")
	c.reset()
	for k, timeout := range []time.Duration{20 * time.Second, 10 * time.Second, 5 * time.Second} {
		s.waitStarted(e, 4+k)
		assert.Equal(t, timeout, e.circuit("slow.test").Timeout)
		e.advance(timeout)
	}
	e.eventually(func() bool { return e.backlog("slow.test") == 6 && e.circuit("slow.test").InFlight == 0 },
		"all six attempted once, waiting for their retries")
	started, _, _ := s.counts()
	assert.Equal(t, 6, started)
	assert.Equal(t, 1, c.max("slow.test"), "a slow host gets one request at a time")
	assert.Zero(t, e.st.burnedAttempts()-6, "deliveries given back to the queue use no attempt")
}

// TestHangingHostsDoNotStarveOthers: hosts that never answer fill every
// worker at first; once their requests have waited MinRequestTimeout they
// are slow and hold at most SlowHostWorkers requests (the others time out),
// so a host that answers gets its deliveries while hanging requests are
// still outstanding, long before RequestTimeout; in flight never exceeds
// Workers + SlowHostWorkers.
func TestHangingHostsDoNotStarveOthers(t *testing.T) {
	const workers, slowWorkers = 4, 2
	e := newMemEnv(t, relay.Config{
		Workers: workers, PerHostWorkers: 2, SlowHostWorkers: slowWorkers,
		RequestTimeout: time.Hour, MinRequestTimeout: 10 * time.Second,
		RetryBackoff: time.Hour, MaxAttempts: 100, BreakerThreshold: -1,
	})
	hosts := []string{"a.test", "ok.test"}
	for k := range 6 {
		hosts = append(hosts, fmt.Sprintf("hang%d.test", k))
	}
	in := e.subscribed(hosts...)
	s := newSlowInbox(t, e).install(in[2:]...)

	first := e.post(in[0], "first")
	e.eventually(func() bool { _, n, _ := s.counts(); return n == workers }, "hanging hosts take every worker")
	var notes []*relaytest.Note
	for k := range 3 {
		notes = append(notes, e.post(in[0], fmt.Sprint("post ", k)))
	}

	// stuck reports that every delivery held is a request hanging in an
	// inbox and no worker is free: only time can change anything.
	stuck := func() bool {
		st, err := e.r.DeliveryStatus(t.Context())
		require.NoError(t, err)
		_, hanging, _ := s.counts()
		slowInFlight := 0
		for _, h := range st.Hosts {
			if h.Slow {
				slowInFlight += h.InFlight
			}
		}
		return st.InFlight == hanging && st.InFlight-min(slowInFlight, slowWorkers) >= workers
	}
	delivered := func() bool {
		for _, n := range append(notes, first) {
			if !slices.ContainsFunc(in[1].Received(), func(rc relaytest.Received) bool {
				return rc.Type == "Create" && rc.ObjectID == n.ID
			}) {
				return false
			}
		}
		return true
	}
	advances := 0
	for ; !delivered() && advances < 10; advances++ {
		e.advance(10 * time.Second) // 100 s at most, far from RequestTimeout
		e.eventually(func() bool { return delivered() || stuck() }, "the relay neither delivers nor hangs")
	}
	require.True(t, delivered(), "ok.test got everything after %d × MinRequestTimeout", advances)
	_, hanging, maxHanging := s.counts()
	assert.Positive(t, hanging, "hanging requests are still outstanding")
	assert.LessOrEqual(t, maxHanging, workers+slowWorkers)
	st, err := e.r.DeliveryStatus(t.Context())
	require.NoError(t, err)
	assert.LessOrEqual(t, st.InFlight, workers+slowWorkers)
}
