package httpsig_test

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/httpsig"
)

// Test keys and the request of draft-cavage-http-signatures-12, Appendix C
// (unchanged since -09). The signatures below were cross-checked by
// recomputing them with this key: RSASSA-PKCS1-v1_5 is deterministic.
const (
	sigAppendixPrivPEM = `-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQDCFENGw33yGihy92pDjZQhl0C36rPJj+CvfSC8+q28hxA161QF
NUd13wuCTUcq0Qd2qsBe/2hFyc2DCJJg0h1L78+6Z4UMR7EOcpfdUE9Hf3m/hs+F
UR45uBJeDK1HSFHD8bHKD6kv8FPGfJTotc+2xjJwoYi+1hqp1fIekaxsyQIDAQAB
AoGBAJR8ZkCUvx5kzv+utdl7T5MnordT1TvoXXJGXK7ZZ+UuvMNUCdN2QPc4sBiA
QWvLw1cSKt5DsKZ8UETpYPy8pPYnnDEz2dDYiaew9+xEpubyeW2oH4Zx71wqBtOK
kqwrXa/pzdpiucRRjk6vE6YY7EBBs/g7uanVpGibOVAEsqH1AkEA7DkjVH28WDUg
f1nqvfn2Kj6CT7nIcE3jGJsZZ7zlZmBmHFDONMLUrXR/Zm3pR5m0tCmBqa5RK95u
412jt1dPIwJBANJT3v8pnkth48bQo/fKel6uEYyboRtA5/uHuHkZ6FQF7OUkGogc
mSJluOdc5t6hI1VsLn0QZEjQZMEOWr+wKSMCQQCC4kXJEsHAve77oP6HtG/IiEn7
kpyUXRNvFsDE0czpJJBvL/aRFUJxuRK91jhjC68sA7NsKMGg5OXb5I5Jj36xAkEA
gIT7aFOYBFwGgQAQkWNKLvySgKbAZRTeLBacpHMuQdl1DfdntvAyqpAZ0lY0RKmW
G6aFKaqQfOXKCyWoUiVknQJAXrlgySFci/2ueKlIE1QqIiLSZ8V8OlpFLRnb1pzI
7U1yQXnTAEFYM560yJlzUpOb1V4cScGd365tiSMvxLOvTA==
-----END RSA PRIVATE KEY-----
`
	sigAppendixPubPEM = `-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDCFENGw33yGihy92pDjZQhl0C3
6rPJj+CvfSC8+q28hxA161QFNUd13wuCTUcq0Qd2qsBe/2hFyc2DCJJg0h1L78+6
Z4UMR7EOcpfdUE9Hf3m/hs+FUR45uBJeDK1HSFHD8bHKD6kv8FPGfJTotc+2xjJw
oYi+1hqp1fIekaxsyQIDAQAB
-----END PUBLIC KEY-----
`
	sigAppendixRequest = "POST /foo?param=value&pet=dog HTTP/1.1\r\n" +
		"Host: example.com\r\n" +
		"Date: Sun, 05 Jan 2014 21:31:40 GMT\r\n" +
		"Content-Type: application/json\r\n" +
		"Digest: SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\r\n" +
		"Content-Length: 18\r\n" +
		"\r\n" +
		`{"hello": "world"}`
	sigAppendixDefaultSig = "SjWJWbWN7i0wzBvtPl8rbASWz5xQW6mcJmn+ibttBqtifLN7Sazz6m79cNfwwb8DMJ5cou1s7uEGKKCs+FLEEaDV5lp7q25WqS+lavg7T8hc0GppauB6hbgEKTwblDHYGEtbGmtdHgVCk9SuS13F0hZ8FD0k/5OxEPXe5WozsbM="
	sigAppendixBasicSig   = "qdx+H7PHHDZgy4y/Ahn9Tny9V3GP6YgBPyUXMmoxWtLbHpUnXS2mg2+SbrQDMCJypxBLSPQR2aAjn7ndmw2iicw3HMbe8VfEdKFYRqzic+efkb3nndiv/x1xSHDJWeSWkx3ButlYSuBskLu6kd9Fswtemr3lgdDEmn04swr2Os0="
	sigAppendixAllSig     = "vSdrb+dS3EceC9bcwHSo4MlyKS59iFIrhgYkz8+oVLEEzmYZZvRs8rgOp+63LEM3v+MFHB32NfpB2bEKBIvB1q52LaEUHFv120V01IL+TAD48XaERZFukWgHoBTLMhYS2Gb51gWxpeIq8knRmPnYePbF5MOkR0Zkly4zKH7s1dE="
)

var (
	sigNow   = time.Date(2025, 6, 1, 12, 0, 6, 0, time.UTC) // the Date of fixture 15
	sigOpts  = httpsig.VerifyOptions{Now: sigNow}
	sigKey   = sync.OnceValue(func() *rsa.PrivateKey { return sigMustKey() })
	sigOther = sync.OnceValue(func() *rsa.PrivateKey { return sigMustKey() })
)

func sigMustKey() *rsa.PrivateKey {
	k, err := httpsig.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}

func sigAppendixKey(t testing.TB) *rsa.PrivateKey {
	k, err := httpsig.ParsePrivateKeyPEM([]byte(sigAppendixPrivPEM))
	require.NoError(t, err)
	return k
}

// sigReadRequest parses raw wire bytes the way a Go server sees them and
// returns the request with its body read.
func sigReadRequest(t testing.TB, raw string) (*http.Request, []byte) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	require.NoError(t, err)
	body, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	return r, body
}

// sigServerRequest builds a request as received by a Go server.
func sigServerRequest(t testing.TB, method, target, host string, body []byte, hdrs ...string) *http.Request {
	require.Zero(t, len(hdrs)%2)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	for i := 0; i < len(hdrs); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdrs[i], hdrs[i+1])
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	r, got := sigReadRequest(t, b.String())
	require.Equal(t, string(body), string(got))
	return r
}

// sigWire sends a client request through the HTTP/1.1 wire format and returns
// the server's view of it.
func sigWire(t testing.TB, req *http.Request) (*http.Request, []byte) {
	var buf bytes.Buffer
	require.NoError(t, req.Write(&buf))
	return sigReadRequest(t, buf.String())
}

func sigDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return "SHA-256=" + base64.StdEncoding.EncodeToString(sum[:])
}

func sigEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
}

// sigFormat renders p as a Signature header value.
func sigFormat(p *httpsig.SignatureParams, withHeaders bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `keyId="%s"`, sigEscape(p.KeyID))
	if p.Algorithm != "" {
		fmt.Fprintf(&b, `,algorithm="%s"`, sigEscape(p.Algorithm))
	}
	if p.Created != 0 {
		fmt.Fprintf(&b, `,created=%d`, p.Created)
	}
	if p.Expires != 0 {
		fmt.Fprintf(&b, `,expires=%d`, p.Expires)
	}
	if withHeaders {
		fmt.Fprintf(&b, `,headers="%s"`, sigEscape(strings.Join(p.Headers, " ")))
	}
	fmt.Fprintf(&b, `,signature="%s"`, base64.StdEncoding.EncodeToString(p.Signature))
	return b.String()
}

// sigSign signs r (server view) the way a remote implementation would, over
// p.Headers, and sets its Signature header.
func sigSign(t testing.TB, r *http.Request, key crypto.Signer, p *httpsig.SignatureParams, withQuery bool) {
	msg, err := p.SigningString(r, withQuery)
	require.NoError(t, err)
	switch k := key.(type) {
	case *rsa.PrivateKey:
		h := crypto.SHA256
		if p.Algorithm == "rsa-sha512" {
			h = crypto.SHA512
		}
		hh := h.New()
		hh.Write([]byte(msg))
		p.Signature, err = rsa.SignPKCS1v15(nil, k, h, hh.Sum(nil))
		require.NoError(t, err)
	case ed25519.PrivateKey:
		p.Signature = ed25519.Sign(k, []byte(msg))
	default:
		t.Fatalf("unsupported key %T", key)
	}
	r.Header.Set("Signature", sigFormat(p, true))
}

// sigVerify runs the full server-side pipeline.
func sigVerify(r *http.Request, body []byte, pub crypto.PublicKey, opts httpsig.VerifyOptions) error {
	p, err := httpsig.FromRequest(r)
	if err != nil {
		return err
	}
	if err := p.Check(r, body, opts); err != nil {
		return err
	}
	return p.Verify(r, pub)
}

func TestAppendixCVectors(t *testing.T) {
	key := sigAppendixKey(t)
	pub, err := httpsig.ParsePublicKeyPEM(sigAppendixPubPEM)
	require.NoError(t, err)
	require.Equal(t, &key.PublicKey, pub, "published public key must match the private key")
	window := httpsig.VerifyOptions{Now: time.Date(2014, 1, 5, 21, 32, 0, 0, time.UTC)}

	tests := []struct {
		name, header, signing string
		headers               []string
		checkErr              string // Check failure expected by this package's policy, "" if none
	}{{
		name:     "C.1 Default Test",
		header:   `keyId="Test",algorithm="rsa-sha256",signature="` + sigAppendixDefaultSig + `"`,
		headers:  []string{"date"},
		signing:  "date: Sun, 05 Jan 2014 21:31:40 GMT",
		checkErr: "neither (request-target) nor digest is signed",
	}, {
		name:     "C.2 Basic Test",
		header:   `keyId="Test",algorithm="rsa-sha256",headers="(request-target) host date",signature="` + sigAppendixBasicSig + `"`,
		headers:  []string{"(request-target)", "host", "date"},
		signing:  "(request-target): post /foo?param=value&pet=dog\nhost: example.com\ndate: Sun, 05 Jan 2014 21:31:40 GMT",
		checkErr: "digest is not signed",
	}, {
		name:    "C.3 All Headers Test",
		header:  `keyId="Test",algorithm="rsa-sha256",headers="(request-target) host date content-type digest content-length",signature="` + sigAppendixAllSig + `"`,
		headers: []string{"(request-target)", "host", "date", "content-type", "digest", "content-length"},
		signing: "(request-target): post /foo?param=value&pet=dog\nhost: example.com\n" +
			"date: Sun, 05 Jan 2014 21:31:40 GMT\ncontent-type: application/json\n" +
			"digest: SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\ncontent-length: 18",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, body := sigReadRequest(t, sigAppendixRequest)
			r.Header.Set("Signature", tt.header)
			p, err := httpsig.FromRequest(r)
			require.NoError(t, err)
			assert.Equal(t, "Test", p.KeyID)
			assert.Equal(t, "rsa-sha256", p.Algorithm)
			assert.Equal(t, tt.headers, p.Headers)

			s, err := p.SigningString(r, true)
			require.NoError(t, err)
			assert.Equal(t, tt.signing, s)
			assert.NoError(t, p.Verify(r, pub))
			assert.NoError(t, p.Verify(r, &key.PublicKey))

			err = p.Check(r, body, window)
			if tt.checkErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, httpsig.ErrBadSignature)
				assert.ErrorContains(t, err, tt.checkErr)
			}
		})
	}

	// draft-12 prints C.3 with created/expires and "(created) (expires)" added
	// to headers but keeps the -10 signature, which covers neither: it must
	// not verify once the pseudo-headers are in the signing string.
	t.Run("C.3 as printed in draft-12", func(t *testing.T) {
		r, _ := sigReadRequest(t, sigAppendixRequest)
		p, err := httpsig.ParseSignature(`keyId="Test",algorithm="rsa-sha256", ` +
			`created=1402170695, expires=1402170699, ` +
			`headers="(request-target) (created) (expires) host date content-type digest content-length", ` +
			`signature="` + sigAppendixAllSig + `"`)
		require.NoError(t, err)
		assert.Equal(t, int64(1402170695), p.Created)
		assert.Equal(t, int64(1402170699), p.Expires)
		s, err := p.SigningString(r, true)
		require.NoError(t, err)
		assert.Contains(t, s, "\n(created): 1402170695\n(expires): 1402170699\nhost: example.com\n")
		assert.ErrorIs(t, p.Verify(r, pub), httpsig.ErrBadSignature)
	})
}

// TestSignRequestAppendixKey checks the signer's exact signing string and
// digest against an independent computation (PKCS#1 v1.5 is deterministic).
func TestSignRequestAppendixKey(t *testing.T) {
	key := sigAppendixKey(t)
	body := []byte(`{"hello": "world"}`)
	req, err := http.NewRequest(http.MethodPost, "http://example.com/foo?param=value&pet=dog", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	s := httpsig.Signer{KeyID: "Test", Key: key}
	require.NoError(t, s.SignRequest(req, body, time.Date(2014, 1, 5, 21, 31, 40, 0, time.UTC)))

	assert.Equal(t, "Sun, 05 Jan 2014 21:31:40 GMT", req.Header.Get("Date"))
	assert.Equal(t, "SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", req.Header.Get("Digest"))
	want := "(request-target): post /foo?param=value&pet=dog\nhost: example.com\n" +
		"date: Sun, 05 Jan 2014 21:31:40 GMT\n" +
		"digest: SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\ncontent-type: application/json"
	sum := sha256.Sum256([]byte(want))
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	require.NoError(t, err)
	assert.Equal(t, `keyId="Test",algorithm="rsa-sha256",headers="(request-target) host date digest content-type",signature="`+
		base64.StdEncoding.EncodeToString(sig)+`"`, req.Header.Get("Signature"))
}

func TestSignRequestHeaders(t *testing.T) {
	s := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: sigKey()}
	sigRE := regexp.MustCompile(`^keyId="https://relay\.example/actor#main-key",algorithm="rsa-sha256",headers="([^"]*)",signature="[A-Za-z0-9+/]{342}=="$`)
	body := []byte(`{"type":"Announce"}`)

	t.Run("POST", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, "https://mastodon.example/inbox", bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/activity+json")
		// Not UTC on purpose: Date must still be GMT.
		require.NoError(t, s.SignRequest(req, body, sigNow.In(time.FixedZone("X", 2*3600))))
		assert.Equal(t, "Sun, 01 Jun 2025 12:00:06 GMT", req.Header.Get("Date"))
		assert.Equal(t, sigDigest(body), req.Header.Get("Digest"))
		m := sigRE.FindStringSubmatch(req.Header.Get("Signature"))
		require.NotNil(t, m, req.Header.Get("Signature"))
		assert.Equal(t, "(request-target) host date digest content-type", m[1])
		got, err := io.ReadAll(req.Body)
		require.NoError(t, err)
		assert.Equal(t, body, got, "SignRequest must not consume the body")
	})
	t.Run("POST without content type", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, "https://mastodon.example/inbox", nil)
		require.NoError(t, err)
		require.NoError(t, s.SignRequest(req, body, sigNow))
		m := sigRE.FindStringSubmatch(req.Header.Get("Signature"))
		require.NotNil(t, m)
		assert.Equal(t, "(request-target) host date digest", m[1])
	})
	t.Run("GET", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "https://mastodon.example/users/a", nil)
		require.NoError(t, err)
		req.Header.Set("Digest", "SHA-256=stale")
		require.NoError(t, s.SignRequest(req, nil, sigNow))
		m := sigRE.FindStringSubmatch(req.Header.Get("Signature"))
		require.NotNil(t, m)
		assert.Equal(t, "(request-target) host date", m[1])
		assert.Empty(t, req.Header.Values("Digest"), "a stale Digest must be removed")
	})
	t.Run("host from req.Host", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "https://10.0.0.1/users/a", nil)
		require.NoError(t, err)
		req.Host = "mastodon.example:8443"
		require.NoError(t, s.SignRequest(req, nil, sigNow))
		r, _ := sigWire(t, req)
		p, err := httpsig.FromRequest(r)
		require.NoError(t, err)
		str, err := p.SigningString(r, true)
		require.NoError(t, err)
		assert.Equal(t, "(request-target): get /users/a\nhost: mastodon.example:8443\ndate: Sun, 01 Jun 2025 12:00:06 GMT", str)
	})
}

func TestSignRequestResign(t *testing.T) {
	s := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: sigKey()}
	body := []byte(`{"a":1}`)
	req, err := http.NewRequest(http.MethodPost, "https://mastodon.example/inbox", bytes.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, s.SignRequest(req, body, sigNow))
	first := req.Header.Get("Signature")
	later := sigNow.Add(10 * time.Minute)
	require.NoError(t, s.SignRequest(req, body, later))

	for _, h := range []string{"Date", "Digest", "Signature"} {
		assert.Len(t, req.Header.Values(h), 1, h)
	}
	assert.Equal(t, later.Format(http.TimeFormat), req.Header.Get("Date"))
	assert.NotEqual(t, first, req.Header.Get("Signature"))
	r, got := sigWire(t, req)
	assert.NoError(t, sigVerify(r, got, &sigKey().PublicKey, httpsig.VerifyOptions{Now: later}))
}

func TestSignRequestErrors(t *testing.T) {
	newReq := func() *http.Request {
		req, err := http.NewRequest(http.MethodGet, "https://mastodon.example/users/a", nil)
		require.NoError(t, err)
		return req
	}
	tests := []struct {
		name   string
		signer httpsig.Signer
		req    *http.Request
	}{
		{"no key", httpsig.Signer{KeyID: "https://relay.example/actor#main-key"}, newReq()},
		{"no key id", httpsig.Signer{Key: sigKey()}, newReq()},
		{"quote in key id", httpsig.Signer{KeyID: `https://relay.example/"a`, Key: sigKey()}, newReq()},
		{"newline in key id", httpsig.Signer{KeyID: "https://relay.example/\na", Key: sigKey()}, newReq()},
		{"no URL", httpsig.Signer{KeyID: "k", Key: sigKey()}, &http.Request{Method: "GET", Header: http.Header{}}},
		{"no host", httpsig.Signer{KeyID: "k", Key: sigKey()}, &http.Request{Method: "GET", URL: &url.URL{Path: "/x"}, Header: http.Header{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.signer.SignRequest(tt.req, []byte("x"), sigNow)
			assert.Error(t, err)
			assert.Empty(t, tt.req.Header.Values("Date"), "req must be left untouched")
			assert.Empty(t, tt.req.Header.Values("Signature"))
		})
	}
}

func TestSignRequestConcurrent(t *testing.T) {
	s := &httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: sigKey()}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf(`{"n":%d}`, i))
			req, err := http.NewRequest(http.MethodPost, "https://mastodon.example/inbox", bytes.NewReader(body))
			if err == nil {
				err = s.SignRequest(req, body, sigNow)
			}
			if err == nil {
				var buf bytes.Buffer
				if err = req.Write(&buf); err == nil {
					var r *http.Request
					if r, err = http.ReadRequest(bufio.NewReader(&buf)); err == nil {
						err = sigVerify(r, body, &s.Key.PublicKey, sigOpts)
					}
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
}

// TestSignatureRoundTripHTTP signs client requests and verifies them in a real
// net/http server.
func TestSignatureRoundTripHTTP(t *testing.T) {
	key := sigKey()
	type seen struct {
		host string
		err  error
	}
	results := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err == nil {
			err = sigVerify(r, body, &key.PublicKey, httpsig.VerifyOptions{})
		}
		results <- seen{r.Host, err}
	}))
	defer srv.Close()

	s := httpsig.Signer{KeyID: srv.URL + "/actor#main-key", Key: key}
	tests := []struct {
		name, method, path, host string
		body                     []byte
	}{
		{"GET", http.MethodGet, "/users/alice", "", nil},
		{"POST", http.MethodPost, "/inbox", "", []byte(`{"type":"Create"}`)},
		{"POST non-default port in Host", http.MethodPost, "/inbox", "relay.example:8443", []byte(`{"type":"Follow"}`)},
		{"GET with query", http.MethodGet, "/outbox?page=true&min_id=a%2Fb", "", nil},
		{"POST empty body", http.MethodPost, "/inbox", "", []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rd io.Reader
			if tt.body != nil {
				rd = bytes.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, rd)
			require.NoError(t, err)
			req.Host = tt.host
			if tt.body != nil {
				req.Header.Set("Content-Type", "application/activity+json")
			}
			require.NoError(t, s.SignRequest(req, tt.body, time.Now()))
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			got := <-results
			assert.NoError(t, got.err)
			if tt.host != "" {
				assert.Equal(t, tt.host, got.host)
			}
		})
	}
}

func TestSignatureVerifyAccepts(t *testing.T) {
	key := sigKey()
	body := []byte(`{"type":"Create","actor":"https://remote.example/users/a"}`)
	now := sigNow.Unix()
	date := sigNow.Format(http.TimeFormat)
	post := func(t *testing.T, extra ...string) *http.Request {
		hdrs := append([]string{"Date", date, "Digest", sigDigest(body), "Content-Type", "application/activity+json"}, extra...)
		return sigServerRequest(t, "POST", "/inbox", "relay.example", body, hdrs...)
	}
	params := func(alg, headers string) *httpsig.SignatureParams {
		return &httpsig.SignatureParams{KeyID: "https://remote.example/users/a#main-key", Algorithm: alg, Headers: strings.Fields(headers)}
	}
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)

	tests := []struct {
		name string
		r    func(t *testing.T) (*http.Request, []byte)
		pub  crypto.PublicKey
	}{
		{"Mastodon rsa-sha256", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest content-type"), true)
			return r, body
		}, nil},
		{"Mastodon legacy Signature prefix", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest content-type"), true)
			r.Header.Set("Signature", "Signature "+r.Header.Get("Signature"))
			return r, body
		}, nil},
		{"GoToSocial hs2019", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			p := params("hs2019", "(request-target) host date digest")
			p.KeyID = "https://gts.example/users/a/main-key"
			sigSign(t, r, key, p, true)
			return r, body
		}, nil},
		{"algorithm absent", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("", "(request-target) host date digest"), true)
			return r, body
		}, nil},
		{"headers in another order", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "content-type digest date host (request-target)"), true)
			return r, body
		}, nil},
		{"Pleroma content-length", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host content-length digest date"), true)
			return r, body
		}, nil},
		{"hs2019 with (created) and (expires), no Date", func(t *testing.T) (*http.Request, []byte) {
			r := sigServerRequest(t, "POST", "/inbox", "relay.example", body, "Digest", sigDigest(body))
			p := params("hs2019", "(request-target) (created) (expires) host digest")
			p.Created, p.Expires = now-30, now+300
			sigSign(t, r, key, p, true)
			return r, body
		}, nil},
		{"rsa-sha512", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha512", "(request-target) host date digest"), true)
			return r, body
		}, nil},
		{"ed25519", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, edPriv, params("ed25519", "(request-target) host date digest"), true)
			return r, body
		}, edPub},
		{"ed25519 key with hs2019", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, edPriv, params("hs2019", "(request-target) host date digest"), true)
			return r, body
		}, edPub},
		{"path signed without the query (GoToSocial/Pleroma)", func(t *testing.T) (*http.Request, []byte) {
			r := sigServerRequest(t, "GET", "/users/a?page=1&x=%2F", "relay.example", nil, "Date", date)
			p := params("hs2019", "(request-target) host date")
			sigSign(t, r, key, p, false)
			with, err := p.SigningString(r, true)
			require.NoError(t, err)
			without, err := p.SigningString(r, false)
			require.NoError(t, err)
			require.Equal(t, "(request-target): get /users/a?page=1&x=%2F", strings.Split(with, "\n")[0])
			require.Equal(t, "(request-target): get /users/a", strings.Split(without, "\n")[0])
			return r, nil
		}, nil},
		{"escaped path kept escaped", func(t *testing.T) (*http.Request, []byte) {
			r := sigServerRequest(t, "GET", "/users/a%2Fb", "relay.example", nil, "Date", date)
			p := params("rsa-sha256", "(request-target) host date")
			sigSign(t, r, key, p, true)
			s, err := p.SigningString(r, true)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(s, "(request-target): get /users/a%2Fb\n"), s)
			return r, nil
		}, nil},
		{"repeated header joined with comma", func(t *testing.T) (*http.Request, []byte) {
			r := sigServerRequest(t, "GET", "/users/a", "relay.example", nil,
				"Date", date, "Accept", "application/activity+json", "Accept", ` application/ld+json; profile="https://www.w3.org/ns/activitystreams"`)
			p := params("rsa-sha256", "(request-target) host date accept")
			sigSign(t, r, key, p, true)
			s, err := p.SigningString(r, true)
			require.NoError(t, err)
			require.True(t, strings.HasSuffix(s, "\naccept: application/activity+json, application/ld+json; profile=\"https://www.w3.org/ns/activitystreams\""), s)
			return r, nil
		}, nil},
		{"Digest list with other algorithms, lower-case alg", func(t *testing.T) (*http.Request, []byte) {
			sum := sha256.Sum256(body)
			r := sigServerRequest(t, "POST", "/inbox", "relay.example", body,
				"Date", date, "Digest", "SHA-512=AAAA, sha-256="+base64.StdEncoding.EncodeToString(sum[:]))
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r, body
		}, nil},
		{"GET with signed empty-body digest", func(t *testing.T) (*http.Request, []byte) {
			r := sigServerRequest(t, "GET", "/users/a", "relay.example", nil, "Date", date, "Digest", sigDigest(nil))
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r, nil
		}, nil},
		{"upper-case names in headers param", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			p := params("rsa-sha256", "(request-target) host date digest")
			sigSign(t, r, key, p, true)
			p.Headers = []string{"(Request-Target)", "Host", "DATE", "Digest"}
			r.Header.Set("Signature", sigFormat(p, true))
			return r, body
		}, nil},
		{"PKCS#1 RSA PUBLIC KEY", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r, body
		}, sigParsePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&key.PublicKey))},
		{"SPKI PUBLIC KEY", func(t *testing.T) (*http.Request, []byte) {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r, body
		}, sigParsePEM(t, "PUBLIC KEY", sigMarshalPKIX(t, &key.PublicKey))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, b := tt.r(t)
			pub := tt.pub
			if pub == nil {
				pub = &key.PublicKey
			}
			assert.NoError(t, sigVerify(r, b, pub, sigOpts))
			// Sanity: the same request must fail with another key.
			assert.ErrorIs(t, sigVerify(r, b, &sigOther().PublicKey, sigOpts), httpsig.ErrBadSignature)
		})
	}
}

func sigParsePEM(t testing.TB, typ string, der []byte) crypto.PublicKey {
	pub, err := httpsig.ParsePublicKeyPEM(string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})))
	require.NoError(t, err)
	return pub
}

func sigMarshalPKIX(t testing.TB, k crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k)
	require.NoError(t, err)
	return der
}

func TestSignatureVerifyRejects(t *testing.T) {
	key := sigKey()
	body := []byte(`{"type":"Create","actor":"https://remote.example/users/a"}`)
	now := sigNow.Unix()
	date := sigNow.Format(http.TimeFormat)
	post := func(t *testing.T, extra ...string) *http.Request {
		hdrs := append([]string{"Date", date, "Digest", sigDigest(body), "Content-Type", "application/activity+json"}, extra...)
		return sigServerRequest(t, "POST", "/inbox?a=1", "relay.example", body, hdrs...)
	}
	params := func(alg, headers string) *httpsig.SignatureParams {
		return &httpsig.SignatureParams{KeyID: "https://remote.example/users/a#main-key", Algorithm: alg, Headers: strings.Fields(headers)}
	}
	const std = "(request-target) host date digest content-type"
	signed := func(t *testing.T) *http.Request {
		r := post(t)
		sigSign(t, r, key, params("rsa-sha256", std), true)
		return r
	}

	tests := []struct {
		name string
		r    func(t *testing.T) *http.Request
		body []byte
		pub  crypto.PublicKey
		opts httpsig.VerifyOptions
		want string
	}{
		{name: "tampered body", r: signed, body: []byte(`{"type":"Delete","actor":"https://remote.example/users/a"}`), want: "digest mismatch"},
		{name: "digest not signed on POST", r: func(t *testing.T) *http.Request {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date content-type"), true)
			return r
		}, want: "digest is not signed"},
		{name: "body on GET without signed digest", r: func(t *testing.T) *http.Request {
			r := sigServerRequest(t, "GET", "/users/a", "relay.example", nil, "Date", date)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date"), true)
			return r
		}, body: []byte("x"), want: "digest is not signed"},
		{name: "Digest with only SHA-512", r: func(t *testing.T) *http.Request {
			r := sigServerRequest(t, "POST", "/inbox", "relay.example", body, "Date", date, "Digest", "SHA-512=z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==")
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r
		}, want: "no SHA-256 value"},
		{name: "Digest malformed", r: func(t *testing.T) *http.Request {
			r := sigServerRequest(t, "POST", "/inbox", "relay.example", body, "Date", date, "Digest", "garbage")
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host date digest"), true)
			return r
		}, want: "no SHA-256 value"},
		{name: "neither date nor (created) signed", r: func(t *testing.T) *http.Request {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", "(request-target) host digest"), true)
			return r
		}, want: "neither date nor (created)"},
		{name: "neither (request-target) nor digest signed", r: func(t *testing.T) *http.Request {
			r := sigServerRequest(t, "GET", "/users/a", "relay.example", nil, "Date", date)
			sigSign(t, r, key, params("rsa-sha256", "host date"), true)
			return r
		}, want: "neither (request-target) nor digest"},
		{name: "Date 2h old", r: signed, opts: httpsig.VerifyOptions{Now: sigNow.Add(2 * time.Hour)}, want: "date too old"},
		{name: "Date 10 min in the future", r: signed, opts: httpsig.VerifyOptions{Now: sigNow.Add(-10 * time.Minute)}, want: "date in the future"},
		{name: "custom MaxAge", r: signed, opts: httpsig.VerifyOptions{Now: sigNow.Add(10 * time.Minute), MaxAge: 5 * time.Minute}, want: "date too old"},
		{name: "unparseable Date", r: func(t *testing.T) *http.Request {
			r := post(t)
			r.Header.Set("Date", "yesterday")
			sigSign(t, r, key, params("rsa-sha256", std), true)
			return r
		}, want: "invalid Date header"},
		{name: "(created) too old", r: func(t *testing.T) *http.Request {
			r := post(t)
			p := params("hs2019", "(request-target) (created) host digest")
			p.Created = now - 7200
			sigSign(t, r, key, p, true)
			return r
		}, want: "(created) too old"},
		{name: "(expires) passed", r: func(t *testing.T) *http.Request {
			r := post(t)
			p := params("hs2019", "(request-target) (created) (expires) host digest")
			p.Created, p.Expires = now-60, now-1
			sigSign(t, r, key, p, true)
			return r
		}, want: "signature expired"},
		{name: "(created) signed without the parameter", r: func(t *testing.T) *http.Request {
			r := post(t)
			p := params("hs2019", "(request-target) (created) host digest")
			p.Created = now
			sigSign(t, r, key, p, true)
			p.Created = 0
			r.Header.Set("Signature", sigFormat(p, true))
			return r
		}, want: "(created) is signed but its parameter is missing"},
		{name: "unknown pseudo-header", r: func(t *testing.T) *http.Request {
			r := post(t)
			p := params("rsa-sha256", std+" (foo)")
			p.Signature = []byte{1}
			r.Header.Set("Signature", sigFormat(p, true))
			return r
		}, want: `unsupported pseudo-header "(foo)"`},
		{name: "signed header missing from request", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Header.Del("Content-Type")
			return r
		}, want: `signed header "content-type" is missing`},
		{name: "wrong key", r: signed, pub: &sigOther().PublicKey, want: "signature does not match"},
		{name: "tampered signature", r: func(t *testing.T) *http.Request {
			r := signed(t)
			p, err := httpsig.FromRequest(r)
			require.NoError(t, err)
			p.Signature[10] ^= 0x01
			r.Header.Set("Signature", sigFormat(p, true))
			return r
		}, want: "signature does not match"},
		{name: "tampered signed header", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Header.Set("Content-Type", "text/html")
			return r
		}, want: "signature does not match"},
		{name: "tampered host", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Host = "evil.example"
			return r
		}, want: "signature does not match"},
		{name: "tampered query", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.URL.RawQuery = "a=2"
			return r
		}, want: "signature does not match"},
		{name: "tampered method", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Method = http.MethodPut
			return r
		}, want: "signature does not match"},
		{name: "unknown algorithm", r: func(t *testing.T) *http.Request {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", std), true)
			r.Header.Set("Signature", strings.Replace(r.Header.Get("Signature"), "rsa-sha256", "rsa-sha1", 1))
			return r
		}, want: `unsupported algorithm "rsa-sha1"`},
		{name: "ed25519 algorithm with an RSA key", r: func(t *testing.T) *http.Request {
			r := post(t)
			sigSign(t, r, key, params("rsa-sha256", std), true)
			r.Header.Set("Signature", strings.Replace(r.Header.Get("Signature"), "rsa-sha256", "ed25519", 1))
			return r
		}, want: `algorithm "ed25519" does not match an RSA key`},
		{name: "rsa-sha256 with an Ed25519 key", r: signed, pub: func() crypto.PublicKey {
			pub, _, _ := ed25519.GenerateKey(rand.Reader)
			return pub
		}(), want: "does not match an Ed25519 key"},
		{name: "unsupported key type", r: signed, pub: "not a key", want: "unsupported key type string"},
		{name: "multiple Signature headers", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Header.Add("Signature", r.Header.Get("Signature"))
			return r
		}, want: "multiple Signature headers"},
		{name: "malformed Signature header", r: func(t *testing.T) *http.Request {
			r := signed(t)
			r.Header.Set("Signature", `keyId="a,signature=AQID`)
			return r
		}, want: "unterminated quoted string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r(t)
			b := tt.body
			if b == nil {
				b = body
				if r.Method == http.MethodGet {
					b = nil
				}
			}
			pub := tt.pub
			if pub == nil {
				pub = &key.PublicKey
			}
			opts := tt.opts
			if opts.Now.IsZero() {
				opts.Now = sigNow
			}
			err := sigVerify(r, b, pub, opts)
			assert.ErrorIs(t, err, httpsig.ErrBadSignature)
			assert.NotErrorIs(t, err, httpsig.ErrNoSignature)
			assert.ErrorContains(t, err, tt.want)
		})
	}

	t.Run("unsigned request", func(t *testing.T) {
		r := post(t)
		r.Header.Set("Authorization", `Signature keyId="a",signature="AQID"`)
		err := sigVerify(r, body, &key.PublicKey, sigOpts)
		assert.ErrorIs(t, err, httpsig.ErrNoSignature)
		assert.NotErrorIs(t, err, httpsig.ErrBadSignature)
	})
	t.Run("baseline verifies", func(t *testing.T) {
		assert.NoError(t, sigVerify(signed(t), body, &key.PublicKey, sigOpts))
	})
}

func TestParseSignature(t *testing.T) {
	sig := []byte{1, 2, 3}
	tests := []struct {
		name, in string
		want     httpsig.SignatureParams
	}{
		{"minimal rsa-sha256 defaults to date", `keyId="k",algorithm="rsa-sha256",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Algorithm: "rsa-sha256", Headers: []string{"date"}, Signature: sig}},
		{"rsa-sha512 defaults to date", `keyId="k",algorithm="rsa-sha512",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Algorithm: "rsa-sha512", Headers: []string{"date"}, Signature: sig}},
		{"hs2019 defaults to (created)", `keyId="k",algorithm="hs2019",created=1700000000,signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Algorithm: "hs2019", Headers: []string{"(created)"}, Signature: sig, Created: 1700000000}},
		{"no algorithm defaults to (created)", `keyId="k",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"(created)"}, Signature: sig}},
		{"whitespace, case and order", "\t signature = \"AQID\" ,  Headers=\"(Request-Target)  Host\tdate\" , ALGORITHM = \"RSA-SHA256\",keyid= \"k\" ",
			httpsig.SignatureParams{KeyID: "k", Algorithm: "rsa-sha256", Headers: []string{"(request-target)", "host", "date"}, Signature: sig}},
		{"escapes", `keyId="a\"b\\c\d",signature="AQID",headers="date"`,
			httpsig.SignatureParams{KeyID: `a"b\cd`, Headers: []string{"date"}, Signature: sig}},
		{"unknown params ignored", `foo="bar, baz",keyId="k",x=1,headers="date",signature="AQID",nonce="\""`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"date"}, Signature: sig}},
		{"bare created and fractional expires", `keyId="k",created=1402170695, expires=1402170699.25,headers="(created) (expires)",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"(created)", "(expires)"}, Signature: sig, Created: 1402170695, Expires: 1402170699}},
		{"quoted created", `keyId="k",created="1402170695",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"(created)"}, Signature: sig, Created: 1402170695}},
		{"Mastodon-tolerated Signature prefix", `Signature keyId="k",headers="date",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"date"}, Signature: sig}},
		{"signature param first, not a prefix", `signature ="AQID", keyId="k", headers="date"`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"date"}, Signature: sig}},
		{"empty elements and trailing comma", `,keyId="k",,headers="date",signature="AQID",`,
			httpsig.SignatureParams{KeyID: "k", Headers: []string{"date"}, Signature: sig}},
		{"GoToSocial", `keyId="https://gts.example/users/a/main-key",algorithm="hs2019",headers="(request-target) host date digest",signature="AQID"`,
			httpsig.SignatureParams{KeyID: "https://gts.example/users/a/main-key", Algorithm: "hs2019", Headers: []string{"(request-target)", "host", "date", "digest"}, Signature: sig}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := httpsig.ParseSignature(tt.in)
			require.NoError(t, err)
			assert.Equal(t, &tt.want, p)
		})
	}
}

func TestParseSignatureRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", ``, "missing keyId"},
		{"unterminated quote", `keyId="k,signature=AQID`, "unterminated quoted string"},
		{"unterminated after escape", `keyId="k",signature="AQID\`, "unterminated quoted string"},
		{"missing keyId", `algorithm="rsa-sha256",headers="date",signature="AQID"`, "missing keyId"},
		{"empty keyId", `keyId="",signature="AQID"`, "missing keyId"},
		{"missing signature", `keyId="k",headers="date"`, "missing signature"},
		{"empty signature", `keyId="k",headers="date",signature=""`, "missing signature"},
		{"bad base64", `keyId="k",signature="not base64!"`, "not valid base64"},
		{"unpadded base64", `keyId="k",signature="AQIDBA"`, "not valid base64"},
		{"duplicate keyId", `keyId="a",keyId="b",signature="AQID"`, `duplicate parameter "keyId"`},
		{"duplicate signature, other case", `keyId="a",signature="AQID",Signature="AQID"`, `duplicate parameter "signature"`},
		{"empty headers", `keyId="k",headers=" ",signature="AQID"`, "empty headers parameter"},
		{"negative created", `keyId="k",created=-5,signature="AQID"`, "invalid created parameter"},
		{"zero created", `keyId="k",created=0,signature="AQID"`, "invalid created parameter"},
		{"junk expires", `keyId="k",expires=12a,signature="AQID"`, "invalid expires parameter"},
		{"text after quoted value", `keyId="k"x,signature="AQID"`, "unexpected text after parameter"},
		{"missing comma", `keyId="k" signature="AQID"`, "unexpected text after parameter"},
		{"no value", `keyId,signature="AQID"`, `parameter "keyId" has no value`},
		{"no name", `="k",signature="AQID"`, "expected a parameter name"},
		{"newline in name", "keyId=\"k\",\nsignature=\"AQID\"", "expected a parameter name"},
		{"non-token name", `keyId="k",sig/nature="AQID",signature="AQID"`, `parameter "sig" has no value`},
		{"quote in bare value", `keyId=a"b",signature="AQID"`, "unexpected text after parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := httpsig.ParseSignature(tt.in)
			assert.Nil(t, p)
			assert.ErrorIs(t, err, httpsig.ErrBadSignature)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestSigningString(t *testing.T) {
	r := sigServerRequest(t, "PATCH", "/a/b?c=d", "h.example:8080", []byte("xyz"),
		"Date", "Sun, 01 Jun 2025 12:00:06 GMT", "X-Empty", "", "X-Multi", "1 ", "X-Multi", "2")
	p := &httpsig.SignatureParams{Headers: []string{"(request-target)", "(created)", "(expires)", "host", "date", "content-length", "x-empty", "x-multi"}, Created: 5, Expires: 6}
	s, err := p.SigningString(r, true)
	require.NoError(t, err)
	assert.Equal(t, "(request-target): patch /a/b?c=d\n(created): 5\n(expires): 6\nhost: h.example:8080\n"+
		"date: Sun, 01 Jun 2025 12:00:06 GMT\ncontent-length: 3\nx-empty: \nx-multi: 1, 2", s)
	s, err = p.SigningString(r, false)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(s, "(request-target): patch /a/b\n"), s)

	_, err = (&httpsig.SignatureParams{}).SigningString(r, true)
	assert.ErrorIs(t, err, httpsig.ErrBadSignature)
	_, err = (&httpsig.SignatureParams{Headers: []string{"(expires)"}}).SigningString(r, true)
	assert.ErrorIs(t, err, httpsig.ErrBadSignature)

	// A client-side request has no r.Host; the URL host is used.
	req, err := http.NewRequest(http.MethodGet, "https://c.example/x", nil)
	require.NoError(t, err)
	req.Host = ""
	s, err = (&httpsig.SignatureParams{Headers: []string{"host"}}).SigningString(req, true)
	require.NoError(t, err)
	assert.Equal(t, "host: c.example", s)

	// An empty method is sent as GET by net/http.
	req.Method = ""
	s, err = (&httpsig.SignatureParams{Headers: []string{"(request-target)"}}).SigningString(req, true)
	require.NoError(t, err)
	assert.Equal(t, "(request-target): get /x", s)
}

func TestSignatureKeyPEM(t *testing.T) {
	key := sigKey()
	assert.Equal(t, 2048, key.N.BitLen())

	t.Run("private PKCS#8 round trip", func(t *testing.T) {
		b, err := httpsig.MarshalPrivateKeyPEM(key)
		require.NoError(t, err)
		assert.True(t, bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----\n")))
		got, err := httpsig.ParsePrivateKeyPEM(b)
		require.NoError(t, err)
		assert.True(t, key.Equal(got))
	})
	t.Run("private PKCS#1", func(t *testing.T) {
		b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		got, err := httpsig.ParsePrivateKeyPEM(b)
		require.NoError(t, err)
		assert.True(t, key.Equal(got))
	})
	t.Run("public SPKI round trip", func(t *testing.T) {
		s, err := httpsig.MarshalPublicKeyPEM(&key.PublicKey)
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(s, "-----BEGIN PUBLIC KEY-----\n"))
		got, err := httpsig.ParsePublicKeyPEM(s)
		require.NoError(t, err)
		assert.True(t, key.PublicKey.Equal(got))

		crlf := "\r\n  " + strings.ReplaceAll(s, "\n", "\r\n") + "\r\n\t"
		got, err = httpsig.ParsePublicKeyPEM(crlf)
		require.NoError(t, err)
		assert.True(t, key.PublicKey.Equal(got))
	})
	t.Run("public PKCS#1", func(t *testing.T) {
		got := sigParsePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&key.PublicKey))
		assert.True(t, key.PublicKey.Equal(got))
	})
	t.Run("public Ed25519 round trip", func(t *testing.T) {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		s, err := httpsig.MarshalPublicKeyPEM(pub)
		require.NoError(t, err)
		got, err := httpsig.ParsePublicKeyPEM(s)
		require.NoError(t, err)
		assert.Equal(t, pub, got)
	})

	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	edPKCS8, err := x509.MarshalPKCS8PrivateKey(edPriv)
	require.NoError(t, err)
	// A 512-bit modulus: too small (and ParsePKIXPublicKey does not check size).
	small := &rsa.PublicKey{N: new(big.Int).SetBit(big.NewInt(1), 511, 1), E: 65537}
	smallPriv := sigSmallPrivateKey(t)

	t.Run("private rejects", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"garbage":          []byte("not a key"),
			"empty":            nil,
			"wrong block type": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}),
			"public key":       []byte(sigAppendixPubPEM),
			"Ed25519 PKCS#8":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edPKCS8}),
			"corrupt DER":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{0x30, 0x01}}),
			"encrypted": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
				Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: x509.MarshalPKCS1PrivateKey(sigAppendixKey(t))}),
			"small RSA key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(smallPriv)}),
		} {
			k, err := httpsig.ParsePrivateKeyPEM(b)
			assert.Nil(t, k, name)
			assert.ErrorContains(t, err, "httpsig: ", name)
		}
	})
	t.Run("public rejects", func(t *testing.T) {
		for name, s := range map[string]string{
			"garbage":          "-----BEGIN GARBAGE",
			"empty":            "",
			"wrong block type": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})),
			"private key":      sigAppendixPrivPEM,
			"ECDSA":            string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: sigMarshalPKIX(t, &ecKey.PublicKey)})),
			"corrupt DER":      string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{0x30, 0x01}})),
			"small SPKI":       string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: sigMarshalPKIX(t, small)})),
			"small PKCS#1":     string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(small)})),
		} {
			k, err := httpsig.ParsePublicKeyPEM(s)
			assert.Nil(t, k, name)
			assert.ErrorContains(t, err, "httpsig: ", name)
		}
	})
	t.Run("marshal rejects", func(t *testing.T) {
		_, err := httpsig.MarshalPublicKeyPEM(&ecKey.PublicKey)
		assert.Error(t, err)
		_, err = httpsig.MarshalPublicKeyPEM(nil)
		assert.Error(t, err)
		_, err = httpsig.MarshalPublicKeyPEM((*rsa.PublicKey)(nil))
		assert.Error(t, err)
		_, err = httpsig.MarshalPrivateKeyPEM(nil)
		assert.Error(t, err)
	})
	t.Run("Appendix C public key is 1024 bits and accepted", func(t *testing.T) {
		pub, err := httpsig.ParsePublicKeyPEM(sigAppendixPubPEM)
		require.NoError(t, err)
		assert.Equal(t, 1024, pub.(*rsa.PublicKey).N.BitLen())
	})
}

// sigSmallPrivateKey builds a valid 512-bit RSA key from fixed primes
// (rsa.GenerateKey refuses sizes under 1024 bits since Go 1.24).
func sigSmallPrivateKey(t testing.TB) *rsa.PrivateKey {
	p, ok := new(big.Int).SetString("115792089237316195423570985008687907853269984665640564039457584007913129640233", 10) // 2^256 - 2^32 - 977
	require.True(t, ok)
	q, ok := new(big.Int).SetString("57896044618658097711785492504343953926634992332820282019728792003956564819949", 10) // 2^255 - 19
	require.True(t, ok)
	n := new(big.Int).Mul(p, q)
	phi := new(big.Int).Mul(new(big.Int).Sub(p, big.NewInt(1)), new(big.Int).Sub(q, big.NewInt(1)))
	e := big.NewInt(65537)
	d := new(big.Int).ModInverse(e, phi)
	require.NotNil(t, d)
	k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: 65537}, D: d, Primes: []*big.Int{p, q}}
	k.Precompute()
	return k
}

var sigSink error

func BenchmarkSignRequest(b *testing.B) {
	s := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: sigKey()}
	body := bytes.Repeat([]byte("a"), 2048)
	req, err := http.NewRequest(http.MethodPost, "https://mastodon.example/inbox", nil)
	require.NoError(b, err)
	req.Header.Set("Content-Type", "application/activity+json")
	b.ReportAllocs()
	for b.Loop() {
		sigSink = s.SignRequest(req, body, sigNow)
	}
	require.NoError(b, sigSink)
}

func BenchmarkVerify(b *testing.B) {
	key := sigKey()
	s := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: key}
	body := bytes.Repeat([]byte("a"), 2048)
	req, err := http.NewRequest(http.MethodPost, "https://relay.example/inbox", bytes.NewReader(body))
	require.NoError(b, err)
	req.Header.Set("Content-Type", "application/activity+json")
	require.NoError(b, s.SignRequest(req, body, sigNow))
	r, got := sigWire(b, req)
	b.ReportAllocs()
	for b.Loop() {
		sigSink = sigVerify(r, got, &key.PublicKey, sigOpts)
	}
	require.NoError(b, sigSink)
}
