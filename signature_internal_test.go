package relay

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/httpsig"
)

// A draft-cavage signature is verified against at most two signing
// strings per key, whatever fallbacks the request could use; identical
// ones count once.
func TestVerificationsPerRequestAreBounded(t *testing.T) {
	key, err := httpsig.GenerateKey()
	require.NoError(t, err)
	body := []byte(`{"type":"Create"}`)
	sign := func(target string, headers ...string) *http.Request {
		req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(string(body)))
		signer := httpsig.Signer{KeyID: "https://a.example/k", Key: key}
		require.NoError(t, signer.SignRequest(req, body, time.Now()))
		if headers != nil { // re-sign covering only these
			p, err := httpsig.ParseSignature(`keyId="https://a.example/k",algorithm="rsa-sha256",headers="` + strings.Join(headers, " ") + `",signature="AA=="`)
			require.NoError(t, err)
			msg, err := p.SigningString(req, true)
			require.NoError(t, err)
			sum := sha256.Sum256([]byte(msg))
			sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
			require.NoError(t, err)
			req.Header.Set("Signature", `keyId="https://a.example/k",algorithm="rsa-sha256",headers="`+strings.Join(headers, " ")+`",signature="`+base64.StdEncoding.EncodeToString(sig)+`"`)
		}
		return req
	}
	for _, tt := range []struct {
		name       string
		req        *http.Request
		publicHost string
		want       int
	}{
		{"query, Host rewritten", sign("http://127.0.0.1:8080/inbox?x=1"), "relay.example", 2},
		{"query", sign("http://127.0.0.1:8080/inbox?x=1"), "", 2},
		{"Host rewritten", sign("http://127.0.0.1:8080/inbox"), "relay.example", 2},
		{"neither", sign("http://127.0.0.1:8080/inbox"), "", 1},
		{"query, Host rewritten, neither signed", sign("http://127.0.0.1:8080/inbox?x=1", "date", "digest"), "relay.example", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := httpsig.FromRequest(tt.req)
			require.NoError(t, err)
			msgs, err := cavageSignature{p: p, publicHost: tt.publicHost}.candidates(tt.req)
			require.NoError(t, err)
			assert.Len(t, msgs, tt.want)
			assert.LessOrEqual(t, len(msgs), maxVerificationsPerKey)
			assert.NoError(t, cavageSignature{p: p, publicHost: tt.publicHost}.verify(tt.req, &key.PublicKey), "the request as signed verifies")
		})
	}
}
