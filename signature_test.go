package relay_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
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

// The relay's inbox and deliveries with RFC 9421 signatures.

// relayPublicKey fetches the relay actor's public key.
func relayPublicKey(t *testing.T, r *relay.Relay) crypto.PublicKey {
	t.Helper()
	resp, err := http.Get(r.ActorID())
	require.NoError(t, err)
	defer resp.Body.Close()
	var doc struct {
		PublicKey struct {
			PublicKeyPem string `json:"publicKeyPem"`
		} `json:"publicKey"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	pub, err := httpsig.ParsePublicKeyPEM(doc.PublicKey.PublicKeyPem)
	require.NoError(t, err)
	return pub
}

var sigInputRE = regexp.MustCompile(`^sig1=\(((?:"[^"]+" ?)+)\)(;.*)$`)

// checkRFC9421Delivery verifies a delivery the relay sent to a fake inbox
// with code written for the test, not with the relay's verifier: it
// rebuilds the signature base from the received request and checks it
// with the relay's public key, and checks the Content-Digest.
func checkRFC9421Delivery(t *testing.T, req *http.Request, body []byte, pub crypto.PublicKey) {
	t.Helper()
	sum := sha256.Sum256(body)
	assert.Equal(t, "sha-256=:"+base64.StdEncoding.EncodeToString(sum[:])+":", req.Header.Get("Content-Digest"))
	input := req.Header.Get("Signature-Input")
	m := sigInputRE.FindStringSubmatch(input)
	require.NotNil(t, m, "Signature-Input %q", input)
	assert.Contains(t, m[2], `;alg="rsa-v1_5-sha256"`)
	assert.Contains(t, m[2], `;keyid="`)
	var lines []string
	for _, c := range strings.Fields(m[1]) {
		c = strings.Trim(c, `"`)
		var v string
		switch c {
		case "@method":
			v = req.Method
		case "@target-uri":
			v = "http://" + req.Host + req.URL.RequestURI()
		default:
			v = req.Header.Get(c)
		}
		lines = append(lines, `"`+c+`": `+v)
	}
	assert.Contains(t, lines, `"@method": POST`)
	lines = append(lines, `"@signature-params": `+strings.TrimPrefix(input, "sig1="))
	sig := strings.TrimSuffix(strings.TrimPrefix(req.Header.Get("Signature"), "sig1=:"), ":")
	raw, err := base64.StdEncoding.DecodeString(sig)
	require.NoError(t, err)
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	assert.NoError(t, rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, h[:], raw), "the relay's RFC 9421 signature verifies")
}

// A subscriber that signs its Follow with RFC 9421 (Mastodon's or
// Fedify's shape) is subscribed, and from then on gets its deliveries
// signed with RFC 9421; other subscribers keep getting draft-cavage.
func TestInboxAcceptsRFC9421AndLearnsIt(t *testing.T) {
	for _, shape := range []struct {
		name       string
		components []string
		params     func(keyID string) string
	}{
		{"Mastodon", []string{"@method", "@target-uri", "content-digest"}, func(keyID string) string {
			return fmt.Sprintf(`;created=%d;keyid="%s"`, time.Now().Unix(), keyID)
		}},
		{"Fedify", []string{"@method", "@target-uri", "@authority", "host", "date", "content-digest"}, func(keyID string) string {
			return fmt.Sprintf(`;alg="rsa-v1_5-sha256";keyid="%s";created=%d;expires=%d`, keyID, time.Now().Unix(), time.Now().Unix()+300)
		}},
	} {
		t.Run(shape.name, func(t *testing.T) {
			r := startRelay(t, relay.Config{})
			pub := relayPublicKey(t, r)
			actors := newFakeActors(t)
			masto := newInstance(t, relaytest.Mastodon)
			subscribe(t, r, masto)

			actor := actors.actorID("relay")
			follow := followDoc(actor)
			code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) {
				signRFC9421(t, req, follow, sig9421{components: shape.components, params: shape.params(actors.keyID("relay")), key: actors.key("relay")})
			})
			require.Equal(t, http.StatusAccepted, code, text)
			s, err := r.Subscriber(context.Background(), actor)
			require.NoError(t, err)
			assert.Equal(t, store.StateAccepted, s.State)
			assert.Equal(t, store.SignatureRFC9421, s.SignatureScheme, "learnt from the subscriber's own signature")

			n, err := masto.Post(context.Background(), r.InboxURL(), "alice", "hello")
			require.NoError(t, err)
			var reqs []*http.Request
			var bodies [][]byte
			require.Eventually(t, func() bool {
				reqs, bodies = actors.received()
				return len(reqs) >= 2 // the Accept and the post, in any order
			}, wait, 5*time.Millisecond)
			gotPost := false
			for i, req := range reqs {
				assert.Empty(t, req.Header.Get("Digest"), "no draft-cavage Digest")
				checkRFC9421Delivery(t, req, bodies[i], pub)
				gotPost = gotPost || bytes.Contains(bodies[i], []byte(n.ID))
			}
			assert.True(t, gotPost, "the post was delivered")
			// Mastodon-flavoured subscribers, which check draft-cavage, got
			// everything and refused nothing.
			assert.Empty(t, masto.Rejected())
		})
	}
}

// The operator can switch a subscriber to RFC 9421.
func TestConfiguredRFC9421Subscriber(t *testing.T) {
	r := startRelay(t, relay.Config{})
	pub := relayPublicKey(t, r)
	actors := newFakeActors(t)
	actor := actors.actorID("relay")
	follow := followDoc(actor)
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "relay", follow) })
	require.Equal(t, http.StatusAccepted, code, text)
	var reqs []*http.Request
	require.Eventually(t, func() bool { reqs, _ = actors.received(); return len(reqs) == 1 }, wait, 5*time.Millisecond)
	assert.NotEmpty(t, reqs[0].Header.Get("Digest"), "draft-cavage by default")
	assert.Empty(t, reqs[0].Header.Get("Signature-Input"))
	s, err := r.Subscriber(context.Background(), actor)
	require.NoError(t, err)
	assert.Empty(t, s.SignatureScheme, "a draft-cavage signer teaches nothing")

	_, err = r.UpdateSubscriber(context.Background(), actor, func(s *store.Subscriber) error {
		s.SignatureScheme = store.SignatureRFC9421
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, r.Approve(context.Background(), actor)) // sends the Accept again
	var bodies [][]byte
	require.Eventually(t, func() bool { reqs, bodies = actors.received(); return len(reqs) == 2 }, wait, 5*time.Millisecond)
	checkRFC9421Delivery(t, reqs[1], bodies[1], pub)
}

// The inbox refuses RFC 9421 requests that break the rules, with 401.
func TestInboxRefusesBadRFC9421(t *testing.T) {
	r := startRelay(t, relay.Config{})
	actors := newFakeActors(t)
	keyID := actors.keyID("a")
	ok := []string{"@method", "@target-uri", "content-digest"}
	params := func(created int64) string { return fmt.Sprintf(`;created=%d;keyid="%s"`, created, keyID) }
	now := time.Now().Unix()
	for _, tt := range []struct {
		name       string
		components []string
		params     string
		targetURI  string
		edit       func(*http.Request)
	}{
		{"content-digest not covered", []string{"@method", "@target-uri"}, params(now), "", nil},
		{"digest of another body", ok, params(now), "", func(r *http.Request) {
			r.Header.Set("Content-Digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")
		}},
		{"signed for another inbox", ok, params(now), r.InboxURL() + "/other", nil},
		{"expired", ok, params(now-60) + fmt.Sprintf(";expires=%d", now-1), "", nil},
		{"too old", ok, params(now - 7200), "", nil},
		{"rsa-pss", ok, params(now) + `;alg="rsa-pss-sha512"`, "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := followDoc(actors.actorID("a"))
			code, text, _ := post(t, r.InboxURL(), body, func(req *http.Request) {
				signRFC9421(t, req, body, sig9421{components: tt.components, params: tt.params, targetURI: tt.targetURI, key: actors.key("a")})
				if tt.edit != nil {
					tt.edit(req)
				}
			})
			assert.Equal(t, http.StatusUnauthorized, code, text)
		})
	}
	subs, err := r.Subscribers(context.Background(), store.SubscriberFilter{})
	require.NoError(t, err)
	assert.Empty(t, subs)
}

// A subscriber that followed with draft-cavage and later posts with an
// RFC 9421 signature is switched to RFC 9421 too.
func TestRFC9421LearntFromAPost(t *testing.T) {
	r := startRelay(t, relay.Config{})
	actors := newFakeActors(t)
	follow := followDoc(actors.actorID("relay"))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "relay", follow) })
	require.Equal(t, http.StatusAccepted, code, text)
	s, err := r.Subscriber(context.Background(), actors.actorID("relay"))
	require.NoError(t, err)
	require.Empty(t, s.SignatureScheme)

	body := note(actors.actorID("alice"), "1", time.Now())
	code, text, _ = post(t, r.InboxURL(), body, func(req *http.Request) {
		signRFC9421(t, req, body, sig9421{
			components: []string{"@method", "@target-uri", "content-digest"},
			params:     fmt.Sprintf(`;created=%d;keyid="%s"`, time.Now().Unix(), actors.keyID("alice")),
			key:        actors.key("alice"),
		})
	})
	require.Equal(t, http.StatusAccepted, code, text)
	s, err = r.Subscriber(context.Background(), actors.actorID("relay"))
	require.NoError(t, err)
	assert.Equal(t, store.SignatureRFC9421, s.SignatureScheme)
}

// countingStore counts GetSubscriber calls by actor.
type countingStore struct {
	store.Store
	mu   sync.Mutex
	gets map[string]int
}

func (c *countingStore) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	c.mu.Lock()
	c.gets[actorID]++
	c.mu.Unlock()
	return c.Store.GetSubscriber(ctx, actorID)
}

func (c *countingStore) count(actorID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[actorID]
}

// Signing a delivery does not read the subscriber from the store each
// time: how it takes signatures is read at most once a minute.
func TestSignatureSchemeReadOncePerMinute(t *testing.T) {
	cs := &countingStore{gets: map[string]int{}}
	e := newMemEnvWithStore(t, relay.Config{}, func(s *spyStore) store.Store { cs.Store = s; return cs })
	in := e.subscribed("a.test", "b.test")
	receiver := in[1].RelayActorID()
	first := e.post(in[0], "first")
	waitFor(t, in[1], "Create", first.ID)
	e.settled()
	before := cs.count(receiver)
	for k := range 5 {
		n := e.post(in[0], fmt.Sprintf("post %d", k))
		waitFor(t, in[1], "Create", n.ID)
	}
	e.settled()
	assert.Zero(t, cs.count(receiver)-before, "five deliveries signed without reading the subscriber")
	e.advance(2 * time.Minute)
	n := e.post(in[0], "later")
	waitFor(t, in[1], "Create", n.ID)
	e.settled()
	assert.Equal(t, 1, cs.count(receiver)-before, "read again after a minute")
}

type operatorCtxKey struct{}

// slowReadStore answers one GetSubscriber of actor, made while armed and
// not by the operator, with what it read before it entered: a read whose
// answer is on its way while the operator changes the subscriber.
type slowReadStore struct {
	store.Store
	actor string

	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
}

func (s *slowReadStore) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	sub, err := s.Store.GetSubscriber(ctx, actorID)
	s.mu.Lock()
	gate := s.armed && actorID == s.actor && ctx.Value(operatorCtxKey{}) == nil
	if gate {
		s.armed = false
	}
	s.mu.Unlock()
	if gate {
		close(s.entered)
		<-s.release
	}
	return sub, err
}

// A scheme set through Relay.UpdateSubscriber while a delivery's read of
// the subscriber is under way takes effect at once all the same: the
// read's older answer is not kept, and the next delivery (a post relayed
// after the change returned) is signed with RFC 9421.
func TestSchemeSetDuringReadTakesEffect(t *testing.T) {
	actors := newFakeActors(t)
	actor := actors.actorID("relay")
	st := &slowReadStore{Store: newMemStore(t), actor: actor, entered: make(chan struct{}), release: make(chan struct{})}
	r := startRelay(t, relay.Config{Store: st})
	pub := relayPublicKey(t, r)
	masto := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, masto)
	op := context.WithValue(context.Background(), operatorCtxKey{}, true)
	follow := followDoc(actor)
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { actors.signCavage(req, "relay", follow) })
	require.Equal(t, http.StatusAccepted, code, text)
	var reqs []*http.Request
	var bodies [][]byte
	received := func(n int) {
		require.Eventually(t, func() bool { reqs, bodies = actors.received(); return len(reqs) == n }, wait, 5*time.Millisecond)
	}
	received(1)
	_, err := r.UpdateSubscriber(op, actor, func(*store.Subscriber) error { return nil }) // empties the cache
	require.NoError(t, err)

	st.mu.Lock()
	st.armed = true
	st.mu.Unlock()
	require.NoError(t, r.Approve(op, actor)) // the Accept again: its signing reads the subscriber
	<-st.entered
	_, err = r.UpdateSubscriber(op, actor, func(s *store.Subscriber) error {
		s.SignatureScheme = store.SignatureRFC9421
		return nil
	})
	require.NoError(t, err)
	close(st.release)
	received(2) // read before the change: either scheme is right

	_, err = masto.Post(op, r.InboxURL(), "alice", "hello") // queued after the change returned
	require.NoError(t, err)
	received(3)
	checkRFC9421Delivery(t, reqs[2], bodies[2], pub)
}
