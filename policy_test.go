package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// memRelay runs a relay named host on network with store st until the end
// of the test.
func memRelay(t *testing.T, network *memnet.Network, host string, st store.Store, cfg relay.Config) *relay.Relay {
	t.Helper()
	cfg.BaseURL, cfg.Transport, cfg.Store, cfg.Logger = "https://"+host, network, st, quietLogger()
	r, err := relay.New(cfg)
	require.NoError(t, err)
	network.Handle(host, r.Handler())
	require.NoError(t, r.Start())
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

// BlockDomain ends the subscriptions on the domain, refuses its requests,
// stops deliveries to it and persists in the store, where another relay on
// the same store finds it; UnblockDomain lets the domain subscribe again.
func TestBlockDomain(t *testing.T) {
	var network memnet.Network
	st := newMemStore(t)
	r := memRelay(t, &network, "relay.test", st, relay.Config{})
	opts := func(host string) relaytest.Options {
		return relaytest.Options{Network: &network, Host: host, Logf: func(string, ...any) {}}
	}
	good := relaytest.NewInstance(t, relaytest.Mastodon, opts("good.test"))
	other := relaytest.NewInstance(t, relaytest.Misskey, opts("other.test"))
	bad := relaytest.NewInstance(t, relaytest.Pleroma, opts("sub.bad.test"))
	subscribe(t, r, good, other, bad)
	ctx := context.Background()

	require.NoError(t, r.BlockDomain(ctx, " *.Bad.Test. "))
	list, err := r.BlockedDomains(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"bad.test"}, list)
	_, err = r.Subscriber(ctx, bad.RelayActorID())
	assert.ErrorIs(t, err, relay.ErrNotSubscribed, "the subscription on the blocked domain ended")
	raw, err := st.GetValue(ctx, "relay/blocked-domains")
	require.NoError(t, err)
	var doc struct{ Domains []string }
	require.NoError(t, json.Unmarshal(raw, &doc))
	assert.Equal(t, []string{"bad.test"}, doc.Domains, "kept in the store")

	code, text := status(t, bad, r, "alice", createDoc(bad, "alice", "1"))
	assert.Equal(t, http.StatusForbidden, code, text)
	n, err := good.Post(ctx, r.InboxURL(), "alice", "hello")
	require.NoError(t, err)
	waitFor(t, other, "Create", n.ID)
	require.NoError(t, r.Close(ctx)) // every delivery has been attempted
	assert.Zero(t, countFor(bad, "Announce", n.ID), "nothing delivered to the blocked domain")

	// A second relay on the same store reads the list at New.
	r2 := memRelay(t, &network, "relay2.test", st, relay.Config{})
	_, err = bad.Subscribe(ctx, r2.InboxURL(), r2.ActorID())
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, http.StatusForbidden, he.StatusCode)

	require.NoError(t, r2.UnblockDomain(ctx, "bad.test"))
	require.NoError(t, r2.UnblockDomain(ctx, "bad.test"), "unblocking twice is fine")
	list, err = r2.BlockedDomains(ctx)
	require.NoError(t, err)
	assert.Empty(t, list)
	_, err = bad.Subscribe(ctx, r2.InboxURL(), r2.ActorID())
	require.NoError(t, err, "an unblocked domain may subscribe again")
}

// Domains of Config.BlockedDomains stay blocked whatever the run-time list
// says, malformed domains are refused, and a started relay picks up a
// change made by another relay on the same store.
func TestBlockDomainRules(t *testing.T) {
	var network memnet.Network
	st := newMemStore(t)
	clock := newFakeClock()
	r := memRelay(t, &network, "relay.test", st, relay.Config{BlockedDomains: []string{"config.test"}, Clock: clock})
	ctx := context.Background()
	for _, d := range []string{"", "  ", "a b.test", "alice@x.test", "x.test/path"} {
		assert.Error(t, r.BlockDomain(ctx, d), "%q", d)
	}
	require.NoError(t, r.UnblockDomain(ctx, "config.test"))
	cfgInst := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &network, Host: "config.test", Logf: func(string, ...any) {}})
	_, err := cfgInst.Subscribe(ctx, r.InboxURL(), r.ActorID())
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he, "Config.BlockedDomains is not changed by UnblockDomain")
	assert.Equal(t, http.StatusForbidden, he.StatusCode)

	// Another relay sharing the store blocks a domain; r follows within a
	// refresh.
	late := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &network, Host: "late.test", Logf: func(string, ...any) {}})
	r2, err := relay.New(relay.Config{BaseURL: "https://relay2.test", Transport: &network, Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r2.BlockDomain(ctx, "late.test"))
	require.NoError(t, r2.Close(ctx))
	refreshed := false
	for deadline := time.Now().Add(wait); time.Now().Before(deadline) && !refreshed; {
		clock.Advance(time.Minute)
		_, err = late.Subscribe(ctx, r.InboxURL(), r.ActorID())
		refreshed = errors.As(err, &he) && he.StatusCode == http.StatusForbidden
		if !refreshed {
			// Subscribed before the refresh: take it back for the next try.
			_ = late.Unsubscribe(ctx, r.InboxURL())
			time.Sleep(10 * time.Millisecond)
		}
	}
	assert.True(t, refreshed, "the block made through another relay took effect")
}
