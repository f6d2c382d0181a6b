package relay_test

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	vocab "github.com/go-ap/activitypub"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// get performs an unsigned GET on h and returns status, content type and body.
func get(t *testing.T, h http.Handler, target string) (int, string, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.Header.Set("Accept", "application/activity+json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, rec.Header().Get("Content-Type"), body
}

func newTestRelay(t *testing.T, base string) *relay.Relay {
	t.Helper()
	r, err := relay.New(relay.Config{BaseURL: base, Logger: quietLogger(), Name: "Test relay", Summary: "for tests"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

func TestActorDocument(t *testing.T) {
	r := newTestRelay(t, "https://relay.example")
	code, ct, body := get(t, r.Handler(), "https://relay.example/actor")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "application/activity+json", ct)

	it, err := vocab.UnmarshalJSON(body)
	require.NoError(t, err)
	require.NotNil(t, it)
	var actor *vocab.Actor
	require.NoError(t, vocab.OnActor(it, func(a *vocab.Actor) error { actor = a; return nil }))
	assert.Equal(t, vocab.ApplicationType, actor.Type)
	assert.Equal(t, "https://relay.example/actor", actor.ID.String())
	assert.Equal(t, "relay", actor.PreferredUsername.String())
	assert.Equal(t, "https://relay.example/inbox", actor.Inbox.GetLink().String())
	require.NotNil(t, actor.Endpoints)
	assert.Equal(t, actor.Inbox.GetLink(), actor.Endpoints.SharedInbox.GetLink(), "inbox is the shared inbox")
	assert.Equal(t, "https://relay.example/actor#main-key", actor.PublicKey.ID.String())
	assert.Equal(t, "https://relay.example/actor", actor.PublicKey.Owner.String())
	assert.True(t, strings.HasPrefix(actor.PublicKey.PublicKeyPem, "-----BEGIN PUBLIC KEY-----"), "SPKI PEM")
	pub, err := httpsig.ParsePublicKeyPEM(actor.PublicKey.PublicKeyPem)
	require.NoError(t, err)
	assert.Equal(t, 2048, pub.(*rsa.PublicKey).N.BitLen())

	var raw map[string]any
	require.NoError(t, json.Unmarshal(body, &raw))
	assert.Equal(t, []any{"https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"}, raw["@context"])
	for _, c := range []string{"followers", "following", "outbox"} {
		link := raw[c].(string)
		assert.Equal(t, "https://relay.example/actor/"+c, link)
		code, _, body := get(t, r.Handler(), link)
		require.Equal(t, http.StatusOK, code, c)
		var coll map[string]any
		require.NoError(t, json.Unmarshal(body, &coll))
		assert.Equal(t, "OrderedCollection", coll["type"], c)
		assert.Empty(t, coll["orderedItems"], "%s does not list subscribers", c)
	}
}

func TestFollowersCollectionDoesNotListSubscribers(t *testing.T) {
	r := startRelay(t, relay.Config{})
	m := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, m)
	_, _, body := get(t, r.Handler(), r.ActorID()+"/followers")
	assert.NotContains(t, string(body), m.Host())
}

func TestWebFinger(t *testing.T) {
	r := newTestRelay(t, "https://relay.example")
	for _, resource := range []string{"acct:relay@relay.example", "relay@relay.example", "https://relay.example/actor"} {
		code, ct, body := get(t, r.Handler(), "https://relay.example/.well-known/webfinger?resource="+url.QueryEscape(resource))
		require.Equal(t, http.StatusOK, code, resource)
		assert.Equal(t, "application/jrd+json", ct)
		var jrd relay.JRD
		require.NoError(t, json.Unmarshal(body, &jrd))
		assert.Equal(t, "acct:relay@relay.example", jrd.Subject)
		require.NotEmpty(t, jrd.Links)
		assert.Equal(t, relay.JRDLink{Rel: "self", Type: "application/activity+json", Href: "https://relay.example/actor"}, jrd.Links[0])
	}
	code, _, _ := get(t, r.Handler(), "https://relay.example/.well-known/webfinger?resource=acct:alice@relay.example")
	assert.Equal(t, http.StatusNotFound, code)
	code, _, _ = get(t, r.Handler(), "https://relay.example/.well-known/webfinger")
	assert.Equal(t, http.StatusBadRequest, code)

	// A base URL with a port answers for the host with and without it, and
	// names the account with the port, so that querying the subject again
	// reaches the relay.
	rp := newTestRelay(t, "http://localhost:8080")
	_, ok := rp.WebFinger("acct:relay@localhost:8080")
	assert.True(t, ok)
	jrd, ok := rp.WebFinger("acct:relay@localhost")
	assert.True(t, ok)
	assert.Equal(t, "acct:relay@localhost:8080", jrd.Subject)
	// A scheme's default port is not part of the account.
	jrd, ok = newTestRelay(t, "https://relay.example:443").WebFinger("acct:relay@relay.example")
	assert.True(t, ok)
	assert.Equal(t, "acct:relay@relay.example", jrd.Subject)
}

func TestNodeInfo(t *testing.T) {
	r := startRelay(t, relay.Config{})
	subscribe(t, r, newInstance(t, relaytest.Mastodon), newInstance(t, relaytest.Pleroma))
	base := strings.TrimSuffix(r.ActorID(), "/actor")

	code, _, body := get(t, r.Handler(), base+"/.well-known/nodeinfo")
	require.Equal(t, http.StatusOK, code)
	var links struct{ Links []relay.JRDLink }
	require.NoError(t, json.Unmarshal(body, &links))
	rels := map[string]string{}
	for _, l := range links.Links {
		rels[l.Rel] = l.Href
	}
	assert.Equal(t, base+"/nodeinfo/2.1", rels["http://nodeinfo.diaspora.software/ns/schema/2.1"])
	assert.Equal(t, base+"/nodeinfo/2.0", rels["http://nodeinfo.diaspora.software/ns/schema/2.0"])
	assert.Equal(t, r.ActorID(), rels["https://www.w3.org/ns/activitystreams#Application"])

	for _, version := range []string{"2.0", "2.1"} {
		code, ct, body := get(t, r.Handler(), base+"/nodeinfo/"+version)
		require.Equal(t, http.StatusOK, code, version)
		assert.Contains(t, ct, "application/json")
		var doc map[string]any
		require.NoError(t, json.Unmarshal(body, &doc))
		assert.Equal(t, version, doc["version"])
		assert.Equal(t, []any{"activitypub"}, doc["protocols"])
		software := doc["software"].(map[string]any)
		assert.Equal(t, "fedirelay", software["name"])
		if version == "2.0" {
			assert.Len(t, software, 2, "NodeInfo 2.0 allows only name and version")
		} else {
			assert.Contains(t, software, "repository")
		}
		users := doc["usage"].(map[string]any)["users"].(map[string]any)
		assert.EqualValues(t, 2, users["total"], "subscribers are the relay's users")
		for _, k := range []string{"services", "openRegistrations", "metadata"} {
			assert.Contains(t, doc, k)
		}
	}
	code, _, _ = get(t, r.Handler(), base+"/nodeinfo/3.0")
	assert.Equal(t, http.StatusNotFound, code)
}

func TestHostMeta(t *testing.T) {
	r := newTestRelay(t, "https://relay.example")
	code, ct, body := get(t, r.Handler(), "https://relay.example/.well-known/host-meta")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, ct, "application/xrd+xml")
	assert.Contains(t, string(body), `template="https://relay.example/.well-known/webfinger?resource={uri}"`)
}

func TestInboxOnlyTakesPOST(t *testing.T) {
	r := newTestRelay(t, "https://relay.example")
	code, _, _ := get(t, r.Handler(), "https://relay.example/inbox")
	assert.Equal(t, http.StatusMethodNotAllowed, code)
}

// The relay mounted under a prefix in a server with routes of its own, and
// on its own host name in a shared mux.
func TestMountUnderPrefixAndOnOwnHost(t *testing.T) {
	r := newTestRelay(t, "https://example.org/relay")
	assert.Equal(t, "https://example.org/relay/actor", r.ActorID())
	assert.Equal(t, "https://example.org/relay/inbox", r.InboxURL())

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "home") })
	mux.HandleFunc("POST /inbox", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "host inbox") })
	mux.HandleFunc("GET /users/{name}", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "host user") })
	h := r.Handler()
	require.NotPanics(t, func() {
		mux.Handle("/relay/", h)
		mux.Handle("GET /.well-known/webfinger", h)
		mux.Handle("GET /.well-known/nodeinfo", h)
		mux.Handle("GET /.well-known/host-meta", h)
	})
	code, _, body := get(t, mux, "https://example.org/relay/actor")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, string(body), `"inbox":"https://example.org/relay/inbox"`)
	code, _, _ = get(t, mux, "https://example.org/.well-known/webfinger?resource=acct:relay@example.org")
	assert.Equal(t, http.StatusOK, code)
	code, _, _ = get(t, mux, "https://example.org/relay/nodeinfo/2.1")
	assert.Equal(t, http.StatusOK, code)
	code, _, body = get(t, mux, "https://example.org/users/alice")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "host user", string(body), "the host's routes still work")
	code, _, _ = get(t, mux, "https://example.org/actor")
	assert.Equal(t, http.StatusNotFound, code, "nothing is served outside the prefix")

	// On its own host in a shared mux.
	own := newTestRelay(t, "https://relay.example.org")
	shared := http.NewServeMux()
	shared.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "main site") })
	shared.Handle("relay.example.org/", own.Handler())
	code, _, body = get(t, shared, "https://relay.example.org/actor")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, string(body), "https://relay.example.org/actor")
	_, _, body = get(t, shared, "https://www.example.org/actor")
	assert.Equal(t, "main site", string(body))
}

func TestConfigValidation(t *testing.T) {
	for _, base := range []string{"", "relay.example", "ftp://relay.example", "https://relay.example/?x=1", "https://u:p@relay.example"} {
		_, err := relay.New(relay.Config{BaseURL: base})
		assert.Error(t, err, base)
	}
}

// The relay key is generated once and kept in the store: a relay built
// again on the same store signs with the same key.
func TestKeyPersistsInStore(t *testing.T) {
	st := newMemStore(t)
	r1, err := relay.New(relay.Config{BaseURL: "https://relay.example", Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	_, _, a1 := get(t, r1.Handler(), "https://relay.example/actor")
	require.NoError(t, r1.Close(context.Background()))
	r2, err := relay.New(relay.Config{BaseURL: "https://relay.example", Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	_, _, a2 := get(t, r2.Handler(), "https://relay.example/actor")
	assert.JSONEq(t, string(a1), string(a2))
	keys, err := st.ListValues(context.Background(), "relay/")
	require.NoError(t, err)
	assert.Len(t, keys, 1)
}

// A whole federation in one process: the relay and four instances on the
// in-memory network, no sockets.
func TestFederationOnMemoryNetwork(t *testing.T) {
	var network memnet.Network
	r, err := relay.New(relay.Config{BaseURL: "https://relay.test", Transport: &network, Logger: quietLogger()})
	require.NoError(t, err)
	network.Handle("relay.test", r.Handler())
	require.NoError(t, r.Start())
	t.Cleanup(func() { _ = r.Close(context.Background()) })

	opts := func(host string) relaytest.Options {
		return relaytest.Options{Network: &network, Host: host, SignFetches: true, Logf: func(string, ...any) {}}
	}
	masto := relaytest.NewInstance(t, relaytest.Mastodon, opts("mastodon.test"))
	misskey := relaytest.NewInstance(t, relaytest.Misskey, opts("misskey.test"))
	pleroma := relaytest.NewInstance(t, relaytest.Pleroma, opts("pleroma.test"))
	gts := relaytest.NewInstance(t, relaytest.GoToSocial, opts("gts.test"))
	subscribe(t, r, masto, misskey, pleroma, gts)

	note, err := gts.Post(context.Background(), r.InboxURL(), "gus", "in memory")
	require.NoError(t, err)
	for _, i := range []*relaytest.Instance{masto, misskey, pleroma} {
		rc := waitFor(t, i, "Announce", note.ID)
		assert.False(t, rc.Dropped, "%s: %s", i.Flavor(), rc.Reason)
		assert.Equal(t, "https://relay.test/actor", rc.Actor)
	}
	subs, err := r.Subscribers(context.Background(), store.SubscriberFilter{State: store.StateAccepted})
	require.NoError(t, err)
	assert.Len(t, subs, 4)
}
