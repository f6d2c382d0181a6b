package relay_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
)

// FuzzWebFinger queries WebFinger, through Relay.WebFinger and through the
// handler, with arbitrary resources.
func FuzzWebFinger(f *testing.F) {
	for _, s := range []string{
		"acct:relay@relay.example", "acct:RELAY@Relay.Example:8443", "relay@relay.example:8443",
		"https://relay.example:8443/actor", "acct:alice@relay.example", "acct:relay@other.example",
		"", "acct:", "acct:relay@", "https://relay.example:8443/actor#x", "acct:relay@relay.example\x00",
		"%", "\xff\xfe", "acct:relay@relay.example?x=1;y=2",
	} {
		f.Add(s)
	}
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example:8443", Logger: quietLogger()})
	require.NoError(f, err)
	f.Cleanup(func() { _ = r.Close(context.Background()) }) // its account is free for the next run (-count)
	h := r.Handler()
	accepted := map[string]bool{
		"acct:relay@relay.example": true, "acct:relay@relay.example:8443": true,
		"relay@relay.example": true, "relay@relay.example:8443": true, "https://relay.example:8443/actor": true,
	}
	f.Fuzz(func(t *testing.T, resource string) {
		jrd, ok := r.WebFinger(resource)
		require.Equal(t, accepted[strings.ToLower(resource)], ok)
		if ok {
			require.Equal(t, "acct:relay@relay.example:8443", jrd.Subject)
			require.Equal(t, r.ActorID(), jrd.Links[0].Href)
		}

		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://relay.example:8443/.well-known/webfinger?resource="+url.QueryEscape(resource), nil))
		switch {
		case resource == "":
			require.Equal(t, http.StatusBadRequest, rec.Code)
		case ok:
			require.Equal(t, http.StatusOK, rec.Code)
			require.Contains(t, rec.Header().Get("Content-Type"), "application/jrd+json")
			var got relay.JRD
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
			require.Equal(t, jrd, got)
		default:
			require.Equal(t, http.StatusNotFound, rec.Code)
		}
	})
}
