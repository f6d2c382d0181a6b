package main

import (
	"context"
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
