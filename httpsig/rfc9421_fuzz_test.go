package httpsig_test

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/httpsig"
)

// Realistic Signature-Input / Signature pairs, used as fuzz seeds.
var messageSigFuzzSeeds = [][2]string{
	// RFC 9421 Appendix B.2.6.
	{`sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`,
		`sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:`},
	// What Mastodon 4.5 requires.
	{`sig1=("@method" "@target-uri" "content-digest");created=1750000000;keyid="https://mastodon.example/users/alice#main-key"`,
		`sig1=:AQIDBAUGBwgJCgsMDQ4PEA==:`},
	// Fedify.
	{`sig1=("@method" "@target-uri" "@authority" "host" "date" "content-digest");alg="rsa-v1_5-sha256";keyid="https://ghost.example/.ghost/activitypub/users/index#main-key";created=1750000000;expires=1750000300`,
		`sig1=:AQID:`},
	// Odd but valid: spaces, parameters, booleans, tokens.
	{` sig1=( "@method"  "@target-uri" );created=1;keyid="a\"b\\c";x;y=tok/en:1;tag="t" `, `sig1=:AQID:;p=?0`},
	// Malformed.
	{`sig1=("@method";created=1`, `sig1=:AQID:`},
	{`sig1=("@method");created=1;keyid="k", sig2=("@method");created=1;keyid="k"`, `sig1=:AQID:, sig2=:AQID:`},
	{`sig1=("@method");created=1.5;keyid="k"`, `sig1=:AQID:`},
	{`sig1=("@method");created=1;keyid="k"`, `sig1=:!!!:`},
	{``, ``},
	{`=`, `,`},
}

func FuzzParseMessageSignature(f *testing.F) {
	for _, s := range messageSigFuzzSeeds {
		f.Add(s[0], s[1])
	}
	r := httptest.NewRequest(http.MethodPost, "https://relay.example/inbox?a=1", strings.NewReader("{}"))
	r.Header.Set("Date", "Tue, 20 Apr 2021 02:07:55 GMT")
	r.Header.Set("Content-Digest", "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:")
	key := testKeys()[0]
	f.Fuzz(func(t *testing.T, input, signature string) {
		m, err := httpsig.ParseMessageSignature(input, signature)
		if err != nil {
			require.Nil(t, m)
			require.ErrorIs(t, err, httpsig.ErrBadSignature)
			return
		}
		require.NotEmpty(t, m.Label)
		require.NotEmpty(t, m.KeyID)
		require.Positive(t, m.Created)
		require.GreaterOrEqual(t, m.Expires, int64(0))
		require.NotEmpty(t, m.Signature)
		seen := map[string]bool{}
		for _, c := range m.Components {
			require.False(t, seen[c], "component %q twice", c)
			seen[c] = true
		}
		// The canonical serialization parses back to the same signature.
		again, err := httpsig.ParseMessageSignature(m.Label+"="+m.SerializedParams(),
			m.Label+"=:"+base64.StdEncoding.EncodeToString(m.Signature)+":")
		require.NoError(t, err)
		require.Equal(t, m, again)
		// Nothing verifies or panics on a random signature.
		if base, err := m.SignatureBase(r); err == nil {
			require.True(t, strings.HasSuffix(base, `"@signature-params": `+m.SerializedParams()))
			require.Equal(t, len(m.Components), strings.Count(base, "\n"))
		} else {
			require.ErrorIs(t, err, httpsig.ErrBadSignature)
		}
		if err := m.Check(r, []byte("{}"), httpsig.VerifyOptions{}); err != nil {
			require.ErrorIs(t, err, httpsig.ErrBadSignature)
		}
		require.ErrorIs(t, m.Verify(r, &key.PublicKey), httpsig.ErrBadSignature)
	})
}
