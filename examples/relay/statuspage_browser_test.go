package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/metrics/promrelay"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write docs/status-page.png and docs/operator-page.png from the browser test (run from examples/relay)")

// chromiumPath finds a Chromium or Chrome binary, or skips the test
// (fails it when CI=true: CI installs chromium, see .ci/chromium.sh).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium found on PATH; CI must install it (.ci/chromium.sh)")
	}
	t.Skip("no Chromium found on PATH (chromium, chromium-browser, google-chrome): install one to run the status page browser test")
	return ""
}

// seededRelay returns a relay requiring approval whose store holds
// subscribers in every state, with delivery statistics, a queued backlog,
// a private note and a pending request, and its public and operator
// servers.
func seededRelay(t *testing.T) (r *relay.Relay, public, operator string) {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	now := time.Now().UTC()
	subs := []store.Subscriber{
		{ActorID: "https://mastodon.example/actor", Host: "mastodon.example", Protocol: store.ProtocolMastodon, State: store.StateAccepted,
			Inbox: "https://mastodon.example/inbox", Software: "mastodon", Delivered: 1200, LastSuccess: now.Add(-2 * time.Minute)},
		{ActorID: "https://misskey.example/actor", Host: "misskey.example", Protocol: store.ProtocolMastodon, State: store.StateAccepted,
			Inbox: "https://misskey.example/inbox", Software: "misskey", Delivered: 800, Failed: 14, LastSuccess: now.Add(-3 * time.Hour),
			LastFailure: now.Add(-time.Minute), LastError: "HTTP 503", FailingSince: now.Add(-3 * time.Hour)},
		{ActorID: "https://gts.example/users/gts.example", Host: "gts.example", Protocol: store.ProtocolLitePub, State: store.StateAccepted,
			Inbox: "https://gts.example/users/gts.example/inbox", Software: "gotosocial", Delivered: 300, LastSuccess: now.Add(-time.Minute)},
		{ActorID: "https://pending.example/relay", Host: "pending.example", Protocol: store.ProtocolLitePub, State: store.StatePending,
			Inbox: "https://pending.example/relay/inbox", Software: "pleroma", Note: "private note: asked by mail"},
		{ActorID: "https://refused.example/actor", Host: "refused.example", Protocol: store.ProtocolMastodon, State: store.StateRejected,
			Inbox: "https://refused.example/inbox", Note: "spam source"},
		{ActorID: "https://sleepy.example/actor", Host: "sleepy.example", Protocol: store.ProtocolMastodon, State: store.StateDormant,
			Inbox: "https://sleepy.example/inbox", Software: "mastodon", Delivered: 50, Failed: 400, LastSuccess: now.Add(-9 * 24 * time.Hour),
			FailingSince: now.Add(-8 * 24 * time.Hour), LastError: "dial tcp: connection refused"},
	}
	for _, s := range subs {
		s.CreatedAt, s.UpdatedAt = now.Add(-30*24*time.Hour), now
		_, err := st.UpdateSubscriber(ctx, s.ActorID, func(p *store.Subscriber, _ bool) error { *p = s; return nil })
		require.NoError(t, err)
	}
	var ds []store.Delivery
	for i := range 7 {
		ds = append(ds, store.Delivery{ID: fmt.Sprintf("d%d", i), PayloadID: "p", Inbox: "https://misskey.example/inbox",
			Host: "misskey.example", Subscriber: "https://misskey.example/actor", ActivityType: "Create",
			NotBefore: now.Add(time.Hour), Created: now})
	}
	require.NoError(t, st.Enqueue(ctx, []store.Payload{{ID: "p", Body: []byte(`{}`)}}, ds))

	exp := promrelay.New()
	pub := httptest.NewUnstartedServer(nil)
	r, err := relay.New(relay.Config{
		BaseURL:        "http://" + pub.Listener.Addr().String(),
		Store:          st,
		Name:           "Example relay",
		Summary:        "A relay for small instances about gardening.",
		FollowPolicy:   relay.ManualApproval,
		BlockedDomains: []string{"spam.example"},
		Events:         exp,
		Logger:         quietLogger(),
	})
	require.NoError(t, err)
	exp.Watch(r)
	require.NoError(t, r.Start())
	pub.Config.Handler = r.Handler()
	pub.Start()
	admin := httptest.NewServer(observeHandler(r, exp))
	t.Cleanup(func() {
		admin.Close()
		pub.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Close(ctx)
	})
	return r, pub.URL + "/", admin.URL + "/"
}

// TestStatusPageInBrowser loads the public and the operator status pages
// in headless Chromium: their content, no console error (a CSP violation
// would be one), the style sheet applied, no horizontal overflow at a
// 375 px wide viewport, and screenshots.
func TestStatusPageInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	_, public, operator := seededRelay(t)

	// A fresh profile, removed at the end (best effort: Chromium may
	// still be writing to it as it exits).
	profile, err := os.MkdirTemp("", "fedirelay-chromium-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(profile) })
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1200, 800),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(ctx)
	defer cancelBrowser()

	var mu sync.Mutex
	var problems []string
	chromedp.ListenTarget(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.APITypeError || e.Type == runtime.APITypeWarning {
				problems = append(problems, fmt.Sprintf("console %s", e.Type))
			}
		case *runtime.EventExceptionThrown:
			problems = append(problems, "exception: "+e.ExceptionDetails.Text)
		case *log.EventEntryAdded:
			if e.Entry.Level == log.LevelError || e.Entry.Level == log.LevelWarning {
				problems = append(problems, fmt.Sprintf("log %s (%s): %s %s", e.Entry.Level, e.Entry.Source, e.Entry.Text, e.Entry.URL))
			}
		}
	})
	require.NoError(t, chromedp.Run(ctx, log.Enable(), runtime.Enable()))

	type pageCheck struct {
		name, url, shot string
		want, absent    []string
	}
	pages := []pageCheck{
		{name: "public", url: public, shot: "status-page.png",
			want: []string{"Example relay", "A relay for small instances about gardening.", public + "inbox", public + "actor",
				"approved by the operator", "/tag/{hashtag}", "Subscribed servers", "mastodon", "misskey", "gotosocial", "Posts relayed in the last hour",
				"Domains blocked: 1"},
			absent: []string{"pending.example", "private note", "refused.example", "spam source", "sleepy.example", "spam.example"}},
		{name: "operator", url: operator, shot: "operator-page.png",
			want: []string{"operator status", "Queued deliveries", "https://mastodon.example/actor", "https://pending.example/relay",
				"pending", "rejected", "dormant", "spam source", "HTTP 503", "dial tcp: connection refused", "closed"}},
	}
	for _, p := range pages {
		t.Run(p.name, func(t *testing.T) {
			var text, maxWidth string
			var overflow bool
			var shot []byte
			require.NoError(t, chromedp.Run(ctx,
				chromedp.EmulateViewport(1200, 800),
				chromedp.Navigate(p.url),
				chromedp.WaitVisible("main h1", chromedp.ByQuery),
				chromedp.Text("main", &text, chromedp.ByQuery),
				chromedp.Evaluate(`getComputedStyle(document.querySelector("main")).maxWidth`, &maxWidth),
				chromedp.FullScreenshot(&shot, 100),
			))
			for _, w := range p.want {
				assert.Contains(t, text, w)
			}
			for _, a := range p.absent {
				assert.NotContains(t, text, a)
			}
			assert.NotEqual(t, "none", maxWidth, "the style sheet is applied under the page's CSP")
			require.NotEmpty(t, shot)
			if *updateScreenshot {
				require.NoError(t, os.WriteFile(filepath.Join("..", "..", "docs", p.shot), shot, 0o644))
			} else {
				require.NoError(t, os.WriteFile(filepath.Join(t.TempDir(), p.shot), shot, 0o644))
			}

			// A phone: 375 px wide, nothing wider than the viewport.
			var phoneText string
			var phoneShot []byte
			require.NoError(t, chromedp.Run(ctx,
				chromedp.EmulateViewport(375, 740, chromedp.EmulateScale(2), chromedp.EmulateMobile),
				chromedp.Navigate(p.url),
				chromedp.WaitVisible("main h1", chromedp.ByQuery),
				chromedp.Text("main", &phoneText, chromedp.ByQuery),
				chromedp.Evaluate(`document.documentElement.scrollWidth > window.innerWidth || document.body.scrollWidth > window.innerWidth`, &overflow),
				chromedp.FullScreenshot(&phoneShot, 100),
			))
			assert.False(t, overflow, "no horizontal overflow at 375 px")
			assert.Contains(t, phoneText, p.want[0])
			require.NoError(t, os.WriteFile(filepath.Join(t.TempDir(), strings.TrimSuffix(p.shot, ".png")+"-375.png"), phoneShot, 0o644))
		})
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, problems, "console errors or warnings")
}

// TestObserveRoutes: the admin listener's metrics, health checks and
// operator page.
func TestObserveRoutes(t *testing.T) {
	_, _, admin := seededRelay(t)
	get := func(path string) (int, string, string) {
		resp, err := http.Get(admin + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	code, _, body := get("metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `fedirelay_subscribers{protocol="mastodon",state="accepted"} 2`)
	assert.Contains(t, body, `fedirelay_subscribers{protocol="litepub",state="pending"} 1`)
	assert.Contains(t, body, "fedirelay_queue_deliveries 7")
	assert.Contains(t, body, "go_goroutines ")
	assert.Contains(t, body, "process_start_time_seconds ")
	code, _, body = get("healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)
	code, _, body = get("readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ready\n", body)
	code, ctype, body := get("")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "text/html; charset=utf-8", ctype)
	assert.Contains(t, body, "https://pending.example/relay")
	code, ctype, _ = get("status.css")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "text/css; charset=utf-8", ctype)
	code, _, _ = get("nothing-here")
	assert.Equal(t, http.StatusNotFound, code)
}
