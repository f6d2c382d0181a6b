package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// attempt is one POST that reached a subscriber's inbox.
type attempt struct {
	instance   string // host of the subscriber
	object     string // id of the activity's object
	start, end time.Time
}

// inboxWatch slows the inboxes of subscribers down and records the
// attempts that reach them, through relaytest's fault hook.
type inboxWatch struct {
	delay atomic.Int64 // nanoseconds each POST waits before it is handled
	mu    sync.Mutex
	log   []attempt
}

// fault returns the fault hook for instance i.
func (w *inboxWatch) fault(i *relaytest.Instance) func(*http.Request) int {
	return func(r *http.Request) int {
		if r.Method != http.MethodPost {
			return 0
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return http.StatusBadRequest
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var act struct {
			Object json.RawMessage `json:"object"`
		}
		_ = json.Unmarshal(body, &act)
		var obj struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(act.Object, &obj) != nil {
			_ = json.Unmarshal(act.Object, &obj.ID)
		}
		a := attempt{instance: i.Host(), object: obj.ID, start: time.Now()}
		select {
		case <-time.After(time.Duration(w.delay.Load())):
		case <-r.Context().Done(): // the relay died: the rest is up to the instance
		}
		a.end = time.Now()
		w.mu.Lock()
		w.log = append(w.log, a)
		w.mu.Unlock()
		return 0
	}
}

// attempts returns the attempts recorded so far.
func (w *inboxWatch) attempts() []attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.log...)
}

// creates counts the Creates of each object an instance accepted.
func creates(i *relaytest.Instance) map[string]int {
	n := map[string]int{}
	for _, rc := range i.Received() {
		if rc.Type == "Create" {
			n[rc.ObjectID]++
		}
	}
	return n
}

// checkDuplicates checks that each of insts accepted every Create at most
// twice, the second time only when the first delivery (in attempts) was in
// flight at killed or acknowledged less than settled before it, and that
// none refused a delivery. It returns the number of duplicate deliveries.
func checkDuplicates(t *testing.T, insts []*relaytest.Instance, attempts []attempt, killed time.Time, settled time.Duration) int {
	t.Helper()
	dups := 0
	for _, i := range insts {
		for id, n := range creates(i) {
			if n < 2 {
				continue
			}
			dups += n - 1
			assert.Equal(t, 2, n, "%s received %s %d times", i.Host(), id, n)
			for _, a := range attempts {
				if a.instance == i.Host() && a.object == id && a.start.Before(killed) {
					assert.True(t, a.end.After(killed.Add(-settled)),
						"%s received %s again although it acknowledged it %v before the kill", i.Host(), id, killed.Sub(a.end))
				}
			}
		}
		assert.Empty(t, i.Rejected(), "%s refused deliveries", i.Host())
	}
	return dups
}

// actorKey returns the public key the relay actor document shows.
func actorKey(t *testing.T, base string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/actor", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/activity+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var doc struct {
		PublicKey struct {
			PublicKeyPem string `json:"publicKeyPem"`
		} `json:"publicKey"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	require.NotEmpty(t, doc.PublicKey.PublicKeyPem)
	return doc.PublicKey.PublicKeyPem
}

// TestCrashDuringFanOut runs the relay command on its file store, SIGKILLs
// it in the middle of a fan-out and starts it again on the same data
// directory. Afterwards the relay has its key and every subscriber, every
// subscriber receives every activity the relay accepted before the kill,
// and the only activities a subscriber receives twice are those whose
// delivery was in flight at the kill or answered just before it, before its
// completion was written (the relay writes completions in batches, gathered
// for up to 100 ms: see README, State, Guarantees).
func TestCrashDuringFanOut(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the relay as a child process")
	}
	const (
		subscribers = 16
		notes       = 16
		delay       = 400 * time.Millisecond // per delivery, so that the fan-out takes seconds
		// A delivery acknowledged longer than this before the kill was
		// completed in the store (the completion batches are gathered for
		// up to 100 ms, then synced): it must not come again.
		settled = time.Second
		wait    = 20 * time.Second // failure bound, not a performance check
	)
	ctx := context.Background()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := startRelayAt(t, addr, dir, "-log-level", "error")
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	key := actorKey(t, p.BaseURL)

	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	publisher := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	subs := make([]*relaytest.Instance, subscribers)
	for k := range subs {
		subs[k] = relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	}
	for _, i := range append([]*relaytest.Instance{publisher}, subs...) {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
	}
	for _, i := range append([]*relaytest.Instance{publisher}, subs...) {
		i.WaitSubscribed(t, wait)
	}

	// Slow fan-out: notes × subscribers deliveries, each held up in the
	// subscriber's inbox.
	watch := &inboxWatch{}
	watch.delay.Store(int64(delay))
	for _, i := range subs {
		i.SetFault(watch.fault(i))
	}
	var ids []string
	for n := range notes {
		note, err := publisher.Post(ctx, inbox, "alice", fmt.Sprintf("note %d", n))
		require.NoError(t, err, "the relay accepted note %d", n)
		ids = append(ids, note.ID)
	}

	// Kill the relay once deliveries that finished long enough ago exist,
	// and while many remain.
	total := notes * subscribers
	require.Eventually(t, func() bool {
		a := watch.attempts()
		return len(a) >= total/3 && time.Since(a[0].end) > settled+100*time.Millisecond
	}, wait, time.Millisecond, "deliveries start")
	require.NoError(t, p.cmd.Process.Kill())
	killed := time.Now()
	select {
	case <-p.exited:
	case <-time.After(wait):
		t.Fatal("the relay did not die")
	}
	before := len(watch.attempts())
	t.Logf("killed after %d of %d deliveries had been attempted", before, total)
	require.Less(t, before, total, "the kill must come in the middle of the fan-out")

	// Restart on the same directory and address, with fast subscribers.
	watch.delay.Store(0)
	p = startRelayAt(t, addr, dir, "-log-level", "error")
	assert.Equal(t, key, actorKey(t, p.BaseURL), "the relay keeps its key")

	for _, i := range subs {
		i.WaitFor(t, wait, func([]relaytest.Received) bool {
			got := creates(i)
			for _, id := range ids {
				if got[id] == 0 {
					return false
				}
			}
			return true
		})
	}
	// Every subscription survived: a note published now reaches everyone.
	after, err := publisher.Post(ctx, inbox, "alice", "after the crash")
	require.NoError(t, err)
	for _, i := range subs {
		i.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Create" && rc.ObjectID == after.ID })
	}

	// Duplicates: only deliveries in flight at the kill or acknowledged
	// less than settled before it, at most once more.
	dups := checkDuplicates(t, subs, watch.attempts(), killed, settled)
	t.Logf("%d duplicate deliveries (in flight at the kill, or acknowledged less than %v before it)", dups, settled)
	p.stop(t)

	// The state on disk: every subscriber, accepted, and the key.
	var backup bytes.Buffer
	require.NoError(t, runBackup("export", []string{"-data", dir}, nil, &backup))
	var doc store.Backup
	require.NoError(t, json.Unmarshal(backup.Bytes(), &doc))
	require.Len(t, doc.Subscribers, subscribers+1)
	for _, s := range doc.Subscribers {
		assert.Equal(t, store.StateAccepted, s.State, s.ActorID)
	}
	assert.Contains(t, doc.Values, "relay/private-key.pem")
}
