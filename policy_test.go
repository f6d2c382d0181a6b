package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
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

// A refusal made while a repeated Follow waits for the FollowPolicy lasts:
// the Follow does not overwrite it with the policy's earlier decision.
func TestRefusalDuringFollowLasts(t *testing.T) {
	var network memnet.Network
	var calls atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	policy := func(ctx context.Context, req relay.FollowRequest) (relay.Decision, string) {
		if calls.Add(1) == 1 {
			return relay.DecisionPending, ""
		}
		close(entered)
		<-release
		return relay.DecisionAccept, ""
	}
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{FollowPolicy: policy})
	inst := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &network, Host: "m.test", Logf: func(string, ...any) {}})
	ctx := context.Background()
	_, err := inst.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	actor := inst.RelayActorID()

	done := make(chan error, 1)
	go func() { _, err := inst.Subscribe(ctx, r.InboxURL(), r.ActorID()); done <- err }()
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("the second Follow did not reach the policy")
	}
	require.NoError(t, r.Refuse(ctx, actor, "no"))
	close(release)
	require.NoError(t, <-done)
	s, err := r.Subscriber(ctx, actor)
	require.NoError(t, err)
	assert.Equal(t, store.StateRejected, s.State, "the refusal lasts")
	require.NoError(t, r.Close(ctx)) // every reply has been attempted
	for _, rc := range inst.Received() {
		assert.NotEqual(t, "Accept", rc.Type, "no Accept after the refusal")
	}
}

// The run-time list read concurrently (BlockedDomains, the periodic
// refresh) never replaces a block just made: a Follow from the domain
// right after BlockDomain returns is refused.
func TestBlockDomainNotRevertedByConcurrentReads(t *testing.T) {
	var network memnet.Network
	// Slow reads of values widen the window in which a read made before a
	// change could be installed after it.
	r := memRelay(t, &network, "relay.test", slowValues{newMemStore(t)}, relay.Config{})
	ctx := context.Background()
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = r.BlockedDomains(ctx)
				}
			}
		}()
	}
	defer func() { close(stop); readers.Wait() }()
	for i := range 30 {
		host := fmt.Sprintf("b%d.test", i)
		inst := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &network, Host: host, Logf: func(string, ...any) {}})
		require.NoError(t, r.BlockDomain(ctx, host))
		_, err := inst.Subscribe(ctx, r.InboxURL(), r.ActorID())
		var he *relaytest.HTTPError
		require.ErrorAs(t, err, &he, "a Follow from %s right after blocking it", host)
		assert.Equal(t, http.StatusForbidden, he.StatusCode)
	}
}

// slowValues is a store whose GetValue returns a millisecond after it
// read the value.
type slowValues struct{ store.Store }

func (s slowValues) GetValue(ctx context.Context, key string) ([]byte, error) {
	v, err := s.Store.GetValue(ctx, key)
	time.Sleep(time.Millisecond)
	return v, err
}

// notifyingStore is a store shared by several processes that tells them
// about value changes and enqueues (store.Notifier), as pgstore does; the
// test sends the notifications.
type notifyingStore struct {
	store.Store
	values, queue chan struct{}
}

func newNotifyingStore(s store.Store) *notifyingStore {
	return &notifyingStore{Store: s, values: make(chan struct{}, 1), queue: make(chan struct{}, 1)}
}

func (s *notifyingStore) QueueChanged() <-chan struct{}  { return s.queue }
func (s *notifyingStore) ValuesChanged() <-chan struct{} { return s.values }

// A relay on a store that notifies (store.Notifier) picks up a block made
// by another relay at once, without waiting for its periodic refresh: its
// clock never moves here.
func TestBlockDomainOfAnotherRelayVisibleAtOnce(t *testing.T) {
	var network memnet.Network
	st := newNotifyingStore(newMemStore(t))
	r := memRelay(t, &network, "relay.test", st, relay.Config{Clock: newFakeClock()})
	ctx := context.Background()
	late := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &network, Host: "late.test", Logf: func(string, ...any) {}})
	r2, err := relay.New(relay.Config{BaseURL: "https://relay2.test", Transport: &network, Store: st.Store, Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r2.BlockDomain(ctx, "late.test"))
	require.NoError(t, r2.Close(ctx))
	st.values <- struct{}{} // r2 wrote to the store underneath: the notification
	var he *relaytest.HTTPError
	refused := false
	for deadline := time.Now().Add(wait); time.Now().Before(deadline) && !refused; {
		_, err = late.Subscribe(ctx, r.InboxURL(), r.ActorID())
		refused = errors.As(err, &he) && he.StatusCode == http.StatusForbidden
		if !refused {
			_ = late.Unsubscribe(ctx, r.InboxURL())
			time.Sleep(10 * time.Millisecond)
		}
	}
	assert.True(t, refused, "the block made through another relay took effect without a refresh")
}
