package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
)

// testLeaseEnv, in a relay child process, sets Config.LeaseDuration.
const testLeaseEnv = "FEDIRELAY_TEST_LEASE_DURATION"

func init() {
	childSetups = append(childSetups, func() {
		if d, err := time.ParseDuration(os.Getenv(testLeaseEnv)); err == nil {
			testConfig = func(c *relay.Config) { c.LeaseDuration = d }
		}
	})
}

// spreadProxy is the reverse proxy in front of several relay processes:
// it sends each request to the next process in turn, and to the one after
// if that one does not answer (it died).
type spreadProxy struct {
	mu       sync.Mutex
	backends []string
	next     int
}

func (p *spreadProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for range len(p.backends) {
		p.mu.Lock()
		backend := p.backends[p.next%len(p.backends)]
		p.next++
		p.mu.Unlock()
		req, err := http.NewRequestWithContext(r.Context(), r.Method, backend+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			continue
		}
		req.Header = r.Header.Clone()
		req.Host = r.Host
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			continue // dead: try the next one
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
		return
	}
	http.Error(w, "no relay process answers", http.StatusBadGateway)
}

// TestSeveralProcessesOneDatabase runs three relay processes on one
// PostgreSQL database behind one reverse proxy, which spreads the
// subscriptions and posts of the instances over them. One process is
// killed with SIGKILL in the middle of the fan-out and not restarted:
// the other two take its deliveries over once their leases end, so every
// instance receives every post of the others, each at most twice. A
// delivery comes twice only if the killed process had it in flight, or had
// it acknowledged less than the completion gathering time (5 ms on a
// shared store) plus a commit before the kill (the window: see docs/operating.md).
func TestSeveralProcessesOneDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the relay as child processes")
	}
	dbURL := testDatabaseURL(t)
	const (
		processes = 3
		instances = 12
		notes     = 3           // per instance
		delay     = time.Second // per delivery, so that the fan-out takes seconds
		lease     = 4 * time.Second
		settled   = time.Second
		wait      = 60 * time.Second // failure bound, not a performance check
	)
	t.Setenv(testLeaseEnv, lease.String())
	proxy := &spreadProxy{}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	base := front.URL
	procs := make([]*relayProcess, processes)
	for k := range procs {
		procs[k] = startRelayAt(t, freeAddr(t), t.TempDir(), "-database-url", dbURL, "-base-url", base, "-log-level", "error")
		proxy.backends = append(proxy.backends, procs[k].BackendURL())
	}
	for _, p := range procs[1:] {
		assert.Equal(t, actorKey(t, procs[0].BackendURL()), actorKey(t, p.BackendURL()), "one relay key for every process")
	}

	ctx := context.Background()
	inbox, actor := base+"/inbox", base+"/actor"
	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	insts := make([]*relaytest.Instance, instances)
	for k := range insts {
		insts[k] = relaytest.NewInstance(t, relaytest.Mastodon, quiet)
		_, err := insts[k].Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
	}
	for _, i := range insts {
		i.WaitSubscribed(t, wait)
	}
	watch := &inboxWatch{}
	watch.delay.Store(int64(delay))
	for _, i := range insts {
		i.SetFault(watch.fault(i))
	}
	// Every instance posts; the proxy spreads the posts.
	posts := map[string]*relaytest.Instance{}
	for n := range notes {
		for k, i := range insts {
			note, err := i.Post(ctx, inbox, "alice", fmt.Sprintf("note %d of %d", n, k))
			require.NoError(t, err, "the relay accepted note %d of %d", n, k)
			posts[note.ID] = i
		}
	}
	total := notes * instances * (instances - 1)
	require.Eventually(t, func() bool {
		a := watch.attempts()
		return len(a) >= total/4 && time.Since(a[0].end) > settled+100*time.Millisecond
	}, wait, time.Millisecond, "deliveries start")
	require.NoError(t, procs[0].cmd.Process.Kill())
	killed := time.Now()
	select {
	case <-procs[0].exited:
	case <-time.After(wait):
		t.Fatal("the relay process did not die")
	}
	before := len(watch.attempts())
	t.Logf("killed one of %d processes after %d of %d deliveries had been attempted", processes, before, total)
	require.Less(t, before, total, "the kill must come in the middle of the fan-out")

	for _, i := range insts {
		i.WaitFor(t, wait, func([]relaytest.Received) bool {
			got := creates(i)
			for id, author := range posts {
				if author != i && got[id] == 0 {
					return false
				}
			}
			return true
		})
	}
	// The survivors go on: a note published now reaches everyone.
	after, err := insts[1].Post(ctx, inbox, "alice", "after the kill")
	require.NoError(t, err)
	for _, i := range insts[2:] {
		i.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Create" && rc.ObjectID == after.ID })
	}

	dups := checkDuplicates(t, insts, watch.attempts(), killed, settled)
	t.Logf("%d duplicate deliveries", dups)
	for _, p := range procs[1:] {
		p.stop(t)
	}
}

// TestHostCapAcrossProcesses runs two relay processes on one PostgreSQL
// database behind one reverse proxy and has one instance's posts, spread
// over both, fan out to another instance that answers each delivery
// slowly: the two processes together never have more than
// Config.PerHostWorkers (4, the default) requests in flight to it.
func TestHostCapAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the relay as child processes")
	}
	dbURL := testDatabaseURL(t)
	const (
		perHostWorkers = 4                      // Config.PerHostWorkers's default
		notes          = 24                     // 3 × the requests two uncapped processes could have in flight
		delay          = 300 * time.Millisecond // per delivery, so that the processes lease at once
		wait           = 60 * time.Second       // failure bound, not a performance check
	)
	proxy := &spreadProxy{}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	base := front.URL
	var procs []*relayProcess
	for range 2 {
		p := startRelayAt(t, freeAddr(t), t.TempDir(), "-database-url", dbURL, "-base-url", base, "-log-level", "error")
		procs = append(procs, p)
		proxy.backends = append(proxy.backends, p.BackendURL())
	}

	ctx := context.Background()
	inbox, actor := base+"/inbox", base+"/actor"
	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	author := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	small := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	for _, i := range []*relaytest.Instance{author, small} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
		i.WaitSubscribed(t, wait)
	}
	var inFlight, most atomic.Int64
	small.SetFault(func(r *http.Request) int {
		if r.Method != http.MethodPost {
			return 0
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
		return 0
	})

	posted := map[string]bool{}
	for n := range notes {
		note, err := author.Post(ctx, inbox, "alice", fmt.Sprintf("note %d", n))
		require.NoError(t, err)
		posted[note.ID] = true
	}
	small.WaitFor(t, wait, func([]relaytest.Received) bool {
		got := creates(small)
		for id := range posted {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("at most %d requests in flight to the instance", most.Load())
	assert.LessOrEqual(t, most.Load(), int64(perHostWorkers), "requests in flight to one host from both processes")
	assert.Greater(t, most.Load(), int64(1), "the processes sent to the host at once")
	for _, p := range procs {
		p.stop(t)
	}
}
