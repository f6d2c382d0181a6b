package relay_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
)

// A Follow from a blocked domain is refused (403) and answered with one
// Reject carrying the block's public reason; a second Follow within the
// hour gets none, and nothing else (no post, no follow-back) ever reaches
// the blocked instance, Mastodon or LitePub style.
func TestFollowFromBlockedDomainGetsReject(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{})
	ctx := context.Background()
	good := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "good.test"))
	subscribe(t, r, good)
	require.NoError(t, r.BlockDomains(ctx,
		relay.DomainBlock{Domain: "bad.test", Reason: "harassment"},
		relay.DomainBlock{Domain: "worse.test", Reason: "spam"}))
	bad := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "bad.test"))
	worse := relaytest.NewInstance(t, relaytest.Pleroma, memOpts(&network, "worse.test"))
	cats := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "cats.bad.test"))

	_, err := bad.Subscribe(ctx, r.InboxURL(), "")
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, 403, he.StatusCode)
	_, err = worse.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.ErrorAs(t, err, &he)
	assert.Equal(t, 403, he.StatusCode)

	rc := bad.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "harassment", "the Reject carries the block's public reason")
	rc = worse.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "spam")
	const topic = "https://relay.test/tag/cats"
	_, err = cats.Subscribe(ctx, topic, "")
	require.ErrorAs(t, err, &he)
	assert.Equal(t, 403, he.StatusCode)
	rc = cats.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "harassment", "a subdomain's Follow of a topic gets its Reject too")
	assert.Contains(t, string(rc.Body), `"actor":"`+topic+`"`, "from the topic actor")

	_, err = bad.Subscribe(ctx, r.InboxURL(), "") // again, within the hour
	require.ErrorAs(t, err, &he)
	n, err := good.Post(ctx, r.InboxURL(), "alice", "not for blocked servers")
	require.NoError(t, err)
	require.NoError(t, r.Close(ctx)) // every delivery has been attempted, every Reject sent
	for _, i := range []*relaytest.Instance{bad, worse, cats} {
		var types []string
		for _, rc := range i.Received() {
			types = append(types, rc.Type)
			assert.NotEqual(t, n.ID, rc.ObjectID)
		}
		assert.Equal(t, []string{"Reject"}, types, "one Reject, nothing else")
	}
	_, err = r.Subscriber(ctx, bad.RelayActorID())
	assert.ErrorIs(t, err, relay.ErrNotSubscribed, "nothing is stored for a blocked follower")
}

// A Follow that claims an actor on a blocked domain but is not signed with
// that actor's key gets no Reject: the blocked domain only ever hears
// about Follows it really sent.
func TestForgedFollowFromBlockedDomainGetsNothing(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{BlockedDomains: []string{"bad.test"}})
	ctx := context.Background()
	forger := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "forger.test"))
	bad := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "bad.test"))
	follow := mustJSON(map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams", "id": bad.ActorID("eve") + "#follow/1",
		"type": "Follow", "actor": bad.ActorID("eve"), "object": relay.PublicCollection,
	})
	code, text := status(t, forger, r, "mallory", follow, relaytest.WithKeyID(bad.ActorID("eve")+"#main-key"))
	assert.Equal(t, 403, code, text)
	require.NoError(t, r.Close(ctx))
	for _, rc := range bad.Received() {
		assert.NotEqual(t, "Reject", rc.Type, "no Reject for a forged Follow")
	}
}
