package relay

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDiscoverSoftware(t *testing.T) {
	links := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch req.URL.Path {
		case "/.well-known/nodeinfo":
			_, _ = w.Write([]byte(links))
		case "/nodeinfo/2.0":
			_, _ = w.Write([]byte(`{"version":"2.0","software":{"name":"Pleroma","version":"2.9"}}`))
		case "/nodeinfo/2.1":
			_, _ = w.Write([]byte(`{"version":"2.1","software":{"name":"GoToSocial","version":"0.22"}}`))
		default:
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(srv.Close)
	r, err := New(Config{BaseURL: "https://relay.example", AllowHTTP: true,
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	ctx := context.Background()
	actor := srv.URL + "/users/alice"

	links = `{"links":[{"rel":"http://nodeinfo.diaspora.software/ns/schema/2.0","href":"` + srv.URL + `/nodeinfo/2.0"},
		{"rel":"http://nodeinfo.diaspora.software/ns/schema/2.1","href":"` + srv.URL + `/nodeinfo/2.1"}]}`
	name, err := r.discoverSoftware(ctx, actor)
	require.NoError(t, err)
	assert.Equal(t, "gotosocial", name, "the newest NodeInfo, lower case")

	// A NodeInfo document on another host is not followed.
	links = `{"links":[{"rel":"http://nodeinfo.diaspora.software/ns/schema/2.1","href":"http://127.0.0.2:1/nodeinfo/2.1"}]}`
	_, err = r.discoverSoftware(ctx, actor)
	assert.Error(t, err)

	links = `{"links":[]}`
	_, err = r.discoverSoftware(ctx, actor)
	assert.Error(t, err)
	assert.Empty(t, r.learnSoftware(ctx, actor), "unknown software is empty")
}
