package relay_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store/memstore"
)

// wait bounds how long a test waits for something that normally happens
// in milliseconds; it is a failure bound, not a performance check.
const wait = 10 * time.Second

// startRelay runs a relay on a loopback httptest server whose URL is the
// relay's BaseURL, starts it and closes both at the end of the test.
func startRelay(t *testing.T, cfg relay.Config) *relay.Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.BaseURL = "http://" + ln.Addr().String()
	// The fake instances serve plain http on 127.0.0.N: the outbound guard
	// refuses both by default.
	if cfg.AllowPrivate == nil {
		cfg.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		cfg.AllowHTTP = true
	}
	r, _ := serveRelay(t, ln, cfg)
	return r
}

// serveRelay runs a relay built from cfg (quiet unless cfg has a logger)
// on a loopback httptest server on ln, starts it, closes both at the end
// of the test, and returns it with the server's URL.
func serveRelay(t *testing.T, ln net.Listener, cfg relay.Config) (*relay.Relay, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	r, err := relay.New(cfg)
	require.NoError(t, err)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: r.Handler()}}
	srv.Start()
	require.NoError(t, r.Start())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		require.NoError(t, r.Close(ctx))
	})
	return r, srv.URL
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newInstance starts a fake instance that signs its fetches, as real
// Mastodon and Pleroma do.
func newInstance(t *testing.T, f relaytest.Flavor) *relaytest.Instance {
	t.Helper()
	return relaytest.NewInstance(t, f, relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}})
}

// subscribe subscribes instances to r and waits until each saw its Accept.
func subscribe(t *testing.T, r *relay.Relay, instances ...*relaytest.Instance) {
	t.Helper()
	for _, i := range instances {
		_, err := i.Subscribe(context.Background(), r.InboxURL(), r.ActorID())
		require.NoError(t, err, "%s subscribes", i.Flavor())
	}
	for _, i := range instances {
		i.WaitSubscribed(t, wait)
	}
}

// countFor returns how many activities of the given type about objectID an
// instance received.
func countFor(i *relaytest.Instance, typ, objectID string) int {
	n := 0
	for _, rc := range i.Received() {
		if rc.Type == typ && rc.ObjectID == objectID {
			n++
		}
	}
	return n
}

// waitFor waits until i received an activity of type typ about objectID
// and returns it.
func waitFor(t *testing.T, i *relaytest.Instance, typ, objectID string) relaytest.Received {
	t.Helper()
	return i.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
		return rc.Type == typ && rc.ObjectID == objectID
	})
}

// newMemStore returns an in-memory store closed at the end of the test.
func newMemStore(t *testing.T) *memstore.Store {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { _ = st.Close() })
	return st
}
