package httpsig_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testKeys are generated once: RSA key generation is slow under -race.
var testKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	keys := make([]*rsa.PrivateKey, 4)
	for i := range keys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[i] = k
	}
	return keys
})

// sig9421 describes an RFC 9421 signature for signRFC9421.
type sig9421 struct {
	components []string // covered components
	params     string   // the parameters after the inner list, e.g. `;created=1;keyid="k"`
	targetURI  string   // overrides the @target-uri value
	key        *rsa.PrivateKey
}

// signRFC9421 signs req (a client request with an absolute URL) with an
// RFC 9421 signature built by hand, independently of the relay's signer:
// it sets Content-Digest when body != nil, builds the signature base line
// by line and signs it with RSASSA-PKCS1-v1_5 SHA-256.
func signRFC9421(t *testing.T, req *http.Request, body []byte, s sig9421) {
	t.Helper()
	if body != nil && req.Header.Get("Content-Digest") == "" {
		sum := sha256.Sum256(body)
		req.Header.Set("Content-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum[:])+":")
	}
	if req.Header.Get("Date") == "" {
		req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	quoted := make([]string, len(s.components))
	var lines []string
	for i, c := range s.components {
		quoted[i] = `"` + c + `"`
		var v string
		switch c {
		case "@method":
			v = req.Method
		case "@target-uri":
			v = req.URL.String()
			if s.targetURI != "" {
				v = s.targetURI
			}
		case "@authority", "host":
			v = req.URL.Host
		case "@path":
			v = req.URL.EscapedPath()
		default:
			v = req.Header.Get(c)
		}
		lines = append(lines, `"`+c+`": `+v)
	}
	input := "(" + strings.Join(quoted, " ") + ")" + s.params
	lines = append(lines, `"@signature-params": `+input)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	require.NoError(t, err)
	req.Header.Set("Signature-Input", "sig1="+input)
	req.Header.Set("Signature", "sig1=:"+base64.StdEncoding.EncodeToString(sig)+":")
}
