package relay_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// RFC 9421 Appendix B.2.6: the signature base of the test request, and the
// Ed25519 signature over it (deterministic), with test-key-ed25519 (B.1.4).
func TestRFC9421AppendixB26(t *testing.T) {
	input := `sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`
	signature := `sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:`
	m, err := relay.ParseMessageSignature(input, signature)
	require.NoError(t, err)
	assert.Equal(t, "sig-b26", m.Label)
	assert.Equal(t, "test-key-ed25519", m.KeyID)
	assert.EqualValues(t, 1618884473, m.Created)
	assert.Equal(t, []string{"date", "@method", "@path", "@authority", "content-type", "content-length"}, m.Components)

	body := `{"hello": "world"}`
	r := httptest.NewRequest(http.MethodPost, "https://example.com/foo?param=Value&Pet=dog", strings.NewReader(body))
	r.Header.Set("Date", "Tue, 20 Apr 2021 02:07:55 GMT")
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Content-Digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:")
	r.Header.Set("Content-Length", "18")
	base, err := m.SignatureBase(r)
	require.NoError(t, err)
	want := `"date": Tue, 20 Apr 2021 02:07:55 GMT
"@method": POST
"@path": /foo
"@authority": example.com
"content-type": application/json
"content-length": 18
"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`
	assert.Equal(t, want, base)
	pub, err := base64.RawURLEncoding.DecodeString("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs")
	require.NoError(t, err)
	assert.True(t, ed25519.Verify(pub, []byte(base), m.Signature), "the RFC's signature verifies over our base")

	// The relay verifies RSA only.
	assert.ErrorIs(t, m.Verify(r, ed25519.PublicKey(pub)), relay.ErrBadSignature)
	// The RFC's sha-512 Content-Digest of the body is accepted.
	m.Components = append(m.Components, "@target-uri", "content-digest")
	assert.NoError(t, m.Check(r, []byte(body), relay.VerifyOptions{Now: time.Unix(1618884473, 0)}))
}

// The relay's signer, verified by the relay's verifier on the server side
// of a real HTTP request; its Content-Digest is RFC 9530's.
func TestRFC9421RoundTrip(t *testing.T) {
	key := testKeys()[0]
	var got *http.Request
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotBody, _ = io.ReadAll(r.Body)
		got = r
	}))
	defer srv.Close()
	for _, tt := range []struct {
		method string
		body   []byte
	}{{http.MethodPost, []byte(`{"hello": "world"}`)}, {http.MethodGet, nil}} {
		t.Run(tt.method, func(t *testing.T) {
			var rd io.Reader
			if tt.body != nil {
				rd = bytes.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, srv.URL+"/users/a/inbox?page=1", rd)
			require.NoError(t, err)
			if tt.body != nil {
				req.Header.Set("Content-Type", "application/activity+json")
			}
			s := relay.Signer{KeyID: "https://relay.example/actor#main-key", Key: key}
			require.NoError(t, s.SignRequestRFC9421(req, tt.body, time.Now()))
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()

			if tt.body != nil {
				assert.Equal(t, "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", got.Header.Get("Content-Digest"), "RFC 9530 value")
			}
			assert.Empty(t, got.Header.Get("Digest"))
			m, err := relay.MessageSignatureFromRequest(got)
			require.NoError(t, err)
			assert.Equal(t, s.KeyID, m.KeyID)
			assert.Equal(t, relay.AlgRSAv15SHA256, m.Alg)
			require.NoError(t, m.Check(got, gotBody, relay.VerifyOptions{}))
			require.NoError(t, m.Verify(got, &key.PublicKey))
			assert.ErrorIs(t, m.Verify(got, &testKeys()[1].PublicKey), relay.ErrBadSignature, "another key")
		})
	}
	_, err := relay.MessageSignatureFromRequest(httptest.NewRequest("GET", "/", nil))
	assert.ErrorIs(t, err, relay.ErrNoSignature)
}

// Each rule of the RFC 9421 profile, violated.
func TestRFC9421Rules(t *testing.T) {
	key := testKeys()[0]
	body := []byte(`{"type":"Create","actor":"https://remote.example/users/a"}`)
	now := time.Now()
	created := fmt.Sprint(now.Unix())
	const keyID = `;keyid="https://remote.example/users/a#main-key"`
	mastodon := []string{"@method", "@target-uri", "content-digest"}
	fedify := []string{"@method", "@target-uri", "@authority", "host", "date", "content-digest"}

	type tc struct {
		name       string
		components []string
		params     string
		pre        func(r *http.Request) // before signing
		edit       func(r *http.Request) // after signing
		body       []byte                // the body received, default body
		key        *rsa.PrivateKey
		method     string
		targetURI  string
		url        string // the request URL, default https://relay.example/inbox
		want       string // "" = accepted
	}
	tests := []tc{
		{name: "Mastodon shape (no alg)", components: mastodon, params: ";created=" + created + keyID},
		{name: "Fedify shape", components: fedify, params: `;alg="rsa-v1_5-sha256"` + keyID + ";created=" + created + ";expires=" + fmt.Sprint(now.Unix()+300)},
		{name: "keyid with quotes and backslashes", components: mastodon, params: ";created=" + created + `;keyid="https://remote.example/a\"b\\c"`},
		{name: "target URI with a query", components: mastodon, params: ";created=" + created + keyID, url: "https://relay.example/inbox?a=1&b=%2F"},
		{name: "query changed", components: mastodon, params: ";created=" + created + keyID, url: "https://relay.example/inbox?a=1",
			edit: func(r *http.Request) { r.URL.RawQuery = "a=2" }, want: "does not match"},
		{name: "unknown parameters kept", components: mastodon, params: ";created=" + created + keyID + `;nonce="abc";tag="fedi";x-y`},
		{name: "sha-512 Content-Digest", components: mastodon, params: ";created=" + created + keyID, pre: func(r *http.Request) {
			sum := sha512.Sum512(body)
			r.Header.Set("Content-Digest", "sha-512=:"+base64.StdEncoding.EncodeToString(sum[:])+":")
		}},
		{name: "Content-Digest changed after signing", components: mastodon, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			sum := sha512.Sum512(body)
			r.Header.Set("Content-Digest", "sha-512=:"+base64.StdEncoding.EncodeToString(sum[:])+":")
		}, want: "does not match"},
		{name: "two signatures", components: mastodon, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			r.Header.Add("Signature-Input", `sig2=("@method");created=1;keyid="k"`)
			r.Header.Add("Signature", `sig2=:AAAA:`)
		}, want: "exactly one"},
		{name: "labels differ", components: mastodon, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			r.Header.Set("Signature", strings.Replace(r.Header.Get("Signature"), "sig1=", "sig2=", 1))
		}, want: "does not match Signature label"},
		{name: "signature not a byte sequence", components: mastodon, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			r.Header.Set("Signature", `sig1="abc"`)
		}, want: "not a byte sequence"},
		{name: "no keyid", components: mastodon, params: ";created=" + created, want: "missing keyid"},
		{name: "no created", components: mastodon, params: keyID, want: "missing created"},
		{name: "created not an integer", components: mastodon, params: `;created="` + created + `"` + keyID, want: "not a positive integer"},
		{name: "created a decimal", components: mastodon, params: ";created=" + created + ".5" + keyID, want: "malformed Signature-Input"},
		{name: "@method not covered", components: []string{"@target-uri", "content-digest"}, params: ";created=" + created + keyID, want: "@method is not covered"},
		{name: "@target-uri not covered", components: []string{"@method", "@path", "@authority", "content-digest"}, params: ";created=" + created + keyID, want: "@target-uri is not covered"},
		{name: "content-digest not covered on POST", components: []string{"@method", "@target-uri"}, params: ";created=" + created + keyID, want: "content-digest is not covered"},
		{name: "body changed", components: mastodon, params: ";created=" + created + keyID, body: []byte(`{"type":"Delete"}`), want: "content digest mismatch"},
		{name: "Content-Digest missing", components: []string{"@method", "@target-uri"}, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			r.Header.Del("Content-Digest")
		}, want: "content-digest is not covered"},
		{name: "only unknown digest algorithms", components: mastodon, params: ";created=" + created + keyID, edit: func(r *http.Request) {
			r.Header.Set("Content-Digest", "md5=:AAAA:")
		}, want: "no sha-256 or sha-512"},
		{name: "alg rsa-pss-sha512", components: mastodon, params: ";created=" + created + keyID + `;alg="rsa-pss-sha512"`, want: "unsupported algorithm"},
		{name: "alg ed25519", components: mastodon, params: ";created=" + created + keyID + `;alg="ed25519"`, want: "unsupported algorithm"},
		{name: "created 2 hours ago", components: mastodon, params: ";created=" + fmt.Sprint(now.Add(-2*time.Hour).Unix()) + keyID, want: "created too old"},
		{name: "created 10 minutes ahead", components: mastodon, params: ";created=" + fmt.Sprint(now.Add(10*time.Minute).Unix()) + keyID, want: "created in the future"},
		{name: "expired", components: mastodon, params: ";created=" + fmt.Sprint(now.Unix()-60) + ";expires=" + fmt.Sprint(now.Unix()-1) + keyID, want: "signature expired"},
		{name: "another key", components: mastodon, params: ";created=" + created + keyID, key: testKeys()[1], want: "does not match"},
		{name: "signed for another URL", components: mastodon, params: ";created=" + created + keyID, targetURI: "https://relay.example/other", want: "does not match"},
		{name: "method changed", components: mastodon, params: ";created=" + created + keyID, method: http.MethodPut, want: "does not match"},
		{name: "component parameters", components: []string{"@method", "@target-uri", `content-digest";sf;x="`}, params: ";created=" + created + keyID, want: "component parameters"},
		{name: "@status", components: []string{"@method", "@target-uri", "content-digest", "@status"}, params: ";created=" + created + keyID, want: "unsupported derived component"},
		{name: "component twice", components: []string{"@method", "@target-uri", "content-digest", "@method"}, params: ";created=" + created + keyID, want: "covered twice"},
		{name: "upper-case field name", components: []string{"@method", "@target-uri", "Content-Digest"}, params: ";created=" + created + keyID, want: "invalid component name"},
		{name: "covered header missing", components: []string{"@method", "@target-uri", "content-digest", "x-missing"}, params: ";created=" + created + keyID, want: "missing from the request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := http.MethodPost
			if tt.method != "" {
				method = tt.method
			}
			target := "https://relay.example/inbox"
			if tt.url != "" {
				target = tt.url
			}
			client, err := http.NewRequest(method, target, bytes.NewReader(body))
			require.NoError(t, err)
			client.Header.Set("Content-Type", "application/activity+json")
			k := key
			if tt.key != nil {
				k = tt.key
			}
			if tt.pre != nil {
				tt.pre(client)
			}
			signRFC9421(t, client, body, sig9421{components: tt.components, params: tt.params, targetURI: tt.targetURI, key: key})
			received := body
			if tt.body != nil {
				received = tt.body
			}
			r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(received))
			r.Header = client.Header.Clone()
			if tt.edit != nil {
				tt.edit(r)
			}
			m, err := relay.MessageSignatureFromRequest(r)
			if err == nil {
				err = m.Check(r, received, relay.VerifyOptions{Now: now})
			}
			if err == nil {
				err = m.Verify(r, &k.PublicKey)
			}
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, relay.ErrBadSignature)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// --- the relay's inbox and deliveries ----------------------------------------------------------

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
	pub, err := relay.ParsePublicKeyPEM(doc.PublicKey.PublicKeyPem)
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
