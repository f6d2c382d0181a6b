package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	vocab "github.com/go-ap/activitypub"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// actorOf fetches and decodes r's actor document.
func actorOf(t *testing.T, r *relay.Relay) *vocab.Actor {
	t.Helper()
	code, _, body := get(t, r.Handler(), r.ActorID())
	require.Equal(t, http.StatusOK, code)
	it, err := vocab.UnmarshalJSON(body)
	require.NoError(t, err)
	var actor *vocab.Actor
	require.NoError(t, vocab.OnActor(it, func(a *vocab.Actor) error { actor = a; return nil }))
	return actor
}

// Two relays on one host, told apart by their usernames: each answers
// WebFinger for its own account only, and a host's WebFinger endpoint
// asks each.
func TestTwoRelaysOnOneHost(t *testing.T) {
	a, err := relay.New(relay.Config{BaseURL: "https://example.org/a", Username: "a", Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	b, err := relay.New(relay.Config{BaseURL: "https://example.org/b", Username: "b", ActorType: "Service", Logger: quietLogger(),
		Topics: relay.TopicConfig{Disabled: true}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close(context.Background()) })

	mux := http.NewServeMux()
	mux.Handle("/a/", a.Handler())
	mux.Handle("/b/", b.Handler())
	mux.HandleFunc("GET /.well-known/webfinger", func(w http.ResponseWriter, req *http.Request) {
		for _, r := range []*relay.Relay{a, b} {
			if jrd, ok := r.WebFinger(req.URL.Query().Get("resource")); ok {
				_ = json.NewEncoder(w).Encode(jrd)
				return
			}
		}
		http.NotFound(w, req)
	})
	for _, tc := range []struct {
		resource, subject, actor string
	}{
		{"acct:a@example.org", "acct:a@example.org", "https://example.org/a/actor"},
		{"acct:B@example.org", "acct:b@example.org", "https://example.org/b/actor"},
		{"https://example.org/b/actor", "acct:b@example.org", "https://example.org/b/actor"},
		{"acct:tag.cats@example.org", "acct:tag.cats@example.org", "https://example.org/a/tag/cats"},
	} {
		code, _, body := get(t, mux, "https://example.org/.well-known/webfinger?resource="+tc.resource)
		require.Equal(t, http.StatusOK, code, tc.resource)
		var jrd relay.JRD
		require.NoError(t, json.Unmarshal(body, &jrd))
		assert.Equal(t, tc.subject, jrd.Subject, tc.resource)
		assert.Equal(t, tc.actor, jrd.Links[0].Href, tc.resource)
	}
	code, _, _ := get(t, mux, "https://example.org/.well-known/webfinger?resource=acct:relay@example.org")
	assert.Equal(t, http.StatusNotFound, code, "neither relay is relay@")

	assert.Equal(t, "a", actorOf(t, a).PreferredUsername.String())
	assert.Equal(t, vocab.ApplicationType, actorOf(t, a).Type)
	assert.Equal(t, "b", actorOf(t, b).PreferredUsername.String())
	assert.Equal(t, vocab.ServiceType, actorOf(t, b).Type)
}

// New refuses a relay claiming the account of another open relay of the
// process, whatever its path, and allows it once the other is closed.
func TestDuplicateAccountRefused(t *testing.T) {
	first, err := relay.New(relay.Config{BaseURL: "https://dup.example/one", Logger: quietLogger()})
	require.NoError(t, err)
	_, err = relay.New(relay.Config{BaseURL: "https://DUP.example:443/two", Logger: quietLogger()})
	require.ErrorIs(t, err, relay.ErrAccountTaken)
	assert.Contains(t, err.Error(), "acct:relay@dup.example")
	assert.Equal(t, 1, strings.Count(err.Error(), "relay: "), err.Error())
	_, err = relay.New(relay.Config{BaseURL: "https://dup.example/two", Username: "Relay", Logger: quietLogger()})
	require.ErrorIs(t, err, relay.ErrAccountTaken, "accounts differ in case only")

	other, err := relay.New(relay.Config{BaseURL: "https://dup.example:8443/", Logger: quietLogger()})
	require.NoError(t, err, "another port is another account")
	require.NoError(t, other.Close(context.Background()))

	require.NoError(t, first.Close(context.Background()))
	second, err := relay.New(relay.Config{BaseURL: "https://dup.example/two", Logger: quietLogger()})
	require.NoError(t, err, "the account is free once the first relay is closed")
	require.NoError(t, second.Close(context.Background()))
}

// New refuses a relay that would answer WebFinger for a topic account
// another open relay of the process answers for on the same host: both
// offering topics (unless their Topics.Allow lists are disjoint), or a
// Username that is one of the other's topic accounts. Relays with one
// BaseURL serve the same topic actors, and another port is another host.
func TestTopicAccountsClaimedOncePerHost(t *testing.T) {
	open := func(cfg relay.Config) (*relay.Relay, error) {
		t.Helper()
		cfg.Logger = quietLogger()
		r, err := relay.New(cfg)
		if err == nil {
			t.Cleanup(func() { _ = r.Close(context.Background()) })
		}
		return r, err
	}
	a, err := open(relay.Config{BaseURL: "https://topics.example/a", Username: "a"})
	require.NoError(t, err)

	_, err = open(relay.Config{BaseURL: "https://topics.example/b", Username: "b"})
	require.ErrorIs(t, err, relay.ErrAccountTaken, "both offer every topic")
	assert.Contains(t, err.Error(), "acct:tag.…@topics.example")
	assert.Contains(t, err.Error(), "Topics.Disabled")
	_, err = open(relay.Config{BaseURL: "https://topics.example/b", Username: "b", Topics: relay.TopicConfig{Allow: []string{"tag/dogs"}}})
	require.ErrorIs(t, err, relay.ErrAccountTaken, "a offers tag/dogs too")
	assert.Contains(t, err.Error(), "acct:tag.dogs@topics.example")
	_, err = open(relay.Config{BaseURL: "https://topics.example/b", Username: "Tag.Cats", Topics: relay.TopicConfig{Disabled: true}})
	require.ErrorIs(t, err, relay.ErrAccountTaken, "b's account is a's topic account")
	assert.Contains(t, err.Error(), "acct:tag.cats@topics.example")

	_, err = open(relay.Config{BaseURL: "https://topics.example/b", Username: "b", Topics: relay.TopicConfig{Disabled: true}})
	require.NoError(t, err, "topics disabled")
	_, err = open(relay.Config{BaseURL: "https://topics.example/a", Username: "a2"})
	require.NoError(t, err, "the same BaseURL: the same topic actors")
	_, err = open(relay.Config{BaseURL: "https://topics.example:8443/c", Username: "c"})
	require.NoError(t, err, "another port")

	_, err = open(relay.Config{BaseURL: "https://allow.example/c", Username: "c", Topics: relay.TopicConfig{Allow: []string{"tag/cats"}}})
	require.NoError(t, err)
	_, err = open(relay.Config{BaseURL: "https://allow.example/d", Username: "d", Topics: relay.TopicConfig{Allow: []string{"tag/dogs", "language/en"}}})
	require.NoError(t, err, "disjoint Allow lists")
	_, err = open(relay.Config{BaseURL: "https://allow.example/e", Username: "e", Topics: relay.TopicConfig{Allow: []string{"tag/birds", "tag/#Cats"}}})
	require.ErrorIs(t, err, relay.ErrAccountTaken)
	assert.Contains(t, err.Error(), "acct:tag.cats@allow.example")
	_, err = open(relay.Config{BaseURL: "https://allow.example/e", Username: "e", Topics: relay.TopicConfig{Allow: []string{"tag/birds", "tag/cats"}, Block: []string{"tag/cats"}}})
	require.NoError(t, err, "e blocks the topic c offers")

	require.NoError(t, a.Close(context.Background()))
	_, err = open(relay.Config{BaseURL: "https://topics.example/f", Username: "f"})
	require.ErrorIs(t, err, relay.ErrAccountTaken, "the relay with a's BaseURL still offers topics")
}

// A key given in Config signs the relay's requests and is published in
// its actor; the store's key stays as it is.
func TestSuppliedPrivateKey(t *testing.T) {
	key, err := httpsig.GenerateKey()
	require.NoError(t, err)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	st := newMemStore(t)
	stored := testRelayKey(t)
	require.NoError(t, st.PutValue(context.Background(), "relay/private-key.pem", stored))

	r := startRelay(t, relay.Config{Store: st, PrivateKeyPEM: pkcs1})
	want, err := httpsig.MarshalPublicKeyPEM(&key.PublicKey)
	require.NoError(t, err)
	assert.Equal(t, want, actorOf(t, r).PublicKey.PublicKeyPem)

	// The instance verifies the signature of the relay's Accept with the
	// key it fetches from the actor.
	m := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, m)
	assert.Empty(t, m.Rejected())
	got, err := st.GetValue(context.Background(), "relay/private-key.pem")
	require.NoError(t, err)
	assert.Equal(t, stored, got, "the store's key is not replaced")

	// PKCS#8 is accepted too.
	pkcs8, err := httpsig.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	cfg := relay.Config{BaseURL: "https://relay.example", PrivateKeyPEM: pkcs8}
	assert.NoError(t, cfg.Validate())
}

func TestConfigErrors(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	smallPEM, err := httpsig.MarshalPrivateKeyPEM(small)
	require.NoError(t, err)
	for _, tc := range []struct {
		cfg   relay.Config
		field string
		msg   string
	}{
		{relay.Config{BaseURL: "relay.example"}, "BaseURL", `relay: BaseURL must be an absolute http(s) URL: "relay.example"`},
		{relay.Config{BaseURL: "https://u@relay.example"}, "BaseURL", `relay: BaseURL must not have a query, fragment or user info: "https://u@relay.example"`},
		{relay.Config{BaseURL: "https://relay.example", Username: "bad name"}, "Username", `relay: Username must be 1 to 64 letters, digits, '_', '-' or '.' ('-' and '.' not first or last): "bad name"`},
		{relay.Config{BaseURL: "https://relay.example", Username: ".relay"}, "Username", ""},
		{relay.Config{BaseURL: "https://relay.example", Username: strings.Repeat("r", 65)}, "Username", ""},
		{relay.Config{BaseURL: "https://relay.example", ActorType: "Person"}, "ActorType", `relay: ActorType must be Application or Service: "Person"`},
		{relay.Config{BaseURL: "https://relay.example", PrivateKeyPEM: []byte("not a key")}, "PrivateKeyPEM", "relay: PrivateKeyPEM is not a usable RSA private key: httpsig: no PEM block in private key"},
		{relay.Config{BaseURL: "https://relay.example", PrivateKeyPEM: smallPEM}, "PrivateKeyPEM", "relay: PrivateKeyPEM is not a usable RSA private key: the RSA key has 1024 bits, fewer than 2048"},
		{relay.Config{BaseURL: "https://relay.example", TrustedProxies: []netip.Prefix{{}}}, "TrustedProxies", ""},
	} {
		err := tc.cfg.Validate()
		var ce *relay.ConfigError
		require.ErrorAs(t, err, &ce, tc.field)
		assert.Equal(t, tc.field, ce.Field)
		if tc.msg != "" {
			assert.Equal(t, tc.msg, err.Error())
		}
		_, err = relay.New(tc.cfg)
		assert.ErrorAs(t, err, &ce, "New refuses what Validate refuses")
	}
	ok := relay.Config{BaseURL: "https://relay.example", Username: "relay.bot-1_x", ActorType: "Service"}
	assert.NoError(t, ok.Validate())
}

// NodeInfoLinks, NodeInfo and HostMeta return what the handler serves, so
// that a server answering those routes itself can merge them.
func TestNodeInfoAndHostMetaHelpers(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{ApprovalRequired: true})
	base := strings.TrimSuffix(r.ActorID(), "/actor")

	code, _, body := get(t, r.Handler(), base+"/.well-known/nodeinfo")
	require.Equal(t, http.StatusOK, code)
	var links struct{ Links []relay.JRDLink }
	require.NoError(t, json.Unmarshal(body, &links))
	assert.Equal(t, r.NodeInfoLinks(), links.Links)

	for _, version := range []string{"2.0", "2.1"} {
		doc, err := r.NodeInfo(ctx, version)
		require.NoError(t, err)
		assert.False(t, doc.OpenRegistrations, "approval required")
		want, err := json.Marshal(doc)
		require.NoError(t, err)
		_, _, body := get(t, r.Handler(), base+"/nodeinfo/"+version)
		assert.JSONEq(t, string(want), string(body), version)
	}
	_, err := r.NodeInfo(ctx, "3.0")
	assert.ErrorIs(t, err, relay.ErrNodeInfoVersion)

	hm, err := r.HostMeta().XML()
	require.NoError(t, err)
	_, ct, body := get(t, r.Handler(), base+"/.well-known/host-meta")
	assert.Contains(t, ct, "application/xrd+xml")
	assert.Equal(t, string(hm), string(body))
	assert.Contains(t, string(body), `template="`+base+`/.well-known/webfinger?resource={uri}"`)

	// A host that answers /.well-known/nodeinfo itself lists its own
	// documents first and the relay's after them.
	own := relay.JRDLink{Rel: "http://nodeinfo.diaspora.software/ns/schema/2.1", Href: "https://example.org/nodeinfo/2.1"}
	merged, err := json.Marshal(map[string]any{"links": append([]relay.JRDLink{own}, r.NodeInfoLinks()...)})
	require.NoError(t, err)
	assert.Contains(t, string(merged), `"href":"`+base+`/nodeinfo/2.0"`)

	// ApprovalRequired without a FollowPolicy holds requests.
	m := newInstance(t, relaytest.Mastodon)
	_, err = m.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	subs, err := r.Subscribers(ctx, store.SubscriberFilter{State: store.StatePending})
	require.NoError(t, err)
	assert.Len(t, subs, 1, "the request waits for the operator")

	open := startRelay(t, relay.Config{})
	doc, err := open.NodeInfo(ctx, "2.1")
	require.NoError(t, err)
	assert.True(t, doc.OpenRegistrations)
}

// syncWriter is a bytes.Buffer safe for concurrent use, for logs.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// The client address in logs comes from forwarding headers only for
// requests from TrustedProxies.
func TestTrustedProxiesClientAddress(t *testing.T) {
	var logs syncWriter
	r, err := relay.New(relay.Config{
		BaseURL:        "https://proxied.example",
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48")},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	for _, tc := range []struct {
		name, peer string
		header     map[string]string
		want       string
	}{
		{"trusted proxy, X-Forwarded-For", "10.0.0.1:5000", map[string]string{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}, "203.0.113.7"},
		{"trusted proxies chained", "10.0.0.1:5000", map[string]string{"X-Forwarded-For": "203.0.113.7, 10.2.2.2"}, "203.0.113.7"},
		{"X-Forwarded-For before Forwarded", "10.0.0.1:5000", map[string]string{"X-Forwarded-For": "203.0.113.8", "Forwarded": "for=192.0.2.1"}, "203.0.113.8"},
		{"Forwarded", "10.0.0.1:5000", map[string]string{"Forwarded": "for=192.0.2.60;proto=https;by=10.0.0.1, for=10.3.3.3"}, "192.0.2.60"},
		{"Forwarded IPv6", "[2001:db8:1::5]:443", map[string]string{"Forwarded": `for="[2001:db8:cafe::17]:4711"`}, "2001:db8:cafe::17"},
		{"only proxies", "10.0.0.1:5000", map[string]string{"X-Forwarded-For": "10.9.9.9"}, "10.9.9.9"},
		{"garbage", "10.0.0.1:5000", map[string]string{"X-Forwarded-For": "203.0.113.7, nonsense"}, "10.0.0.1:5000"},
		{"hidden", "10.0.0.1:5000", map[string]string{"Forwarded": "for=_hidden"}, "10.0.0.1:5000"},
		{"no header", "10.0.0.1:5000", nil, "10.0.0.1:5000"},
		{"untrusted peer", "192.0.2.99:5000", map[string]string{"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"}, "192.0.2.99:5000"},
	} {
		req := httptest.NewRequest(http.MethodPost, "https://proxied.example/inbox", strings.NewReader(`{}`))
		req.RemoteAddr = tc.peer
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		before := len(logs.String())
		rec := httptest.NewRecorder()
		r.Handler().ServeHTTP(rec, req)
		require.Equal(t, http.StatusUnauthorized, rec.Code, tc.name)
		line := logs.String()[before:]
		assert.Contains(t, line, " remote="+tc.want+"\n", tc.name)
	}
}
