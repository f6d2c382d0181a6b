package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// failingStore is a memstore whose reads fail while failing is set, as a
// store whose disk or database went away.
type failingStore struct {
	store.Store
	failing atomic.Bool
}

var errStoreDown = errors.New("store down")

func (s *failingStore) GetValue(ctx context.Context, key string) ([]byte, error) {
	if s.failing.Load() {
		return nil, errStoreDown
	}
	return s.Store.GetValue(ctx, key)
}

func TestReadyFlipsWhenTheStoreFails(t *testing.T) {
	st := &failingStore{Store: memstore.New()}
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example", Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	ctx := context.Background()
	probe := func(h http.HandlerFunc) (int, string) {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		return rec.Code, rec.Body.String()
	}

	assert.Error(t, r.Ready(ctx), "not ready before Start")
	code, _ := probe(r.ServeReadyz)
	assert.Equal(t, http.StatusServiceUnavailable, code)

	require.NoError(t, r.Start())
	assert.NoError(t, r.Ready(ctx))
	code, body := probe(r.ServeReadyz)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ready\n", body)

	st.failing.Store(true)
	err = r.Ready(ctx)
	require.ErrorIs(t, err, errStoreDown)
	code, body = probe(r.ServeReadyz)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "store down")
	code, _ = probe(r.ServeHealthz)
	assert.Equal(t, http.StatusOK, code, "the process still serves: alive, not ready")

	st.failing.Store(false)
	assert.NoError(t, r.Ready(ctx))

	require.NoError(t, r.Close(ctx))
	assert.ErrorIs(t, r.Ready(ctx), relay.ErrClosed)
	code, _ = probe(r.ServeHealthz)
	assert.Equal(t, http.StatusOK, code)
}

// seedSubscribers stores an accepted subscriber and a pending one with a
// private note.
func seedSubscribers(t *testing.T, st store.Store) {
	t.Helper()
	for _, s := range []store.Subscriber{
		{ActorID: "https://a.example/actor", Host: "a.example", Protocol: store.ProtocolMastodon, State: store.StateAccepted, Inbox: "https://a.example/inbox", Software: "mastodon"},
		{ActorID: "https://secret.example/actor", Host: "secret.example", Protocol: store.ProtocolLitePub, State: store.StatePending, Inbox: "https://secret.example/inbox", Note: "private note"},
	} {
		_, err := st.UpdateSubscriber(context.Background(), s.ActorID, func(p *store.Subscriber, _ bool) error { *p = s; return nil })
		require.NoError(t, err)
	}
}

func TestStatusPageNegotiates(t *testing.T) {
	st := memstore.New()
	seedSubscribers(t, st)
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example/sub", Store: st, Logger: quietLogger(),
		Name: "Garden relay", FollowPolicy: relay.ManualApproval, BlockedDomains: []string{"spam.example"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	get := func(target, accept string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, target, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		r.Handler().ServeHTTP(rec, req)
		return rec
	}
	for _, rec := range []*httptest.ResponseRecorder{get("/sub/", ""), get("/sub/", "text/html"), get("/sub/?format=json", ""), get("/sub/", "application/json")} {
		assert.NotContains(t, rec.Body.String(), "secret.example", "the public page hides pending requests")
		assert.NotContains(t, rec.Body.String(), "private note")
		assert.NotContains(t, rec.Body.String(), "spam.example", "Config.BlockedDomains are not published")
	}

	text := get("/sub/", "")
	assert.Equal(t, "text/plain; charset=utf-8", text.Header().Get("Content-Type"))
	assert.Contains(t, text.Body.String(), "https://relay.example/sub/inbox")

	html := get("/sub/", "text/html,application/xhtml+xml;q=0.9")
	assert.Equal(t, "text/html; charset=utf-8", html.Header().Get("Content-Type"))
	assert.Contains(t, html.Header().Get("Content-Security-Policy"), "default-src 'none'")
	assert.Contains(t, html.Body.String(), `<link rel="stylesheet" href="/sub/status.css">`)
	assert.Contains(t, html.Body.String(), "approved by the operator")

	for _, rec := range []*httptest.ResponseRecorder{get("/sub/?format=json", ""), get("/sub/", "application/json")} {
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var doc relay.PublicStatus
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
		assert.Equal(t, "Garden relay", doc.Name)
		assert.Equal(t, "https://relay.example/sub/inbox", doc.InboxURL)
		assert.True(t, doc.ApprovalRequired)
		assert.Equal(t, 1, doc.Subscribers)
		assert.Equal(t, []relay.SoftwareCount{{Software: "mastodon", Count: 1}}, doc.BySoftware)
		assert.Equal(t, 1, doc.BlockedCount)
		assert.Empty(t, doc.Blocks, "Config.BlockedDomains are not published")
	}

	css := get("/sub/status.css", "")
	assert.Equal(t, http.StatusOK, css.Code)
	assert.Equal(t, "text/css; charset=utf-8", css.Header().Get("Content-Type"))

	// The operator page shows everyone.
	rec := httptest.NewRecorder()
	r.OperatorHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Body.String(), "https://secret.example/actor")
	assert.Contains(t, rec.Body.String(), "private note")
}

func TestStatusPagePublishesBlocksWhenAsked(t *testing.T) {
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example", Logger: quietLogger(),
		BlockedDomains: []string{"spam.example"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	require.NoError(t, r.BlockDomains(context.Background(), relay.DomainBlock{Domain: "bad.example", Reason: "harassment", Note: "private"}))
	st, err := r.PublicStatus(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []relay.PublicBlock{{Domain: "bad.example", Reason: "harassment"}}, st.Blocks)
	assert.Equal(t, 2, st.BlockedCount)
	assert.False(t, st.ApprovalRequired)
}

func TestSoftwareFamily(t *testing.T) {
	for ua, want := range map[string]string{
		"http.rb/5.2.0 (Mastodon/4.3.2; +https://mastodon.example/)":           "mastodon/4",
		"Misskey/2025.4.0 (https://misskey.example)":                           "misskey/2025",
		"Pleroma 2.9.1; https://pleroma.example <admin@pleroma.example>":       "pleroma/2",
		"Akkoma 3.13.2; https://akkoma.example <admin@akkoma.example>":         "akkoma/3",
		"gotosocial (+https://gts.example) gotosocial/0.19.1":                  "gotosocial/0",
		"Friendica 'Yellow Archangel' 2024.12-1576; https://friendica.example": "friendica",
		"mastodon/4.5.0 (relaytest; +http://127.0.0.1:1/)":                     "mastodon/4",
		"curl/8.0":                 "other",
		"":                         "other",
		"Mastodon/123456789.0 (x)": "mastodon",
	} {
		assert.Equal(t, want, relay.SoftwareFamily(ua), ua)
	}
}

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogsFollowTraffic: an accepted activity is logged at debug, a
// delivery refused for good (Misskey's 413) at info with the subscriber
// and the status.
func TestLogsFollowTraffic(t *testing.T) {
	var logs lockedBuffer
	r := startRelay(t, relay.Config{Logger: slog.New(slog.NewTextHandler(io.MultiWriter(&logs), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	author := newInstance(t, relaytest.Mastodon)
	refuser := newInstance(t, relaytest.Misskey)
	subscribe(t, r, author, refuser)
	refuser.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodPost {
			return http.StatusRequestEntityTooLarge
		}
		return 0
	})
	_, err := author.Post(context.Background(), r.InboxURL(), "alice", "hello")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "relay: delivery refused, not retried")
	}, wait, 10*time.Millisecond)
	out := logs.String()
	assert.Regexp(t, `level=DEBUG msg="relay: activity accepted" id=\S+ type=Create sender=127\.0\.0\.\d+:\d+ fan_out=1 form=verbatim`, out)
	assert.Regexp(t, `level=INFO msg="relay: delivery refused, not retried" subscriber=`+regexp.QuoteMeta(refuser.RelayActorID())+` .*status=413`, out)
	assert.Regexp(t, `level=DEBUG msg="relay: delivery failed" .*status=413`, out)
}

// TestTrafficSummary: every 10 minutes the relay logs a summary at info,
// only when something happened.
func TestTrafficSummary(t *testing.T) {
	var logs lockedBuffer
	e := newMemEnv(t, relay.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	summaries := func() int { return strings.Count(logs.String(), `msg="relay: traffic summary"`) }
	// nextSummary advances the clock by the summary interval and waits
	// until the summary loop waits for the next one: it has then logged
	// this period's summary, if any.
	nextSummary := func() {
		e.clock.Advance(10 * time.Minute)
		next := e.clock.Now().Add(10 * time.Minute)
		e.eventually(func() bool {
			e.clock.mu.Lock()
			defer e.clock.mu.Unlock()
			for _, w := range e.clock.waiters {
				if w.at.Equal(next) {
					return true
				}
			}
			return false
		}, "the summary loop waits for the next period")
	}

	nextSummary()
	assert.Zero(t, summaries(), "nothing happened")

	is := e.subscribed("a.test", "b.test", "c.test")
	e.post(is[0], "hello")
	e.eventually(func() bool { return e.backlog("b.test") == 0 && e.backlog("c.test") == 0 })
	e.settled()
	nextSummary()
	require.Equal(t, 1, summaries())
	// The subscriptions' Accepts (3) and the post's deliveries (2).
	assert.Regexp(t, `msg="relay: traffic summary" period=10m0s relayed=1 delivered=5 failed=0 backlog=0\n$`, logs.String())

	nextSummary()
	assert.Equal(t, 1, summaries(), "nothing happened in that period")
}
