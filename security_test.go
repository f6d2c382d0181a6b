package relay_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
)

// loopback allows the fake servers of these tests (all on 127.0.0.1).
var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// --- 1. Outbound guard ------------------------------------------------------------------------

// A keyId that points at a private address is refused without any
// connection to it: as an IP literal (checked before sending), as a host
// name that resolves to it (checked when dialling, after DNS), and over
// plain http when only https is allowed.
func TestKeyIDAtPrivateAddressIsNotFetched(t *testing.T) {
	key := testKeys()[0]
	tests := []struct {
		name  string
		cfg   relay.Config
		keyID func(addr string) string
	}{
		{"IP literal", relay.Config{AllowHTTP: true}, func(addr string) string {
			return "http://" + addr + "/users/a#main-key"
		}},
		{"host name resolving to loopback", relay.Config{AllowHTTP: true}, func(addr string) string {
			_, port, _ := strings.Cut(addr, ":")
			return "http://localhost:" + port + "/users/a#main-key"
		}},
		{"IPv4-mapped IPv6 literal", relay.Config{AllowHTTP: true}, func(addr string) string {
			_, port, _ := strings.Cut(addr, ":")
			return "http://[::ffff:127.0.0.1]:" + port + "/users/a#main-key"
		}},
		{"plain http by default", relay.Config{AllowPrivate: loopback}, func(addr string) string {
			return "http://" + addr + "/users/a#main-key"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs logBuffer
			tt.cfg.Logger = logs.logger()
			r := newRelayServer(t, tt.cfg, nil)
			listener, addr := trap(t, "127.0.0.1")
			keyID := tt.keyID(addr)
			body := note("http://"+addr+"/users/a", "1", time.Time{})
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
				require.NoError(t, (&httpsig.Signer{KeyID: keyID, Key: key}).SignRequest(req, body, time.Now()))
			})
			assert.Equal(t, http.StatusUnauthorized, code, text)
			assert.Contains(t, logs.String(), "outbound request refused")
			assert.Zero(t, listener.n.Load(), "no connection to the private address")
		})
	}
}

// The guard's defaults, through the public Config: the same request is
// fetched once the range is explicitly allowed (so the test above fails
// for the right reason).
func TestAllowPrivateLetsTheRelayFetch(t *testing.T) {
	actors := newFakeActors(t)
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	body := note(actors.actorID("a"), "1", time.Time{})
	code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "a", body) })
	assert.Equal(t, http.StatusForbidden, code, "authenticated, but not subscribed: %s", text)
	assert.Equal(t, 1, actors.getCount("/users/a"))
}

// Redirects are followed at most three times, each hop checked like the
// first: a redirect to a private address is refused without connecting.
func TestKeyFetchRedirects(t *testing.T) {
	actors := newFakeActors(t)
	listener, trapAddr := trap(t, "127.0.0.2") // not in AllowPrivate
	// /users/a redirects to /users/a?hop=1, ... up to ?hop=<hops>, which
	// serves the actor; or, with toTrap, to the trap.
	var mu sync.Mutex
	hops, toTrap := 0, false
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/users/a" {
			return false
		}
		if toTrap {
			http.Redirect(w, r, "http://"+trapAddr+"/users/a", http.StatusFound)
			return true
		}
		if n, _ := strconv.Atoi(r.URL.Query().Get("hop")); n < hops {
			http.Redirect(w, r, fmt.Sprintf("/users/a?hop=%d", n+1), http.StatusFound)
			return true
		}
		return false
	}
	set := func(h int, trap bool) {
		mu.Lock()
		defer mu.Unlock()
		hops, toTrap = h, trap
	}
	var logs logBuffer
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Logger: logs.logger()}, nil)
	send := func(id string) (int, string) {
		body := note(actors.actorID("a"), id, time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "a", body) })
		return code, text
	}
	// Failed fetches are not cached, so each case fetches anew.
	set(4, false)
	code, text := send("1")
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Contains(t, logs.String(), "more than 3 redirects")

	set(0, true)
	code, text = send("2")
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Contains(t, logs.String(), "outbound request refused")
	assert.Zero(t, listener.n.Load(), "the redirect to a private address is not followed")

	set(3, false)
	code, text = send("3")
	assert.Equal(t, http.StatusForbidden, code, "three redirects are followed, then not subscribed: %s", text)
}

// Fetched documents must be ActivityPub JSON of at most MaxBodyBytes.
func TestFetchedDocumentChecks(t *testing.T) {
	actors := newFakeActors(t)
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		// Each serves a valid actor document, but in a way the relay refuses.
		case "/users/html":
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write(actors.actorDoc("html"))
		case "/users/untyped":
			w.Header()["Content-Type"] = nil // no sniffing
			_, _ = w.Write(actors.actorDoc("untyped"))
		case "/users/huge":
			w.Header().Set("Content-Type", "application/activity+json")
			_, _ = w.Write(actors.actorDoc("huge"))
			_, _ = w.Write(bytes.Repeat([]byte(" "), 2<<20))
		case "/users/deep":
			// A valid actor document, with a deeply nested extra field.
			doc := bytes.TrimSuffix(actors.actorDoc("deep"), []byte("}"))
			w.Header().Set("Content-Type", "application/activity+json")
			_, _ = w.Write(append(doc, []byte(`,"x":`+strings.Repeat("[", 100)+strings.Repeat("]", 100)+"}")...))
		default:
			return false
		}
		return true
	}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	for _, user := range []string{"html", "untyped", "huge", "deep"} {
		t.Run(user, func(t *testing.T) {
			body := note(actors.actorID(user), "1", time.Time{})
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, user, body) })
			assert.Equal(t, http.StatusUnauthorized, code, text)
		})
	}
}

// The inbox answers within Config.KeyFetchTimeout even when the key server
// accepts the connection and never answers: 503 with Retry-After, so the
// sender tries again later.
func TestKeyServerNeverAnswers(t *testing.T) {
	actors := newFakeActors(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var asked, abandoned atomic.Int64
	actors.getHook = func(_ http.ResponseWriter, r *http.Request) bool {
		asked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			abandoned.Add(1)
		}
		return true
	}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, KeyFetchTimeout: 100 * time.Millisecond}, nil)
	for i := range 2 {
		body := note(actors.actorID("a"), strconv.Itoa(i), time.Time{})
		// post fails the test if no answer comes within `wait`, far more
		// than the key fetch timeout.
		code, text, h := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "a", body) })
		assert.Equal(t, http.StatusServiceUnavailable, code, text)
		assert.NotEmpty(t, h.Get("Retry-After"))
		assert.Contains(t, text, "timed out")
	}
	assert.Positive(t, asked.Load(), "the key server was asked")
	// The relay does not keep waiting on the dead server in the background
	// either: each fetch is abandoned at the timeout too.
	require.Eventually(t, func() bool { return abandoned.Load() == asked.Load() }, wait, time.Millisecond)
}

// --- 2. Verification depth --------------------------------------------------------------------

// A 10 MB body is refused with 413 without being read whole, whether its
// length is announced or not.
func TestTenMegabyteBodyIsRefused(t *testing.T) {
	var read atomic.Int64
	r := newRelayServer(t, relay.Config{}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			req.Body = &countingBody{ReadCloser: req.Body, n: &read}
			h.ServeHTTP(w, req)
		})
	})
	const size = 10 << 20
	for _, tt := range []struct {
		name     string
		body     func() io.Reader
		maxRead  int64
		chunked  bool
		wantRead string
	}{
		{"with Content-Length", func() io.Reader { return bytes.NewReader(make([]byte, size)) }, 0, false, "nothing"},
		{"chunked", func() io.Reader { return struct{ io.Reader }{bytes.NewReader(make([]byte, size))} }, 1<<20 + 1, true, "at most the 1 MiB limit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			read.Store(0)
			req, err := http.NewRequest(http.MethodPost, r.InboxURL(), tt.body())
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/activity+json")
			if tt.chunked {
				req.ContentLength = -1 // unknown: sent chunked
			} else {
				require.EqualValues(t, size, req.ContentLength)
			}
			resp, err := (&http.Client{Timeout: wait}).Do(req)
			require.NoError(t, err)
			_ = resp.Body.Close()
			assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
			assert.LessOrEqual(t, read.Load(), tt.maxRead, "the relay read %s", tt.wantRead)
		})
	}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// The Date window is configurable: SignatureMaxAge for the past, ClockSkew
// for the future.
func TestSignatureWindowIsConfigurable(t *testing.T) {
	tight := startRelay(t, relay.Config{SignatureMaxAge: 10 * time.Minute, ClockSkew: time.Minute})
	loose := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	subscribe(t, tight, sender)
	subscribe(t, loose, sender)
	for _, tt := range []struct {
		name        string
		date        time.Time
		tight, wide int
	}{
		{"20 minutes old", time.Now().Add(-20 * time.Minute), http.StatusUnauthorized, http.StatusAccepted},
		{"3 minutes ahead", time.Now().Add(3 * time.Minute), http.StatusUnauthorized, http.StatusAccepted},
		{"2 hours old", time.Now().Add(-2 * time.Hour), http.StatusUnauthorized, http.StatusUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := createDoc(sender, "alice", "window-"+strings.ReplaceAll(tt.name, " ", "-"))
			code, text := status(t, sender, tight, "alice", body, relaytest.WithDate(tt.date))
			assert.Equal(t, tt.tight, code, "tight window: %s", text)
			code, text = status(t, sender, loose, "alice", body, relaytest.WithDate(tt.date))
			assert.Equal(t, tt.wide, code, "default window: %s", text)
		})
	}
}

// (request-target) is accepted with the query string and without it
// (GoToSocial and Pleroma sign the path only).
func TestInboxRequestTargetWithAndWithoutQuery(t *testing.T) {
	actors := newFakeActors(t)
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	for _, withQuery := range []bool{true, false} {
		t.Run(fmt.Sprint("with query ", withQuery), func(t *testing.T) {
			body := followDoc(actors.actorID("q"))
			code, text, _ := post(t, r.InboxURL()+"?x=1&y=%2F", body, func(req *http.Request) {
				signCavageTarget(t, req, body, actors.keyID("q"), actors.key("q"), withQuery)
			})
			assert.Equal(t, http.StatusAccepted, code, text)
		})
	}
	body := followDoc(actors.actorID("q"))
	code, text, _ := post(t, r.InboxURL()+"?x=1", body, func(req *http.Request) {
		signCavageTarget(t, req, body, actors.keyID("q"), actors.key("q"), true)
		req.URL.RawQuery = "x=2" // another query than signed
	})
	assert.Equal(t, http.StatusUnauthorized, code, text)
}

// signCavageTarget signs req like Mastodon, with (request-target) with or
// without the query string.
func signCavageTarget(t *testing.T, req *http.Request, body []byte, keyID string, key *rsa.PrivateKey, withQuery bool) {
	t.Helper()
	sum := sha256.Sum256(body)
	req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	req.Header.Set("Digest", "SHA-256="+base64.StdEncoding.EncodeToString(sum[:]))
	target := req.URL.RequestURI()
	if !withQuery {
		target = req.URL.EscapedPath()
	}
	msg := "(request-target): post " + target + "\nhost: " + req.URL.Host + "\ndate: " + req.Header.Get("Date") +
		"\ndigest: " + req.Header.Get("Digest")
	h := sha256.Sum256([]byte(msg))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, h[:])
	require.NoError(t, err)
	req.Header.Set("Signature", `keyId="`+keyID+`",algorithm="rsa-sha256",headers="(request-target) host date digest",signature="`+
		base64.StdEncoding.EncodeToString(sig)+`"`)
}

// A burst of activities from an unknown actor fetches its key once: the
// requests that arrive while the fetch is in flight wait for it.
func TestKeyFetchedOnceForABurst(t *testing.T) {
	const n = 8
	actors := newFakeActors(t)
	gate := make(chan struct{})
	actors.getHook = func(_ http.ResponseWriter, r *http.Request) bool {
		<-gate // hold the key fetch until every request is in the inbox
		return false
	}
	var inside atomic.Int64
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			inside.Add(1)
			h.ServeHTTP(w, req)
		})
	})
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := note(actors.actorID("burst"), strconv.Itoa(i), time.Time{})
			req, _ := http.NewRequest(http.MethodPost, r.InboxURL(), bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/activity+json")
			actors.signCavage(req, "burst", body)
			resp, err := (&http.Client{Timeout: wait}).Do(req)
			if err == nil {
				codes[i] = resp.StatusCode
				_ = resp.Body.Close()
			}
		}()
	}
	require.Eventually(t, func() bool { return inside.Load() == n }, wait, time.Millisecond)
	close(gate)
	wg.Wait()
	for i, c := range codes {
		assert.Equal(t, http.StatusForbidden, c, "request %d: authenticated (then not subscribed)", i)
	}
	assert.Equal(t, 1, actors.getCount("/users/burst"), "one key fetch for the burst")
}

// stepClock is a relay.Clock that moves when the test says so.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Keys are cached for KeyCacheTTL, then fetched again.
func TestKeyCacheExpires(t *testing.T) {
	actors := newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock, KeyCacheTTL: time.Minute}, nil)
	send := func(id string) {
		body := note(actors.actorID("c"), id, time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "c", body) })
		require.Equal(t, http.StatusForbidden, code, text)
	}
	send("1")
	send("2")
	assert.Equal(t, 1, actors.getCount("/users/c"), "cached")
	clock.advance(2 * time.Minute)
	send("3")
	assert.Equal(t, 2, actors.getCount("/users/c"), "fetched again after the TTL")
}

// Key fetches are limited per keyId host, counting failed fetches only: a
// stream of keyIds that do not exist gets 429 once the host's budget is
// spent (then new keys of that host wait too), successful fetches give their
// token back, and another host is unaffected.
func TestKeyFetchesAreLimitedPerHost(t *testing.T) {
	a, b := newFakeActors(t), newFakeActors(t)
	r := newRelayServer(t, relay.Config{
		AllowHTTP: true, AllowPrivate: loopback, KeyFetchLimit: relay.RateLimit{Rate: 0.001, Burst: 2},
	}, nil)
	send := func(f *fakeActors, user, keyID string) (int, string, http.Header) {
		body := note(f.actorID(user), randomID(), time.Time{})
		return post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: keyID, Key: f.key(user)}).SignRequest(req, body, time.Now()))
		})
	}
	for _, u := range []string{"u1", "u2", "u3"} {
		code, text, _ := send(a, u, a.keyID(u))
		require.Equal(t, http.StatusForbidden, code, "fetched, authenticated, not subscribed: %s", text)
	}
	for i := range 2 {
		code, text, _ := send(a, "u1", a.base+"/missing/"+strconv.Itoa(i)+"#main-key")
		require.Equal(t, http.StatusUnauthorized, code, text)
	}
	code, text, h := send(a, "u4", a.keyID("u4"))
	assert.Equal(t, http.StatusTooManyRequests, code, text)
	assert.NotEmpty(t, h.Get("Retry-After"))
	assert.Zero(t, a.getCount("/users/u4"), "no fetch over the limit")
	// A cached key needs no fetch.
	code, text, _ = send(a, "u1", a.keyID("u1"))
	assert.Equal(t, http.StatusForbidden, code, text)
	// Another host has its own budget.
	code, text, _ = send(b, "u1", b.keyID("u1"))
	assert.Equal(t, http.StatusForbidden, code, text)
	assert.Equal(t, 1, b.getCount("/users/u1"))
}

// A Delete from an actor whose key document is 410 Gone is accepted
// without effect; any other activity, or a Delete claiming another actor,
// is refused.
func TestDeleteOfGoneActor(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	subscribe(t, r, sender, receiver)
	gone := sender.ActorID("gone")
	sender.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodGet && strings.HasPrefix(sender.URL()+req.URL.Path, gone) {
			return http.StatusGone
		}
		return 0
	})
	deleteOf := func(actor string) []byte {
		return mustJSON(map[string]any{
			"@context": "https://www.w3.org/ns/activitystreams",
			"id":       actor + "#delete", "type": "Delete", "actor": actor, "object": actor,
			"to": []string{relay.PublicCollection},
		})
	}
	code, text := status(t, sender, r, "gone", deleteOf(gone))
	assert.Equal(t, http.StatusAccepted, code, text)
	code, text = status(t, sender, r, "gone", createDoc(sender, "gone", "1"))
	assert.Equal(t, http.StatusUnauthorized, code, text)
	code, text = status(t, sender, r, "gone", deleteOf(sender.ActorID("alice")))
	assert.Equal(t, http.StatusUnauthorized, code, text)

	// Nothing was relayed: a later post arrives alone.
	marker := createDoc(sender, "alice", "after-gone")
	code, text = status(t, sender, r, "alice", marker)
	require.Equal(t, http.StatusAccepted, code, text)
	waitFor(t, receiver, "Announce", sender.ActorID("alice")+"/statuses/after-gone")
	for _, rc := range receiver.Received() {
		assert.NotEqual(t, "Delete", rc.Type, "the unverifiable Delete is not amplified")
	}
}

// Blocked domains (and their subdomains) are refused with 403 before
// anything is fetched from them: by keyId, actor or object.
func TestBlockedDomains(t *testing.T) {
	var network memnet.Network
	r, err := relay.New(relay.Config{
		BaseURL: "https://relay.test", Transport: &network, Logger: quietLogger(),
		BlockedDomains: []string{"blocked.test"},
	})
	require.NoError(t, err)
	network.Handle("relay.test", r.Handler())
	require.NoError(t, r.Start())
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	opts := func(host string) relaytest.Options {
		return relaytest.Options{Network: &network, Host: host, Logf: func(string, ...any) {}}
	}
	good := relaytest.NewInstance(t, relaytest.Mastodon, opts("good.test"))
	bad := relaytest.NewInstance(t, relaytest.Mastodon, opts("sub.blocked.test"))
	var badRequests atomic.Int64
	bad.SetFault(func(*http.Request) int { badRequests.Add(1); return 0 })
	ctx := context.Background()

	_, err = bad.Subscribe(ctx, r.InboxURL(), r.ActorID())
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he, "a Follow from a blocked subdomain")
	assert.Equal(t, http.StatusForbidden, he.StatusCode)
	// It is answered with a Reject: one fetch of the follower's actor (to
	// authenticate the Follow and find its inbox) and the Reject itself.
	bad.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	require.Equal(t, int64(2), badRequests.Load(), "the actor's fetch and the Reject")

	_, err = good.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	good.WaitSubscribed(t, wait)

	// An actor on a blocked domain signing with a key elsewhere, and an
	// object on a blocked domain.
	code, text := status(t, good, r, "alice", createDoc(bad, "eve", "1"))
	assert.Equal(t, http.StatusForbidden, code, text)
	code, text = status(t, good, r, "alice", mustJSON(map[string]any{
		"id": good.ActorID("alice") + "/statuses/b/activity", "type": "Announce", "actor": good.ActorID("alice"),
		"object": bad.ActorID("eve") + "/statuses/1", "to": []string{relay.PublicCollection},
	}))
	assert.Equal(t, http.StatusForbidden, code, text)
	// A keyId on a blocked domain, for an actor elsewhere.
	code, text = status(t, good, r, "alice", createDoc(good, "alice", "2"), relaytest.WithKeyID(bad.ActorID("eve")+"#main-key"))
	assert.Equal(t, http.StatusForbidden, code, text)
	assert.Equal(t, int64(2), badRequests.Load(), "nothing else was fetched from or sent to the blocked domain")
}

// --- 4. Hostile input -------------------------------------------------------------------------

// A post published longer ago than MaxActivityAge is accepted and dropped;
// a fresh one, and a Delete without published, are relayed.
func TestOldPostsAreNotRelayed(t *testing.T) {
	r := startRelay(t, relay.Config{MaxActivityAge: 30 * time.Minute})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	subscribe(t, r, sender, receiver)
	actor := sender.ActorID("alice")
	old := note(actor, "old", time.Now().Add(-2*time.Hour))
	code, text := status(t, sender, r, "alice", old)
	assert.Equal(t, http.StatusAccepted, code, text)
	del := mustJSON(map[string]any{
		"id": actor + "#delete-1", "type": "Delete", "actor": actor,
		"object": map[string]any{"id": actor + "/statuses/gone", "type": "Tombstone"}, "to": []string{relay.PublicCollection},
	})
	code, text = status(t, sender, r, "alice", del)
	require.Equal(t, http.StatusAccepted, code, text)
	fresh := note(actor, "fresh", time.Now().Add(-time.Minute))
	code, text = status(t, sender, r, "alice", fresh)
	require.Equal(t, http.StatusAccepted, code, text)

	waitFor(t, receiver, "Announce", actor+"/statuses/fresh")
	receiver.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Delete" })
	assert.Zero(t, countFor(receiver, "Announce", actor+"/statuses/old"), "the old post is not relayed")
}

// Loop guard: an Announce by a relay actor of another origin's object is
// not relayed, nor is an activity whose actor is this relay.
func TestRelayLoopGuard(t *testing.T) {
	r := startRelay(t, relay.Config{})
	otherRelay := newInstance(t, relaytest.Pleroma) // its /relay actor is an Application
	masto := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	subscribe(t, r, otherRelay, masto, receiver)

	foreign := masto.ActorID("alice") + "/statuses/looping"
	code, text := status(t, otherRelay, r, "", mustJSON(map[string]any{
		"id": otherRelay.RelayActorID() + "/activities/1", "type": "Announce", "actor": otherRelay.RelayActorID(),
		"object": foreign, "to": []string{relay.PublicCollection},
	}))
	assert.Equal(t, http.StatusAccepted, code, text)

	// The relay's own Announce coming back.
	code, text = status(t, masto, r, "alice", mustJSON(map[string]any{
		"id": masto.ActorID("alice") + "/echo", "type": "Announce", "actor": r.ActorID(),
		"object": masto.ActorID("alice") + "/statuses/echo", "to": []string{relay.PublicCollection},
	}))
	assert.Equal(t, http.StatusAccepted, code, text)

	// The other relay's own posts are still relayed (a sync point).
	own, err := otherRelay.Post(context.Background(), r.InboxURL(), "pat", "own post")
	require.NoError(t, err)
	waitFor(t, receiver, "Announce", own.ID)
	assert.Zero(t, countFor(receiver, "Announce", foreign))
	assert.Zero(t, countFor(receiver, "Announce", masto.ActorID("alice")+"/statuses/echo"))
}

// JSON nested deeper than 64 levels is refused before it is parsed.
func TestJSONNestingLimit(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender)
	actor := sender.ActorID("alice")
	nested := func(depth int, id string) []byte {
		return []byte(`{"id":"` + actor + `/statuses/` + id + `/activity","type":"Create","actor":"` + actor +
			`","to":["` + relay.PublicCollection + `"],"object":{"id":"` + actor + `/statuses/` + id +
			`","type":"Note","content":"x","tag":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}}`)
	}
	code, text := status(t, sender, r, "alice", nested(63, "deep"))
	assert.Equal(t, http.StatusBadRequest, code, text)
	assert.Contains(t, text, "nested deeper")
	code, text = status(t, sender, r, "alice", nested(30, "shallow"))
	assert.Equal(t, http.StatusAccepted, code, text)
}

// An embedded object must come from the actor's origin; an Announce that
// embeds another origin's object is relayed by IRI only.
func TestObjectOrigin(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	other := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender, receiver)
	actor := sender.ActorID("alice")
	foreign := other.ActorID("carol") + "/statuses/1"
	for name, obj := range map[string]map[string]any{
		"Create of another origin's object": {"id": foreign, "type": "Note", "attributedTo": actor},
		"Create attributed to another":      {"id": actor + "/statuses/2", "type": "Note", "attributedTo": other.ActorID("carol")},
	} {
		t.Run(name, func(t *testing.T) {
			code, text := status(t, sender, r, "alice", mustJSON(map[string]any{
				"id": actor + "/activities/" + randomID(), "type": "Create", "actor": actor, "object": obj,
				"to": []string{relay.PublicCollection},
			}))
			assert.Equal(t, http.StatusForbidden, code, text)
		})
	}
	t.Run("Delete of another origin's object", func(t *testing.T) {
		code, text := status(t, sender, r, "alice", mustJSON(map[string]any{
			"id": actor + "#delete-foreign", "type": "Delete", "actor": actor,
			"object": map[string]any{"id": foreign, "type": "Tombstone"}, "to": []string{relay.PublicCollection},
		}))
		assert.Equal(t, http.StatusForbidden, code, text)
	})
	t.Run("Announce embedding another origin's object", func(t *testing.T) {
		id := actor + "/statuses/boost-embedded/activity"
		code, text := status(t, sender, r, "alice", mustJSON(map[string]any{
			"id": id, "type": "Announce", "actor": actor, "to": []string{relay.PublicCollection},
			"object":    map[string]any{"id": foreign, "type": "Note", "attributedTo": other.ActorID("carol"), "content": "forged"},
			"signature": map[string]any{"type": "RsaSignature2017", "creator": actor + "#main-key", "signatureValue": "x"},
		}))
		require.Equal(t, http.StatusAccepted, code, text)
		rc := waitFor(t, receiver, "Announce", foreign)
		assert.Equal(t, r.ActorID(), rc.Actor, "the relay announces the IRI")
		assert.NotContains(t, string(rc.Body), "forged")
		for _, rc := range receiver.Received() {
			assert.NotEqual(t, id, rc.ID, "the embedded copy is not forwarded")
		}
	})
}

// A flood from one host is limited (429 with Retry-After) without
// affecting other hosts.
func TestInboxFloodIsLimitedPerHost(t *testing.T) {
	r := startRelay(t, relay.Config{InboxLimit: relay.RateLimit{Rate: 0.001, Burst: 3}})
	flooder := newInstance(t, relaytest.Mastodon)
	other := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, flooder, other) // one request each
	for i := range 2 {
		code, text := status(t, flooder, r, "alice", createDoc(flooder, "alice", fmt.Sprint("flood-", i)))
		require.Equal(t, http.StatusAccepted, code, text)
	}
	resp, err := flooder.Send(context.Background(), r.InboxURL(), "alice", createDoc(flooder, "alice", "flood-over"))
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
	code, text := status(t, other, r, "bob", createDoc(other, "bob", "unaffected"))
	assert.Equal(t, http.StatusAccepted, code, text)
}

// A key is bound to its owner both ways: a key document naming an owner on
// another host, or an owner that does not list the key, is refused; the
// activity's actor must be the key's owner.
func TestKeyOwnerBinding(t *testing.T) {
	actors := newFakeActors(t)
	keyDoc := func(w http.ResponseWriter, id, owner, user string) {
		pemKey, err := httpsig.MarshalPublicKeyPEM(&actors.key(user).PublicKey)
		require.NoError(t, err)
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(mustJSON(map[string]any{"@context": "https://w3id.org/security/v1", "id": id, "type": "Key", "owner": owner, "publicKeyPem": pemKey}))
	}
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/keys/unlisted": // o1's key, but /users/o1 lists only its #main-key
			keyDoc(w, actors.base+r.URL.Path, actors.actorID("o1"), "o1")
		case "/keys/elsewhere":
			keyDoc(w, actors.base+r.URL.Path, "http://127.0.0.9:9/users/o1", "o1")
		default:
			return false
		}
		return true
	}
	var logs logBuffer
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Logger: logs.logger()}, nil)
	send := func(keyID, actorUser, signUser string) (int, string) {
		body := note(actors.actorID(actorUser), randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: keyID, Key: actors.key(signUser)}).SignRequest(req, body, time.Now()))
		})
		return code, text
	}
	code, text := send(actors.base+"/keys/unlisted", "o1", "o1")
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Contains(t, logs.String(), "does not list key")
	code, text = send(actors.base+"/keys/elsewhere", "o1", "o1")
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Contains(t, logs.String(), "owner of another origin")
	code, text = send(actors.keyID("o2"), "o1", "o2") // o2 signs o1's post
	assert.Equal(t, http.StatusUnauthorized, code, text)
	code, text = send(actors.keyID("o1"), "o1", "o1")
	assert.Equal(t, http.StatusForbidden, code, "authenticated, not subscribed: %s", text)
}
