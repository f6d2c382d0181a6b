package relay_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
)

// Tests of the classes of issue found by a red-team pass: identity lent by
// redirects, huge keys, host spellings, parser differentials, third-party
// inboxes, unchecked object IRIs and fetch errors told to strangers.

// logBuffer is a slog destination tests can read, at debug level.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openRedirect makes f redirect GET /redirect?to=U to U, as many servers'
// link or media proxies do.
func openRedirect(f *fakeActors, next func(w http.ResponseWriter, r *http.Request) bool) {
	f.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
			return true
		}
		return next != nil && next(w, r)
	}
}

// serveJSON makes f serve doc at path.
func serveJSON(f *fakeActors, path string, doc func() map[string]any) {
	prev := f.getHook
	f.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == path {
			w.Header().Set("Content-Type", "application/activity+json")
			_, _ = w.Write(mustJSON(doc()))
			return true
		}
		return prev != nil && prev(w, r)
	}
}

// redirectVia returns the URL of victim's open redirect to target.
func redirectVia(victim *fakeActors, target string) string {
	return victim.base + "/redirect?to=" + url.QueryEscape(target)
}

func publicKeyPEM(t *testing.T, k *rsa.PrivateKey) string {
	t.Helper()
	s, err := httpsig.MarshalPublicKeyPEM(&k.PublicKey)
	require.NoError(t, err)
	return s
}

// A stranger who finds an open redirect on a subscribed host cannot make
// the relay take its documents for that host's: not for a key (a Create
// relayed as the host's, a Follow from the host answered to the
// stranger), not for an actor, and not for a 410 Gone.
func TestOpenRedirectLendsNoIdentity(t *testing.T) {
	victim, attacker := newFakeActors(t), newFakeActors(t)
	openRedirect(victim, nil)
	attackerKey := otherKey(victim.key("admin"))
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	follow := followDoc(victim.actorID("admin"))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { victim.signCavage(req, "admin", follow) })
	require.Equal(t, http.StatusAccepted, code, "the real admin subscribes: %s", text)

	sendAs := func(keyID string, body []byte) (int, string) {
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: keyID, Key: attackerKey}).SignRequest(req, body, time.Now()))
		})
		return code, text
	}

	t.Run("key document behind a redirect", func(t *testing.T) {
		// The redirect URL is the "actor", its document the stranger's.
		claimed := redirectVia(victim, attacker.base+"/actor")
		serveJSON(attacker, "/actor", func() map[string]any {
			return map[string]any{
				"id": claimed, "type": "Person", "inbox": attacker.inboxURL(),
				"publicKey": map[string]any{"id": claimed + "#main-key", "owner": claimed, "publicKeyPem": publicKeyPEM(t, attackerKey)},
			}
		})
		code, text := sendAs(claimed+"#main-key", note(claimed, randomID(), time.Time{}))
		assert.Equal(t, http.StatusUnauthorized, code, "a Create as the subscribed host: %s", text)
		code, text = sendAs(claimed+"#main-key", followDoc(claimed))
		assert.Equal(t, http.StatusUnauthorized, code, "a Follow from the subscribed host: %s", text)
		_, err := r.Subscriber(t.Context(), claimed)
		assert.ErrorIs(t, err, relay.ErrNotSubscribed)
	})

	t.Run("document claiming the victim's actor behind a redirect", func(t *testing.T) {
		keyID := redirectVia(victim, attacker.base+"/admin") + "#main-key"
		serveJSON(attacker, "/admin", func() map[string]any {
			return map[string]any{
				"id": victim.actorID("admin"), "type": "Person", "inbox": attacker.inboxURL(),
				"publicKey": map[string]any{"id": keyID, "owner": victim.actorID("admin"), "publicKeyPem": publicKeyPEM(t, attackerKey)},
			}
		})
		code, text := sendAs(keyID, note(victim.actorID("admin"), randomID(), time.Time{}))
		assert.Equal(t, http.StatusUnauthorized, code, text)
	})

	t.Run("actor document behind a redirect", func(t *testing.T) {
		// A key document the victim really serves (an uploaded file) names
		// as owner a URL that redirects to the stranger's actor document.
		owner := redirectVia(victim, attacker.base+"/owner")
		keyID := victim.base + "/media/key.json"
		serveJSON(victim, "/media/key.json", func() map[string]any {
			return map[string]any{"id": keyID, "type": "Key", "owner": owner, "publicKeyPem": publicKeyPEM(t, attackerKey)}
		})
		serveJSON(attacker, "/owner", func() map[string]any {
			return map[string]any{
				"id": owner, "type": "Person", "inbox": attacker.inboxURL(),
				"publicKey": map[string]any{"id": keyID, "owner": owner, "publicKeyPem": publicKeyPEM(t, attackerKey)},
			}
		})
		code, text := sendAs(keyID, followDoc(owner))
		assert.Equal(t, http.StatusUnauthorized, code, "a Follow from the subscribed host: %s", text)
		code, text = sendAs(keyID, note(owner, randomID(), time.Time{}))
		assert.Equal(t, http.StatusUnauthorized, code, "a Create as the subscribed host: %s", text)
		assert.Equal(t, 2, attacker.getCount("/owner"), "the redirect was followed, and the document refused")
	})

	t.Run("410 Gone behind a redirect", func(t *testing.T) {
		gone := redirectVia(victim, attacker.base+"/gone")
		attacker.getHook = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/gone" {
				w.WriteHeader(http.StatusGone)
				return true
			}
			return false
		}
		del := mustJSON(map[string]any{"id": gone + "#delete", "type": "Delete", "actor": gone, "object": gone, "to": relay.PublicCollection})
		code, text := sendAs(gone+"#main-key", del)
		assert.Equal(t, http.StatusUnauthorized, code, "another origin's 410 is not the actor being gone: %s", text)
	})

	_, received := attacker.received()
	assert.Empty(t, received, "nothing was sent to the stranger")
	s, err := r.Subscriber(t.Context(), victim.actorID("admin"))
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, s.State)
}

// fakeRSAKey returns the PEM of an RSA public key with a modulus of the
// given size and exponent e. The modulus is random (nobody holds its
// private key): generating a real 16,384-bit key takes minutes, and the
// relay must refuse the key before it does anything with it.
func fakeRSAKey(t *testing.T, bits, e int) string {
	t.Helper()
	b := make([]byte, bits/8)
	_, err := rand.Read(b)
	require.NoError(t, err)
	b[0] |= 0x80
	b[len(b)-1] |= 1
	n := new(big.Int).SetBytes(b)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: e})
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Keys that would make every verification expensive are refused when the
// key document is read, before any signature is verified with them.
func TestHugeKeysAreRefused(t *testing.T) {
	actors := newFakeActors(t)
	keys := map[string]string{
		"/keys/huge":     fakeRSAKey(t, 16384, 65537),
		"/keys/exponent": fakeRSAKey(t, 2048, 1<<31-1),
		"/keys/even":     fakeRSAKey(t, 2048, 65536),
	}
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		k, ok := keys[r.URL.Path]
		if !ok {
			return false
		}
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(mustJSON(map[string]any{"id": actors.base + r.URL.Path, "type": "Key", "owner": actors.actorID("u"), "publicKeyPem": k}))
		return true
	}
	var logs logBuffer
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Logger: logs.logger()}, nil)
	for path, want := range map[string]string{
		"/keys/huge":     "RSA key of 16384 bits",
		"/keys/exponent": "RSA public exponent 2147483647",
		"/keys/even":     "RSA public exponent 65536",
	} {
		body := note(actors.actorID("u"), randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: actors.base + path, Key: actors.key("u")}).SignRequest(req, body, time.Now()))
		})
		assert.Equal(t, http.StatusUnauthorized, code, "%s: %s", path, text)
		assert.Contains(t, logs.String(), want)
	}
}

// One server spelled several ways (ports with leading zeros, upper case,
// a trailing dot) is one host for the per-host limits: a stranger cannot
// multiply a host's key fetch budget by respelling it.
func TestHostSpellingsShareOneBudget(t *testing.T) {
	actors := newFakeActors(t)
	r := newRelayServer(t, relay.Config{
		AllowHTTP: true, AllowPrivate: loopback, KeyFetchLimit: relay.RateLimit{Rate: 0.001, Burst: 2},
	}, nil)
	host, port, ok := strings.Cut(actors.host(), ":")
	require.True(t, ok)
	spellings := []string{
		host + ":" + port, host + ":0" + port, host + ":00" + port,
	}
	codes := []int{}
	for i, hp := range spellings {
		body := note("http://"+hp+"/users/u", randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			keyID := "http://" + hp + "/missing/" + strconv.Itoa(i) + "#main-key"
			require.NoError(t, (&httpsig.Signer{KeyID: keyID, Key: actors.key("u")}).SignRequest(req, body, time.Now()))
		})
		codes = append(codes, code)
		_ = text
	}
	assert.Equal(t, []int{http.StatusUnauthorized, http.StatusUnauthorized, http.StatusTooManyRequests}, codes,
		"two failed fetches spend the host's budget, whatever the spelling")
	assert.Equal(t, 2, actors.getCount("/missing/0")+actors.getCount("/missing/1")+actors.getCount("/missing/2"))
}

// A keyId or actor whose host is not ASCII (a Unicode domain name instead
// of its xn-- form) is refused without a fetch; the xn-- form is a host
// like any other.
func TestUnicodeHostsAreRefused(t *testing.T) {
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	key := testKeys()[0]
	for _, tt := range []struct {
		name, keyID, actor string
		want               int
	}{
		{"Unicode keyId", "https://bücher.example/users/u#main-key", "https://xn--bcher-kva.example/users/u", http.StatusUnauthorized},
		{"Unicode actor", "https://xn--bcher-kva.example/users/u#main-key", "https://bücher.example/users/u", http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := note(tt.actor, randomID(), time.Time{})
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
				require.NoError(t, (&httpsig.Signer{KeyID: tt.keyID, Key: key}).SignRequest(req, body, time.Now()))
			})
			assert.Equal(t, tt.want, code, text)
		})
	}
}

// The relay reads an activity's fields as receivers do, case-sensitively,
// and refuses (400) an activity that names one of them twice or in another
// case: otherwise it could vouch for one actor while receivers read
// another.
func TestFieldsAreReadAsReceiversReadThem(t *testing.T) {
	actors := newFakeActors(t)
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	follow := followDoc(actors.actorID("sub"))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "sub", follow) })
	require.Equal(t, http.StatusAccepted, code, text)

	sub, victim := actors.actorID("sub"), "https://victim.example/users/v"
	id := sub + "/statuses/" + randomID()
	for _, tt := range []struct{ name, body string }{
		{"Actor after actor", `{"id":"` + id + `/a","type":"Create","actor":"` + victim + `","Actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"Actor before actor", `{"id":"` + id + `/a","type":"Create","Actor":"` + victim + `","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"actor twice", `{"id":"` + id + `/a","type":"Create","actor":"` + victim + `","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"escaped Actor", `{"id":"` + id + `/a","type":"Create","\u0041ctor":"` + victim + `","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"Id in the object", `{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","Id":"https://victim.example/n/1","type":"Note","attributedTo":"` + sub + `"}}`},
		{"object id twice", `{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"https://victim.example/n/1","id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"attributedTo in another case", `{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `","AttributedTo":"` + victim + `"}}`},
		{"TYPE", `{"id":"` + id + `/a","type":"Create","TYPE":"Delete","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"long s", `{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"},"published":"2000-01-01T00:00:00Z","publiſhed":"` + time.Now().UTC().Format(time.RFC3339) + `"}`},
		{"to twice", `{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","to":[],"object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
		{"embedded actor with Id", `{"id":"` + id + `/a","type":"Create","actor":{"id":"` + sub + `","Id":"` + victim + `"},"to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(tt.body)
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "sub", body) })
			assert.Equal(t, http.StatusBadRequest, code, text)
		})
	}
	// The same activity without the second spelling is relayed.
	body := []byte(`{"id":"` + id + `/a","type":"Create","actor":"` + sub + `","to":"` + relay.PublicCollection + `","object":{"id":"` + id + `","type":"Note","attributedTo":"` + sub + `"}}`)
	code, text, _ = post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, "sub", body) })
	assert.Equal(t, http.StatusAccepted, code, text)
}

// actorWithInboxes makes f serve, for every user whose name starts with
// prefix, an actor document whose inbox and shared inbox inboxes returns.
func actorWithInboxes(t *testing.T, f *fakeActors, prefix string, inboxes func(user string) (inbox, shared string)) {
	prev := f.getHook
	f.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		user, ok := strings.CutPrefix(r.URL.Path, "/users/")
		if !ok || !strings.HasPrefix(user, prefix) {
			return prev != nil && prev(w, r)
		}
		inbox, shared := inboxes(user)
		doc := map[string]any{
			"id": f.actorID(user), "type": "Person", "inbox": inbox,
			"publicKey": map[string]any{"id": f.keyID(user), "owner": f.actorID(user), "publicKeyPem": publicKeyPEM(t, f.key(user))},
		}
		if shared != "" {
			doc["endpoints"] = map[string]any{"sharedInbox": shared}
		}
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(mustJSON(doc))
		return true
	}
}

// settle waits until r has no delivery queued or in flight.
func settle(t *testing.T, r *relay.Relay) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := r.DeliveryStatus(t.Context())
		return err == nil && st.Backlog == 0 && st.InFlight == 0
	}, wait, time.Millisecond, "deliveries do not finish")
}

// An actor whose inbox or shared inbox is on another origin cannot
// subscribe: the relay sends nothing off the actor's origin (no Accept,
// no relayed post), and a Reject only to an inbox on the actor's origin.
// Ten strangers naming variants of one victim's inbox give the victim
// nothing.
func TestInboxesMustBeOnTheActorsOrigin(t *testing.T) {
	victim, attacker := newFakeActors(t), newFakeActors(t)
	actorWithInboxes(t, attacker, "v", func(user string) (string, string) {
		n := strings.TrimPrefix(user, "v")
		variants := []string{"?n=" + n, "?n=" + n + "#x", "/", "//", "/."}
		i, _ := strconv.Atoi(n)
		return victim.inboxURL() + variants[i%len(variants)], strings.ToUpper(victim.base) + "/inbox?shared=" + n
	})
	actorWithInboxes(t, attacker, "mixed", func(string) (string, string) { return attacker.inboxURL(), victim.inboxURL() })
	actorWithInboxes(t, attacker, "elsewhere", func(string) (string, string) { return victim.inboxURL(), "" })
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)

	follow := func(f *fakeActors, user string) (int, string) {
		body := followDoc(f.actorID(user))
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { f.signCavage(req, user, body) })
		return code, text
	}
	for i := range 10 {
		code, text := follow(attacker, "v"+strconv.Itoa(i))
		assert.Equal(t, http.StatusForbidden, code, text)
		assert.Contains(t, text, "not on the actor's origin")
	}
	code, text := follow(attacker, "mixed")
	assert.Equal(t, http.StatusForbidden, code, text)
	code, text = follow(attacker, "elsewhere")
	assert.Equal(t, http.StatusForbidden, code, text)

	// A genuine subscriber posts: nothing reaches the victim.
	code, text = follow(attacker, "poster")
	require.Equal(t, http.StatusAccepted, code, text)
	create := note(attacker.actorID("poster"), randomID(), time.Time{})
	code, text, _ = postBody(t, r, attacker, "poster", create)
	require.Equal(t, http.StatusAccepted, code, text)
	settle(t, r)

	_, got := victim.received()
	assert.Len(t, got, 0, "nothing is sent to an inbox off the actor's origin")
	var rejects, accepts int
	_, bodies := attacker.received()
	for _, b := range bodies {
		switch {
		case bytes.Contains(b, []byte(`"type":"Reject"`)):
			rejects++
			assert.Contains(t, string(b), attacker.actorID("mixed"), "only the actor with an inbox on its origin gets a Reject")
		case bytes.Contains(b, []byte(`"type":"Accept"`)):
			accepts++
		}
	}
	assert.Equal(t, 1, rejects)
	assert.Equal(t, 1, accepts, "the genuine subscriber's")
	subs, err := r.Subscribers(t.Context(), store.SubscriberFilter{})
	require.NoError(t, err)
	assert.Len(t, subs, 1)
}

// postBody sends body to r's inbox signed by f's user.
func postBody(t *testing.T, r *relay.Relay, f *fakeActors, user string, body []byte) (int, string, http.Header) {
	t.Helper()
	return post(t, r.InboxURL(), body, func(req *http.Request) { f.signCavage(req, user, body) })
}

// Subscribers of one server naming spellings of one inbox (query strings,
// case, default port, fragment, path spellings) get one copy of each
// relayed post.
func TestInboxSpellingsGetOneCopy(t *testing.T) {
	host, sender := newFakeActors(t), newFakeActors(t)
	hp := strings.TrimPrefix(host.base, "http://")
	variants := []string{
		host.inboxURL(), host.inboxURL() + "?a=1", host.inboxURL() + "?a=2", host.inboxURL() + "#f",
		"HTTP://" + strings.ToUpper(hp) + "/inbox", host.inboxURL() + "/", host.base + "//inbox",
		host.base + "/./inbox", host.base + "/x/../inbox", host.inboxURL() + "?",
	}
	actorWithInboxes(t, host, "u", func(user string) (string, string) {
		i, _ := strconv.Atoi(strings.TrimPrefix(user, "u"))
		return variants[i], variants[(i+3)%len(variants)]
	})
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	for i := range variants {
		user := "u" + strconv.Itoa(i)
		code, text, _ := postBody(t, r, host, user, followDoc(host.actorID(user)))
		require.Equal(t, http.StatusAccepted, code, text)
	}
	code, text, _ := postBody(t, r, sender, "s", followDoc(sender.actorID("s")))
	require.Equal(t, http.StatusAccepted, code, text)
	settle(t, r)
	id := randomID()
	code, text, _ = postBody(t, r, sender, "s", note(sender.actorID("s"), id, time.Time{}))
	require.Equal(t, http.StatusAccepted, code, text)
	settle(t, r)
	copies := 0
	_, bodies := host.received()
	for _, b := range bodies {
		if bytes.Contains(b, []byte("/statuses/"+id)) {
			copies++
		}
	}
	assert.Equal(t, 1, copies)
}

// Announce and Delete objects are checked like ids: an absolute http(s)
// URL the guard would request, and for a Delete, on the actor's origin.
func TestAnnounceAndDeleteObjectsAreChecked(t *testing.T) {
	sender, receiver := newFakeActors(t), newFakeActors(t)
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	for _, f := range []*fakeActors{sender, receiver} {
		code, text, _ := postBody(t, r, f, "a", followDoc(f.actorID("a")))
		require.Equal(t, http.StatusAccepted, code, text)
	}
	settle(t, r)
	actor := sender.actorID("a")
	activity := func(typ string, object any) []byte {
		return mustJSON(map[string]any{"id": actor + "/activities/" + randomID(), "type": typ, "actor": actor, "object": object, "to": relay.PublicCollection})
	}
	for _, tt := range []struct {
		name string
		body []byte
		want int
	}{
		{"Announce of javascript:", activity("Announce", "javascript:alert(1)"), http.StatusBadRequest},
		{"Announce of data:", activity("Announce", "data:text/html,<script>alert(1)</script>"), http.StatusBadRequest},
		{"Announce of a metadata address", activity("Announce", "http://169.254.169.254/latest/meta-data/"), http.StatusBadRequest},
		{"Announce of an internal name", activity("Announce", "http://metadata.google.internal/computeMetadata/v1/"), http.StatusBadRequest},
		{"Announce of a relative IRI", activity("Announce", "/statuses/1"), http.StatusBadRequest},
		{"Announce embedding javascript:", activity("Announce", map[string]any{"id": "javascript:alert(1)", "type": "Note"}), http.StatusBadRequest},
		{"Delete by IRI of another origin", activity("Delete", "https://victim.example/statuses/1"), http.StatusForbidden},
		{"Delete by IRI of javascript:", activity("Delete", "javascript:alert(1)"), http.StatusBadRequest},
		{"Update by IRI of another origin", activity("Update", "https://victim.example/statuses/1"), http.StatusForbidden},
		{"Move to javascript:", func() []byte {
			return mustJSON(map[string]any{"id": actor + "#move", "type": "Move", "actor": actor, "object": actor, "target": "javascript:alert(1)", "to": relay.PublicCollection})
		}(), http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, text, _ := postBody(t, r, sender, "a", tt.body)
			assert.Equal(t, tt.want, code, text)
		})
	}
	// Still relayed: a boost of another origin's post, a Delete of the
	// actor's own post, and of the actor itself.
	for _, body := range [][]byte{
		activity("Announce", receiver.actorID("a")+"/statuses/1"),
		activity("Delete", actor+"/statuses/1"),
		activity("Delete", actor),
	} {
		code, text, _ := postBody(t, r, sender, "a", body)
		assert.Equal(t, http.StatusAccepted, code, text)
	}
	settle(t, r)
	_, bodies := receiver.received()
	for _, b := range bodies {
		assert.NotContains(t, string(b), "javascript:")
		assert.NotContains(t, string(b), "169.254.169.254")
		assert.NotContains(t, string(b), "victim.example")
	}
}

// A stranger learns nothing from the 401 about the URL it named as keyId
// (status, content type, connection error, guard decision): the body is
// generic, the details go to the debug log.
func TestKeyFetchErrorsAreNotEchoed(t *testing.T) {
	target := newFakeActors(t)
	target.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/html":
			w.Header().Set("Content-Type", "text/html; charset=secret-charset")
			_, _ = w.Write([]byte("<html>admin panel</html>"))
		case "/error":
			w.WriteHeader(http.StatusTeapot)
		case "/other":
			w.Header().Set("Content-Type", "application/activity+json")
			_, _ = w.Write([]byte(`{"id":"` + target.base + `/other","type":"Person","inbox":"x"}`))
		default:
			return false
		}
		return true
	}
	_, teapot := trap(t, "127.0.0.1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := ln.Addr().String()
	require.NoError(t, ln.Close())
	var logs logBuffer
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Logger: logs.logger()}, nil)
	key := testKeys()[0]
	for _, tt := range []struct{ keyID, secret string }{
		{target.base + "/html#k", "secret-charset"},
		{target.base + "/error#k", "HTTP 418"},
		{target.base + "/missing#k", "HTTP 404"},
		{target.base + "/other#k", "does not contain key"},
		{"http://" + teapot + "/x#k", "HTTP 418"},
		{"http://" + refused + "/x#k", "connection refused"},
		{"http://10.1.2.3/x#k", "private or reserved"},
	} {
		body := note(target.actorID("a"), randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: tt.keyID, Key: key}).SignRequest(req, body, time.Now()))
		})
		assert.Equal(t, http.StatusUnauthorized, code, text)
		assert.NotContains(t, text, tt.secret)
		assert.Equal(t, "relay: cannot get key "+tt.keyID+"\n", text)
		assert.Contains(t, logs.String(), tt.secret, "the details are logged")
	}
}

// Signatures that fail to verify are counted per keyId host: once the
// host's budget is spent, its requests get 429 before anything is
// verified (or fetched); other hosts are not affected.
func TestFailedSignaturesAreLimitedPerHost(t *testing.T) {
	a, b := newFakeActors(t), newFakeActors(t)
	r := newRelayServer(t, relay.Config{
		AllowHTTP: true, AllowPrivate: loopback, SignatureFailureLimit: relay.RateLimit{Rate: 0.001, Burst: 2},
	}, nil)
	forged := func(f *fakeActors, user string) (int, string, http.Header) {
		body := note(f.actorID(user), randomID(), time.Time{})
		return post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: f.keyID(user), Key: otherKey(f.key(user))}).SignRequest(req, body, time.Now()))
		})
	}
	for range 2 {
		code, text, _ := forged(a, "u1")
		require.Equal(t, http.StatusUnauthorized, code, text)
	}
	code, text, h := forged(a, "u2")
	assert.Equal(t, http.StatusTooManyRequests, code, text)
	assert.NotEmpty(t, h.Get("Retry-After"))
	assert.Zero(t, a.getCount("/users/u2"), "nothing fetched once the budget is spent")
	code, text, _ = postBody(t, r, a, "u3", note(a.actorID("u3"), randomID(), time.Time{}))
	assert.Equal(t, http.StatusTooManyRequests, code, "a genuine request from the host waits too: %s", text)
	code, text, _ = postBody(t, r, b, "u1", note(b.actorID("u1"), randomID(), time.Time{}))
	assert.Equal(t, http.StatusForbidden, code, "another host: authenticated, not subscribed: %s", text)
}

// A blocked domain is blocked however its keyIds and actors spell it.
func TestBlockedDomainSpellings(t *testing.T) {
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, BlockedDomains: []string{"Blocked.Example."}}, nil)
	key := testKeys()[0]
	for _, host := range []string{"blocked.example", "BLOCKED.example.", "blocked.example:0443", "blocked.example:", "sub.Blocked.EXAMPLE"} {
		for _, tt := range []struct{ keyID, actor string }{
			{"https://" + host + "/users/u#main-key", "https://ok.example/users/u"},
			{"https://ok.example/users/u#main-key", "https://" + host + "/users/u"},
		} {
			body := note(tt.actor, randomID(), time.Time{})
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
				require.NoError(t, (&httpsig.Signer{KeyID: tt.keyID, Key: key}).SignRequest(req, body, time.Now()))
			})
			assert.Equal(t, http.StatusForbidden, code, "%s %s: %s", tt.keyID, tt.actor, text)
		}
	}
}
