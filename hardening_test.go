package relay_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// --- Reverse proxies that rewrite Host -------------------------------------------------------

// publicRelay runs a relay whose BaseURL is https://relay.example on a
// loopback server, as behind a reverse proxy that does not keep Host: the
// requests it gets carry the loopback address as their Host. It returns
// the relay and the URL its inbox is reached at.
func publicRelay(t *testing.T) (*relay.Relay, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r, url := serveRelay(t, ln, relay.Config{BaseURL: "https://relay.example", AllowHTTP: true, AllowPrivate: loopback})
	return r, url + "/inbox"
}

// A request signed for the relay's public host is accepted when a proxy
// rewrote Host on the way; a request signed for a third host is not.
func TestSignatureBehindHostRewritingProxy(t *testing.T) {
	actors := newFakeActors(t)
	r, upstream := publicRelay(t)
	require.Equal(t, "https://relay.example/inbox", r.InboxURL())

	cavage := func(signedHost string) func(*http.Request) {
		return func(req *http.Request) {
			body := followBody(t, req)
			req.Host = signedHost // what the sender signs
			actors.signCavage(req, "alice", body)
			req.Host = "" // what the relay sees: the proxy's upstream address
		}
	}
	rfc9421 := func(signedHost string) func(*http.Request) {
		return func(req *http.Request) {
			body := followBody(t, req)
			signRFC9421(t, req, body, sig9421{
				components: []string{"@method", "@target-uri", "content-digest"},
				params:     `;created=` + strconv.FormatInt(time.Now().Unix(), 10) + `;keyid="` + actors.keyID("alice") + `"`,
				targetURI:  "https://" + signedHost + "/inbox",
				key:        actors.key("alice"),
			})
		}
	}
	for _, tc := range []struct {
		name string
		sign func(signedHost string) func(*http.Request)
	}{{"draft-cavage", cavage}, {"RFC 9421", rfc9421}} {
		t.Run(tc.name, func(t *testing.T) {
			code, text, _ := post(t, upstream, followDoc(actors.actorID("alice")), tc.sign("relay.example"))
			assert.Equal(t, http.StatusAccepted, code, "signed for the public host: %s", text)
			code, text, _ = post(t, upstream, followDoc(actors.actorID("alice")), tc.sign("other.example"))
			assert.Equal(t, http.StatusUnauthorized, code, "signed for a third host: %s", text)
		})
	}
}

// followBody returns the body of a request built by post.
func followBody(t *testing.T, req *http.Request) []byte {
	t.Helper()
	rc, err := req.GetBody()
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = buf.ReadFrom(rc)
	require.NoError(t, err)
	return buf.Bytes()
}

// SignatureParams.VerifyHost verifies a signature made for another host
// than the request's.
func TestSignatureVerifyHost(t *testing.T) {
	key := testKeys()[0]
	req := httptest.NewRequest(http.MethodPost, "http://upstream:8080/inbox", strings.NewReader("{}"))
	req.Host = "relay.example"
	require.NoError(t, (&httpsig.Signer{KeyID: "https://a.example/k", Key: key}).SignRequest(req, []byte("{}"), time.Now()))
	req.Host = "upstream:8080"
	p, err := httpsig.FromRequest(req)
	require.NoError(t, err)
	require.ErrorIs(t, p.Verify(req, &key.PublicKey), httpsig.ErrBadSignature)
	require.NoError(t, p.VerifyHost(req, &key.PublicKey, "relay.example"))
	require.ErrorIs(t, p.VerifyHost(req, &key.PublicKey, "other.example"), httpsig.ErrBadSignature)
}

// --- Key fetch budget ------------------------------------------------------------------------

// otherKey returns a test key that is not k.
func otherKey(k *rsa.PrivateKey) *rsa.PrivateKey {
	for _, o := range testKeys() {
		if !o.Equal(k) {
			return o
		}
	}
	panic("no other test key")
}

// Forged requests naming the keys of a subscribed host's users cannot spend
// that host's key fetch budget: a genuine request from a new user of the
// host, after them, is accepted.
func TestForgedSignaturesDoNotSpendAnotherHostsKeyBudget(t *testing.T) {
	r := startRelay(t, relay.Config{KeyFetchLimit: relay.RateLimit{Rate: 0.01, Burst: 5}})
	victim := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, victim)
	forger := testKeys()[0] // never one of the fake instance's keys
	for _, u := range []string{"u1", "u2", "u3"} {
		body := createDoc(victim, u, "forged-"+u)
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: victim.ActorID(u) + "#main-key", Key: forger}).SignRequest(req, body, time.Now()))
		})
		assert.Equal(t, http.StatusUnauthorized, code, "forged as %s: %s", u, text)
	}
	code, text := status(t, victim, r, "dave", createDoc(victim, "dave", "genuine"))
	assert.Equal(t, http.StatusAccepted, code, text)
}

// A signature that does not verify with a cached key fetches it again (a
// rotated key), at most once per key per minute, counted from its last
// fetch, the first one included.
func TestKeyRefetchedAtMostOncePerMinute(t *testing.T) {
	actors := newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock}, nil)
	send := func(key *rsa.PrivateKey) (int, string) {
		body := note(actors.actorID("k"), randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
			require.NoError(t, (&httpsig.Signer{KeyID: actors.keyID("k"), Key: key}).SignRequest(req, body, time.Now()))
		})
		return code, text
	}
	genuine, forged := actors.key("k"), otherKey(actors.key("k"))
	code, text := send(genuine)
	require.Equal(t, http.StatusForbidden, code, "authenticated, not subscribed: %s", text)
	require.Equal(t, 1, actors.getCount("/users/k"))
	code, text = send(forged)
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Equal(t, 1, actors.getCount("/users/k"), "fetched less than a minute ago: not again")

	clock.advance(61 * time.Second)
	code, text = send(forged)
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Equal(t, 2, actors.getCount("/users/k"), "refetched once")
	for range 3 {
		code, text = send(forged)
		assert.Equal(t, http.StatusUnauthorized, code, text)
	}
	assert.Equal(t, 2, actors.getCount("/users/k"), "not again within a minute")
	code, text = send(genuine)
	assert.Equal(t, http.StatusForbidden, code, text)
	assert.Equal(t, 2, actors.getCount("/users/k"), "the cached key still verifies")

	clock.advance(61 * time.Second)
	code, text = send(forged)
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Equal(t, 3, actors.getCount("/users/k"), "a minute later, once more")
}

// When failed fetches (keyIds that do not exist) have spent a host's
// budget, a subscribed host's rotated key is still fetched again; a new
// key of that host waits for the budget (the residual risk SECURITY.md
// describes).
func TestKnownSenderKeyRefetchIsNotLimited(t *testing.T) {
	clock := &stepClock{now: time.Now()}
	r := startRelay(t, relay.Config{KeyFetchLimit: relay.RateLimit{Rate: 0.001, Burst: 2}, Clock: clock})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	subscribe(t, r, sender, receiver)
	code, text := status(t, sender, r, "alice", createDoc(sender, "alice", "before"))
	require.Equal(t, http.StatusAccepted, code, text)

	for i := range 2 {
		keyID := sender.URL() + "/nothing/" + strconv.Itoa(i) + "#main-key"
		code, text = status(t, sender, r, "alice", createDoc(sender, "alice", fmt.Sprint("missing-", i)), relaytest.WithKeyID(keyID))
		require.Equal(t, http.StatusUnauthorized, code, "a keyId that does not exist: %s", text)
	}
	code, text = status(t, sender, r, "erin", createDoc(sender, "erin", "new"))
	assert.Equal(t, http.StatusTooManyRequests, code, "a new key waits for the budget: %s", text)

	require.NoError(t, sender.RotateKey("alice"))
	clock.advance(61 * time.Second) // a key fetched within the minute is not fetched again
	code, text = status(t, sender, r, "alice", createDoc(sender, "alice", "after"))
	assert.Equal(t, http.StatusAccepted, code, "a subscribed host's rotated key: %s", text)
}

// --- Refusals last ---------------------------------------------------------------------------

// A refused subscriber that follows again (with or without an Undo first)
// is refused again, even under AcceptAll, until the operator approves it;
// after Remove a new Follow is decided afresh.
func TestRefusalLasts(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{})
	sub := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sub)
	actor := sub.RelayActorID()
	require.NoError(t, r.Refuse(ctx, actor, "spam"))

	waitState := func(want relaytest.SubscriptionState) {
		t.Helper()
		require.Eventually(t, func() bool { return sub.SubscriptionState(r.InboxURL()) == want }, wait, time.Millisecond,
			"instance sees its subscription %v", want)
	}
	refusedAgain := func() {
		t.Helper()
		_, err := sub.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		waitState(relaytest.StateRejected)
		s, err := r.Subscriber(ctx, actor)
		require.NoError(t, err)
		assert.Equal(t, store.StateRejected, s.State)
		assert.Equal(t, "spam", s.Reason)
	}
	refusedAgain()
	require.NoError(t, sub.Unsubscribe(ctx, r.InboxURL()))
	refusedAgain()
	code, text := status(t, sub, r, "alice", createDoc(sub, "alice", "x"))
	assert.Equal(t, http.StatusForbidden, code, text)

	require.NoError(t, r.Approve(ctx, actor))
	waitState(relaytest.StateAccepted)

	require.NoError(t, r.Refuse(ctx, actor, "spam"))
	require.NoError(t, r.Remove(ctx, actor))
	_, err := sub.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	waitState(relaytest.StateAccepted)
	s, err := r.Subscriber(ctx, actor)
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, s.State)
}

// --- Key documents ---------------------------------------------------------------------------

// A document fetched from one URL that claims to be another actor (an
// uploaded file on the actor's server) does not make its key that actor's:
// the actor is fetched, and it does not list the key.
func TestKeyDocumentMustBeTheURLFetched(t *testing.T) {
	actors := newFakeActors(t)
	attacker := otherKey(actors.key("admin"))
	upload := actors.base + "/media/x.json"
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/media/x.json" {
			return false
		}
		pemKey, err := httpsig.MarshalPublicKeyPEM(&attacker.PublicKey)
		require.NoError(t, err)
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(mustJSON(map[string]any{
			"@context": []any{"https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"},
			"id":       actors.actorID("admin"), "type": "Person", "preferredUsername": "admin",
			"inbox":     actors.inboxURL(),
			"publicKey": map[string]any{"id": upload + "#main-key", "owner": actors.actorID("admin"), "publicKeyPem": pemKey},
		}))
		return true
	}
	var logs logBuffer
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Logger: logs.logger()}, nil)
	follow := followDoc(actors.actorID("admin"))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "admin", follow) })
	require.Equal(t, http.StatusAccepted, code, "the real admin subscribes: %s", text)

	body := note(actors.actorID("admin"), "forged", time.Time{})
	code, text, _ = post(t, r.InboxURL(), body, func(req *http.Request) {
		require.NoError(t, (&httpsig.Signer{KeyID: upload + "#main-key", Key: attacker}).SignRequest(req, body, time.Now()))
	})
	assert.Equal(t, http.StatusUnauthorized, code, text)
	assert.Contains(t, logs.String(), "does not list key")
	assert.Equal(t, 2, actors.getCount("/users/admin"), "fetched for the Follow, then as the claimed owner")
}

// --- Who may sign for whom -------------------------------------------------------------------

// Only the actor itself, or the actor a server subscribed with, may sign
// an activity of one of the server's actors: a bot account (Service) may
// not. A bot's boost of another origin's post is relayed; the subscription
// actor's is not (the loop guard).
func TestOnlyTheSubscriptionActorSignsForOthers(t *testing.T) {
	actors := newFakeActors(t)
	actors.getHook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/users/bot" && r.URL.Path != "/users/instance" {
			return false
		}
		var doc map[string]any
		require.NoError(t, json.Unmarshal(actors.actorDoc(strings.TrimPrefix(r.URL.Path, "/users/")), &doc))
		doc["type"] = "Service"
		if r.URL.Path == "/users/instance" {
			doc["type"] = "Application"
		}
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(mustJSON(doc))
		return true
	}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, nil)
	receiver := newInstance(t, relaytest.Misskey)
	subscribe(t, r, receiver)
	follow := followDoc(actors.actorID("instance"))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "instance", follow) })
	require.Equal(t, http.StatusAccepted, code, text)

	send := func(signer string, body []byte) (int, string) {
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, signer, body) })
		return code, text
	}
	code, text = send("bot", note(actors.actorID("alice"), "by-bot", time.Time{}))
	assert.Equal(t, http.StatusUnauthorized, code, "a bot signing alice's post: %s", text)
	code, text = send("instance", note(actors.actorID("alice"), "by-instance", time.Time{}))
	assert.Equal(t, http.StatusAccepted, code, "the subscription actor signing alice's post: %s", text)

	foreign := func(actor, id string) []byte {
		return mustJSON(map[string]any{
			"@context": "https://www.w3.org/ns/activitystreams",
			"id":       actor + "/boosts/" + id, "type": "Announce", "actor": actor,
			"object": receiver.ActorID("carol") + "/statuses/" + id, "to": []string{relay.PublicCollection},
		})
	}
	code, text = send("instance", foreign(actors.actorID("instance"), "relayed"))
	assert.Equal(t, http.StatusAccepted, code, text)
	code, text = send("bot", foreign(actors.actorID("bot"), "boosted"))
	assert.Equal(t, http.StatusAccepted, code, text)
	waitFor(t, receiver, "Announce", actors.actorID("alice")+"/statuses/by-instance")
	waitFor(t, receiver, "Announce", receiver.ActorID("carol")+"/statuses/boosted")
	assert.Zero(t, countFor(receiver, "Announce", receiver.ActorID("carol")+"/statuses/relayed"), "loop guard")
	assert.Zero(t, countFor(receiver, "Announce", actors.actorID("alice")+"/statuses/by-bot"))
}

// --- Key cache bounds ------------------------------------------------------------------------

// Expired keys are dropped from the cache, and when it is full those
// closest to expiry are evicted.
func TestKeyCacheIsSweptAndBounded(t *testing.T) {
	actors := newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock, KeyCacheTTL: time.Minute}, nil)
	relay.SetKeyCacheBounds(r, 4, 64)
	send := func(user string) {
		t.Helper()
		body := note(actors.actorID(user), randomID(), time.Time{})
		code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, user, body) })
		require.Equal(t, http.StatusForbidden, code, "authenticated, not subscribed: %s", text)
	}
	cached := func() []string {
		ids := relay.CachedKeys(r)
		for i, id := range ids {
			ids[i] = strings.TrimSuffix(strings.TrimPrefix(id, actors.base+"/users/"), "#main-key")
		}
		slices.Sort(ids)
		return ids
	}
	for _, u := range []string{"a1", "a2", "a3"} {
		send(u)
	}
	require.Equal(t, []string{"a1", "a2", "a3"}, cached())
	clock.advance(2 * time.Minute) // a1..a3 expire
	send("b1")
	send("b2") // the fifth entry: a sweep
	assert.Equal(t, []string{"b1", "b2"}, cached(), "expired keys are dropped")

	for _, u := range []string{"b3", "b4", "b5"} {
		clock.advance(time.Second)
		send(u)
	}
	assert.Equal(t, []string{"b3", "b4", "b5"}, cached(), "over the bound, the keys closest to expiry go")
}

// At most a fixed number of keys are fetched at once; beyond it the inbox
// answers 503 with Retry-After.
func TestKeyFetchesInFlightAreCapped(t *testing.T) {
	actors := newFakeActors(t)
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	actors.getHook = func(_ http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/users/free" {
			<-gate
		}
		return false
	}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	relay.SetKeyCacheBounds(r, 1000, 2)
	send := func(user string) (int, string, http.Header) {
		body := note(actors.actorID(user), randomID(), time.Time{})
		return post(t, r.InboxURL(), body, func(req *http.Request) { actors.signCavage(req, user, body) })
	}
	codes := make([]int, 2)
	var wg sync.WaitGroup
	for i, u := range []string{"held1", "held2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = send(u)
		}()
	}
	require.Eventually(t, func() bool {
		return actors.getCount("/users/held1") == 1 && actors.getCount("/users/held2") == 1
	}, wait, time.Millisecond, "two fetches in flight")
	code, text, h := send("free")
	assert.Equal(t, http.StatusServiceUnavailable, code, text)
	assert.NotEmpty(t, h.Get("Retry-After"))
	assert.Zero(t, actors.getCount("/users/free"), "not fetched")
	release()
	wg.Wait()
	assert.Equal(t, []int{http.StatusForbidden, http.StatusForbidden}, codes)
	code, text, _ = send("free")
	assert.Equal(t, http.StatusForbidden, code, "authenticated once the fetches are done: %s", text)
}

// --- Id lengths ------------------------------------------------------------------------------

// Ids over 2,048 bytes are refused with 400 before anything is fetched or
// stored.
func TestOverlongIDsAreRefused(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender)
	actor := sender.ActorID("alice")
	long := strings.Repeat("x", 2100)
	doc := func(id, actor, object string) []byte {
		return mustJSON(map[string]any{
			"@context": "https://www.w3.org/ns/activitystreams", "id": id, "type": "Create", "actor": actor,
			"to": []string{relay.PublicCollection}, "object": map[string]any{"id": object, "type": "Note", "attributedTo": actor},
		})
	}
	for _, tc := range []struct {
		name, what string
		body       []byte
		opts       []relaytest.SendOption
	}{
		{"activity id", "id is", doc(actor+"/"+long, actor, actor+"/statuses/1"), nil},
		{"actor", "actor is", doc(actor+"/statuses/2/activity", actor+"/"+long, actor+"/statuses/2"), nil},
		{"object id", "object id is", doc(actor+"/statuses/3/activity", actor, actor+"/"+long), nil},
		{"keyId", "keyId is", createDoc(sender, "alice", "4"), []relaytest.SendOption{relaytest.WithKeyID(actor + "#" + long)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text := status(t, sender, r, "alice", tc.body, tc.opts...)
			assert.Equal(t, http.StatusBadRequest, code, text)
			assert.Contains(t, text, tc.what)
			assert.Contains(t, text, "over the 2048-byte limit")
		})
	}
	code, text := status(t, sender, r, "alice", doc(actor+"/statuses/5/activity", actor, actor+"/statuses/5"))
	assert.Equal(t, http.StatusAccepted, code, "ids under the limit: %s", text)
}

// --- Large posts and Misskey -----------------------------------------------------------------

// An LD-signed post over 64 KiB (Misskey's inbox limit) reaches
// Mastodon-style subscribers as the relay's Announce; a smaller one is
// forwarded verbatim.
func TestLargeSignedPostIsAnnounced(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	misskey := newInstance(t, relaytest.Misskey)
	subscribe(t, r, sender, misskey)

	small, err := sender.Post(ctx, r.InboxURL(), "alice", "short")
	require.NoError(t, err)
	big, err := sender.Post(ctx, r.InboxURL(), "alice", strings.Repeat("long text ", 7000))
	require.NoError(t, err)

	rc := waitFor(t, misskey, "Create", small.ID)
	assert.Equal(t, sender.ActorID("alice"), rc.Actor, "small: verbatim")
	rc = waitFor(t, misskey, "Announce", big.ID)
	assert.Equal(t, r.ActorID(), rc.Actor, "large: the relay's Announce")
	assert.Zero(t, countFor(misskey, "Create", big.ID))
	for _, rej := range misskey.Rejected() {
		assert.NotEqual(t, http.StatusRequestEntityTooLarge, rej.Status, "nothing refused as too large: %s", rej.Reason)
	}
}
