package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/relaytest"
)

// relay filter prints, sets and removes a subscriber's filter on the
// running relay, which applies it at once; invalid filters and unknown
// subscribers are refused with one clear line.
func TestFilterCommand(t *testing.T) {
	dir := t.TempDir()
	p := startRelayProcess(t, dir)
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	masto := quietInstance(t, relaytest.Mastodon)
	gts := quietInstance(t, relaytest.GoToSocial)
	for _, i := range []*relaytest.Instance{masto, gts} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
		i.WaitSubscribed(t, 10*time.Second)
	}
	sub := gts.RelayActorID()

	assert.Equal(t, "none\n", relayCmd(t, dir, "filter", sub))
	out, err := relayCmdErr(dir, []byte(`{"languages": ["de"], "max_posts_per_hour": 60}`), "filter", sub, "-")
	require.NoError(t, err)
	assert.JSONEq(t, `{"languages": ["de"], "max_posts_per_hour": 60}`, out)
	assert.JSONEq(t, `{"languages": ["de"], "max_posts_per_hour": 60}`, relayCmd(t, dir, "filter", sub))

	english, err := masto.PostWith(ctx, inbox, "alice", "filtered out", relaytest.PostOptions{Language: "en"})
	require.NoError(t, err)
	german, err := masto.PostWith(ctx, inbox, "alice", "durchgelassen", relaytest.PostOptions{Language: "de"})
	require.NoError(t, err)
	gts.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.ObjectID == german.ID })

	_, err = relayCmdErr(dir, []byte(`{"media": "sometimes"}`), "filter", sub, "-")
	assert.EqualError(t, err, `relay: invalid filter: media must be "with", "without" or empty, not "sometimes"`)
	_, err = relayCmdErr(dir, []byte(`{"langs": ["de"]}`), "filter", sub, "-")
	assert.ErrorContains(t, err, `unknown field "langs"`)
	_, err = relayCmdErr(dir, []byte(`{}`), "filter", "https://nobody.example/actor", "-")
	assert.EqualError(t, err, "unknown actor https://nobody.example/actor")
	assert.Equal(t, "none\n", relayCmd(t, dir, "filter", sub, "none"))
	assert.Equal(t, "none\n", relayCmd(t, dir, "filter", sub))

	p.stop(t) // every delivery has been attempted
	for _, rc := range gts.Received() {
		assert.NotEqual(t, english.ID, rc.ObjectID, "the filter keeps English posts from gts")
	}
	_, err = relayCmdErr(dir, nil, "filter", sub)
	assert.EqualError(t, err, "no relay is running on "+dir)
}

// With -approval, instance follows of a topic actor wait as pending in
// relay topic-followers; relay approve -topic accepts one, relay refuse
// -topic refuses one.
func TestTopicFollowerCommands(t *testing.T) {
	dir := t.TempDir()
	p := startRelayProcess(t, dir, "-approval")
	cats := p.BaseURL + "/tag/cats"
	ctx := context.Background()
	masto := quietInstance(t, relaytest.Mastodon)
	pleroma := quietInstance(t, relaytest.Pleroma)
	_, err := masto.Subscribe(ctx, cats, "")
	require.NoError(t, err)
	_, err = pleroma.Subscribe(ctx, cats, cats)
	require.NoError(t, err)

	var pending []struct{ Topic, Actor, Kind, State string }
	require.NoError(t, json.Unmarshal([]byte(relayCmd(t, dir, "topic-followers", "-state", "pending", "-json")), &pending))
	require.Len(t, pending, 2)
	for _, f := range pending {
		assert.Equal(t, "tag/cats", f.Topic)
		assert.Equal(t, "pending", f.State)
	}
	table := relayCmd(t, dir, "topic-followers")
	assert.Contains(t, table, "TOPIC")
	assert.Contains(t, table, pleroma.RelayActorID())

	out := relayCmd(t, dir, "approve", "-topic", "tag/cats", masto.RelayActorID())
	assert.Equal(t, "approved "+masto.RelayActorID()+" (follow of tag/cats)\n", out)
	masto.WaitSubscribed(t, 10*time.Second)
	relayCmd(t, dir, "refuse", "-topic", "tag/Cats", pleroma.RelayActorID())
	require.Eventually(t, func() bool { return pleroma.SubscriptionState(cats) == relaytest.StateRejected },
		10*time.Second, 10*time.Millisecond, "the refused follower gets a Reject")
	assert.Empty(t, listSubscribers(t, dir), "topic follows are not subscriptions of the relay actor")

	_, err = relayCmdErr(dir, nil, "approve", "-topic", "tag/dogs", masto.RelayActorID())
	assert.EqualError(t, err, "unknown follow of tag/dogs by "+masto.RelayActorID())
	_, err = relayCmdErr(dir, nil, "refuse", "-topic", "tag/cats", "-reason", "no", masto.RelayActorID())
	assert.ErrorContains(t, err, "-reason is for subscriptions")
	_, err = relayCmdErr(dir, nil, "topic-followers", "-topic", "cats")
	assert.ErrorContains(t, err, "unknown topic")
}
