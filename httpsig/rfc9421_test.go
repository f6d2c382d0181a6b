package httpsig_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/httpsig"
)

// RFC 9421 Appendix B.2.6: the signature base of the test request, and the
// Ed25519 signature over it (deterministic), with test-key-ed25519 (B.1.4).
func TestRFC9421AppendixB26(t *testing.T) {
	input := `sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`
	signature := `sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:`
	m, err := httpsig.ParseMessageSignature(input, signature)
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
	assert.ErrorIs(t, m.Verify(r, ed25519.PublicKey(pub)), httpsig.ErrBadSignature)
	// The RFC's sha-512 Content-Digest of the body is accepted.
	m.Components = append(m.Components, "@target-uri", "content-digest")
	assert.NoError(t, m.Check(r, []byte(body), httpsig.VerifyOptions{Now: time.Unix(1618884473, 0)}))
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
			s := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: key}
			require.NoError(t, s.SignRequestRFC9421(req, tt.body, time.Now()))
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()

			if tt.body != nil {
				assert.Equal(t, "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", got.Header.Get("Content-Digest"), "RFC 9530 value")
			}
			assert.Empty(t, got.Header.Get("Digest"))
			m, err := httpsig.MessageSignatureFromRequest(got)
			require.NoError(t, err)
			assert.Equal(t, s.KeyID, m.KeyID)
			assert.Equal(t, httpsig.AlgRSAv15SHA256, m.Alg)
			require.NoError(t, m.Check(got, gotBody, httpsig.VerifyOptions{}))
			require.NoError(t, m.Verify(got, &key.PublicKey))
			assert.ErrorIs(t, m.Verify(got, &testKeys()[1].PublicKey), httpsig.ErrBadSignature, "another key")
		})
	}
	_, err := httpsig.MessageSignatureFromRequest(httptest.NewRequest("GET", "/", nil))
	assert.ErrorIs(t, err, httpsig.ErrNoSignature)
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
			m, err := httpsig.MessageSignatureFromRequest(r)
			if err == nil {
				err = m.Check(r, received, httpsig.VerifyOptions{Now: now})
			}
			if err == nil {
				err = m.Verify(r, &k.PublicKey)
			}
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, httpsig.ErrBadSignature)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
