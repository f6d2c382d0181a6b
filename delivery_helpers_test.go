package relay_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// fakeClock is a relay.Clock that moves only when the test says so.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Now().Truncate(time.Second)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, clockWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock forward by d and fires the waits that are over.
func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the clock to t (if later) and fires the waits that are over.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// spyStore wraps a memstore and records what the relay asks of the queue.
type spyStore struct {
	store.Store
	mu       sync.Mutex
	leases   []store.LeaseRequest // completed Lease calls
	leased   map[string]int       // Attempts of each delivery when last leased
	retries  []store.Delivery     // Retry calls
	burned   int                  // Retry calls that counted an attempt
	failOnce bool                 // fail the first Complete of every delivery
	failed   map[string]bool
	batches  int // Complete calls with more than one id
	// enqueueFails, while > 0, makes Enqueue calls that queue deliveries
	// fail (counting down), storing nothing.
	enqueueFails int
	enqueueSkip  int // Enqueue calls that queue deliveries let through before enqueueFails applies
	enqueues     int // Enqueue calls that queued deliveries
	marks        int // MarkSeen and ForgetSeen calls
	// afterEnqueue, if set, is called after each Enqueue that succeeded.
	afterEnqueue func(deliveries []store.Delivery, marks []store.Mark)
	// completeHold, if set, holds every Complete call (counted in batches
	// already) until it receives from completeHold.
	completeHold chan struct{}
	// afterLease, if set, is called after each Lease call, before the
	// leased deliveries are returned to the relay.
	afterLease func()
}

func (s *spyStore) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	s.mu.Lock()
	s.marks++
	s.mu.Unlock()
	return s.Store.MarkSeen(ctx, id, until)
}

func (s *spyStore) ForgetSeen(ctx context.Context, id string) error {
	s.mu.Lock()
	s.marks++
	s.mu.Unlock()
	return s.Store.ForgetSeen(ctx, id)
}

// enqueueCalls returns how many Enqueue calls queued deliveries.
func (s *spyStore) enqueueCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enqueues
}

// separateMarks returns how many MarkSeen and ForgetSeen calls were made.
func (s *spyStore) separateMarks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.marks
}

func newSpyStore() *spyStore {
	return &spyStore{Store: memstore.New(), leased: map[string]int{}, failed: map[string]bool{}}
}

func (s *spyStore) Lease(ctx context.Context, r store.LeaseRequest) ([]store.Delivery, error) {
	ds, err := s.Store.Lease(ctx, r)
	s.mu.Lock()
	r.SkipHosts = maps.Clone(r.SkipHosts)
	s.leases = append(s.leases, r)
	for _, d := range ds {
		s.leased[d.ID] = d.Attempts
	}
	after := s.afterLease
	s.mu.Unlock()
	if after != nil {
		after()
	}
	return ds, err
}

func (s *spyStore) Retry(ctx context.Context, d store.Delivery) error {
	s.mu.Lock()
	s.retries = append(s.retries, d)
	if d.Attempts > s.leased[d.ID] {
		s.burned++
	}
	s.mu.Unlock()
	return s.Store.Retry(ctx, d)
}

// Complete counts batches, then waits for completeHold if set; with
// failOnce it fails a call that holds a delivery it has not failed yet.
func (s *spyStore) Complete(ctx context.Context, refs ...store.LeaseRef) error {
	s.mu.Lock()
	if len(refs) > 1 {
		s.batches++
	}
	if hold := s.completeHold; hold != nil {
		s.mu.Unlock()
		<-hold
		s.mu.Lock()
	}
	fail := false
	for _, ref := range refs {
		if s.failOnce && !s.failed[ref.ID] {
			fail = true
			s.failed[ref.ID] = true
		}
	}
	s.mu.Unlock()
	if fail {
		return errors.New("spy: injected failure")
	}
	return s.Store.Complete(ctx, refs...)
}

// Enqueue fails, storing nothing, while enqueueFails is positive.
func (s *spyStore) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery, marks ...store.Mark) error {
	s.mu.Lock()
	fail := false
	if len(deliveries) > 0 {
		s.enqueues++
		if s.enqueueSkip > 0 {
			s.enqueueSkip--
		} else if s.enqueueFails > 0 {
			s.enqueueFails--
			fail = true
		}
	}
	s.mu.Unlock()
	if fail {
		return errors.New("spy: injected Enqueue failure")
	}
	err := s.Store.Enqueue(ctx, payloads, deliveries, marks...)
	s.mu.Lock()
	after := s.afterEnqueue
	s.mu.Unlock()
	if err == nil && after != nil {
		after(deliveries, marks)
	}
	return err
}

// completeBatches returns how many Complete calls had more than one id.
func (s *spyStore) completeBatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches
}

// retriesWith returns the Retry calls that recorded n attempts.
func (s *spyStore) retriesWith(n int) []store.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Delivery
	for _, d := range s.retries {
		if d.Attempts == n {
			out = append(out, d)
		}
	}
	return out
}

// failedCompletes returns how many Complete calls failed on purpose.
func (s *spyStore) failedCompletes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failed)
}

func (s *spyStore) burnedAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.burned
}

// leaseAt returns the first Lease call whose Now is at or after at, if
// any.
func (s *spyStore) leaseAt(at time.Time) (store.LeaseRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.leases {
		if !r.Now.Before(at) {
			return r, true
		}
	}
	return store.LeaseRequest{}, false
}

var (
	relayKeyOnce sync.Once
	relayKeyPEM  []byte
)

// testRelayKey returns one relay key for all tests: generating a key per
// relay would dominate their run time.
func testRelayKey(t testing.TB) []byte {
	relayKeyOnce.Do(func() {
		k, err := httpsig.GenerateKey()
		if err != nil {
			panic(err)
		}
		relayKeyPEM, _ = httpsig.MarshalPrivateKeyPEM(k)
	})
	return relayKeyPEM
}

// memEnv is a relay on an in-memory network with a fake clock and a spy
// store.
type memEnv struct {
	t     *testing.T
	net   *memnet.Network
	clock *fakeClock
	st    *spyStore
	r     *relay.Relay
	// wrap, if set, wraps the network as the relay's Transport.
	wrap func(http.RoundTripper) http.RoundTripper
	// wrapStore, if set, wraps st as the relay's Store.
	wrapStore func(*spyStore) store.Store
}

const (
	memRelayInbox = "https://relay.test/inbox"
	memRelayActor = "https://relay.test/actor"
	// farSkew lets the fake clock drift from the real one (which the fake
	// instances sign with) without failing signatures.
	farSkew = 30 * 24 * time.Hour
)

// newMemEnv starts a relay at https://relay.test on a fresh memnet
// network, with a fake clock and a spy store, and closes it at the end of
// the test.
func newMemEnv(t *testing.T, cfg relay.Config) *memEnv {
	t.Helper()
	return newWrappedMemEnv(t, cfg, nil)
}

// newWrappedMemEnv is newMemEnv with the relay's Transport wrap(network).
func newWrappedMemEnv(t *testing.T, cfg relay.Config, wrap func(http.RoundTripper) http.RoundTripper) *memEnv {
	t.Helper()
	return startMemEnv(t, cfg, &memEnv{t: t, net: &memnet.Network{}, clock: newFakeClock(), st: newSpyStore(), wrap: wrap})
}

// newMemEnvWithStore is newMemEnv with the relay's Store wrap(e.st).
func newMemEnvWithStore(t *testing.T, cfg relay.Config, wrap func(*spyStore) store.Store) *memEnv {
	t.Helper()
	return startMemEnv(t, cfg, &memEnv{t: t, net: &memnet.Network{}, clock: newFakeClock(), st: newSpyStore(), wrapStore: wrap})
}

// startMemEnv starts e's relay with cfg, closed at the end of the test.
func startMemEnv(t *testing.T, cfg relay.Config, e *memEnv) *memEnv {
	t.Helper()
	require.NoError(t, e.st.PutValue(context.Background(), "relay/private-key.pem", testRelayKey(t)))
	e.r = e.newRelay(cfg)
	require.NoError(t, e.r.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		require.NoError(t, e.r.Close(ctx))
	})
	return e
}

// newRelay creates (without starting) a relay on e's network, store and
// clock, and routes relay.test to it.
func (e *memEnv) newRelay(cfg relay.Config) *relay.Relay {
	e.t.Helper()
	cfg.BaseURL = "https://relay.test"
	cfg.Store = e.st
	if e.wrapStore != nil {
		cfg.Store = e.wrapStore(e.st)
	}
	cfg.Transport = e.net
	if e.wrap != nil {
		cfg.Transport = e.wrap(e.net)
	}
	cfg.Clock = e.clock
	cfg.SignatureMaxAge, cfg.ClockSkew = farSkew, farSkew
	cfg.MaxActivityAge = farSkew
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
		if os.Getenv("RELAY_TEST_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
	r, err := relay.New(cfg)
	require.NoError(e.t, err)
	e.net.Handle("relay.test", r.Handler())
	return r
}

// instance starts a fake Mastodon on e's network under host.
func (e *memEnv) instance(host string) *relaytest.Instance {
	return relaytest.NewInstance(e.t, relaytest.Mastodon, relaytest.Options{
		Network: e.net, Host: host, MaxClockSkew: farSkew, Logf: func(string, ...any) {},
	})
}

// subscribed starts subscribed fake Mastodons, one per host, and waits
// until the relay is done with their Accepts.
func (e *memEnv) subscribed(hosts ...string) []*relaytest.Instance {
	e.t.Helper()
	var out []*relaytest.Instance
	for _, h := range hosts {
		i := e.instance(h)
		_, err := i.Subscribe(context.Background(), memRelayInbox, memRelayActor)
		require.NoError(e.t, err)
		i.WaitSubscribed(e.t, wait)
		e.eventually(func() bool { return e.backlog(h) == 0 }, "the Accept to %s is completed", h)
		out = append(out, i)
	}
	// A worker completes a delivery before it records the success in the
	// subscriber's statistics: wait for the workers to finish, so that a
	// success is not recorded after what the test does next.
	e.settled()
	return out
}

// post publishes a note from i through the relay.
func (e *memEnv) post(i *relaytest.Instance, text string) *relaytest.Note {
	e.t.Helper()
	n, err := i.Post(context.Background(), memRelayInbox, "alice", text)
	require.NoError(e.t, err)
	return n
}

// send posts body to the relay's inbox, signed by i's alice, and returns
// the status of the answer.
func (e *memEnv) send(i *relaytest.Instance, body []byte) int {
	e.t.Helper()
	resp, err := i.Send(context.Background(), memRelayInbox, "alice", body)
	require.NoError(e.t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// eventually waits for cond; wait is a failure bound, not a performance
// check.
func (e *memEnv) eventually(cond func() bool, msgAndArgs ...any) {
	e.t.Helper()
	require.Eventually(e.t, cond, wait, time.Millisecond, msgAndArgs...)
}

// settled waits until the relay has nothing in flight.
func (e *memEnv) settled() relay.DeliveryStatus {
	e.t.Helper()
	var st relay.DeliveryStatus
	e.eventually(func() bool {
		var err error
		st, err = e.r.DeliveryStatus(context.Background())
		return err == nil && st.InFlight == 0
	}, "deliveries in flight do not finish")
	return st
}

// drained waits until every queued delivery was delivered (or dropped):
// nothing queued, nothing in flight. Unlike settled, it also waits for
// deliveries stored but not yet leased.
func (e *memEnv) drained() {
	e.t.Helper()
	e.eventually(func() bool {
		st, err := e.r.DeliveryStatus(context.Background())
		return err == nil && st.InFlight == 0 && st.Backlog == 0
	}, "queued deliveries are not delivered")
}

// circuit returns the breaker state of host.
func (e *memEnv) circuit(host string) relay.HostStatus {
	st, err := e.r.DeliveryStatus(context.Background())
	require.NoError(e.t, err)
	for _, h := range st.Hosts {
		if h.Host == host {
			return h
		}
	}
	return relay.HostStatus{Host: host, Circuit: "closed"}
}

// advance moves the fake clock and waits until the dispatcher has looked
// at the queue at the new time.
func (e *memEnv) advance(d time.Duration) {
	e.t.Helper()
	e.clock.Advance(d)
	at := e.clock.Now()
	e.eventually(func() bool { _, ok := e.st.leaseAt(at); return ok }, "no lease at the new time")
}

// backlog returns the number of deliveries queued for host.
func (e *memEnv) backlog(host string) int {
	e.t.Helper()
	n, err := e.st.CountDeliveries(context.Background(), store.DeliveryFilter{Host: host})
	require.NoError(e.t, err)
	return n
}

// faultPlan answers the relay's deliveries (POSTs) to an instance with a
// chosen status, and counts them.
type faultPlan struct {
	mu     sync.Mutex
	status int // 0 lets requests through
	posts  int
	dates  []string
}

func (f *faultPlan) set(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = status
}

func (f *faultPlan) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posts
}

func (f *faultPlan) install(i *relaytest.Instance) *faultPlan {
	i.SetFault(func(r *http.Request) int {
		if r.Method != http.MethodPost {
			return 0
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.posts++
		f.dates = append(f.dates, r.Header.Get("Date"))
		return f.status
	})
	return f
}
