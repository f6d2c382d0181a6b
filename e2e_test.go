package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// TestFederationEndToEnd runs a relay with four fake instances (Mastodon,
// Misskey, Pleroma and GoToSocial), each verifying the relay's signatures
// the way its flavor does, through subscribing, publishing, boosting,
// editing, deleting and unsubscribing.
func TestFederationEndToEnd(t *testing.T) {
	r := startRelay(t, relay.Config{})
	ctx := context.Background()
	inbox := r.InboxURL()

	masto := newInstance(t, relaytest.Mastodon)
	misskey := newInstance(t, relaytest.Misskey)
	pleroma := newInstance(t, relaytest.Pleroma)
	gts := newInstance(t, relaytest.GoToSocial)
	all := []*relaytest.Instance{masto, misskey, pleroma, gts}
	subscribe(t, r, all...)

	t.Run("subscriptions", func(t *testing.T) {
		subs, err := r.Subscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
		require.NoError(t, err)
		assert.Len(t, subs, 4)
		for _, i := range all {
			s, err := r.Subscriber(ctx, i.RelayActorID())
			require.NoError(t, err, i.Flavor())
			assert.Equal(t, store.StateAccepted, s.State, i.Flavor())
			want := store.ProtocolMastodon
			if i.Flavor().LitePub() {
				want = store.ProtocolLitePub
			}
			assert.Equal(t, want, s.Protocol, i.Flavor())
		}
		// Mastodon gets an Accept that embeds its Follow, with an id on the relay host.
		acc := masto.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Accept" })
		var doc struct {
			ID     string `json:"id"`
			Actor  string `json:"actor"`
			Object struct {
				ID     string `json:"id"`
				Type   string `json:"type"`
				Object string `json:"object"`
			} `json:"object"`
		}
		require.NoError(t, json.Unmarshal(acc.Body, &doc))
		assert.Equal(t, r.ActorID(), doc.Actor)
		assert.Equal(t, "Follow", doc.Object.Type)
		assert.Equal(t, relay.PublicCollection, doc.Object.Object)
		assert.Contains(t, doc.ID, r.ActorID()[:len(r.ActorID())-len("/actor")]+"/activities/")

		// Pleroma accepts the relay's follow-back; GoToSocial never does,
		// and it is a full subscriber all the same.
		require.Eventually(t, func() bool {
			s, err := r.Subscriber(ctx, pleroma.RelayActorID())
			return err == nil && s.FollowBackState == store.StateAccepted
		}, wait, 10*time.Millisecond)
		assert.Contains(t, pleroma.Followers(), r.ActorID())
		s, err := r.Subscriber(ctx, gts.RelayActorID())
		require.NoError(t, err)
		assert.Equal(t, store.StatePending, s.FollowBackState)
		assert.Equal(t, store.StateAccepted, s.State)
	})

	// A Mastodon post: verbatim to Misskey (its LD signature still
	// verifies), an Announce by the relay to the LitePub subscribers,
	// nothing back to Mastodon.
	note, err := masto.Post(ctx, inbox, "alice", "hello fediverse")
	require.NoError(t, err)
	t.Run("create from Mastodon", func(t *testing.T) {
		rc := waitFor(t, misskey, "Create", note.ID)
		assert.True(t, rc.LDVerified, "LD signature survives the relay")
		assert.False(t, rc.Dropped, rc.Reason)
		assert.Equal(t, r.ActorID()+"#main-key", rc.KeyID)
		for _, i := range []*relaytest.Instance{pleroma, gts} {
			rc := waitFor(t, i, "Announce", note.ID)
			assert.Equal(t, r.ActorID(), rc.Actor, i.Flavor())
			assertAnnounceShape(t, rc.Body, r)
			require.Eventually(t, func() bool { return fetched(i, note.ID) }, wait, 10*time.Millisecond, "%s fetches the announced note", i.Flavor())
		}
	})

	gtsNote, err := gts.Post(ctx, inbox, "gus", "from gotosocial")
	require.NoError(t, err)
	t.Run("create from GoToSocial, signed by its instance key", func(t *testing.T) {
		// No LD signature: Mastodon-style subscribers get an Announce.
		for _, i := range []*relaytest.Instance{masto, misskey, pleroma} {
			rc := waitFor(t, i, "Announce", gtsNote.ID)
			assert.Equal(t, r.ActorID(), rc.Actor, i.Flavor())
			assert.False(t, rc.Dropped, "%s: %s", i.Flavor(), rc.Reason)
		}
	})

	plNote, err := pleroma.Post(ctx, inbox, "pat", "from pleroma")
	require.NoError(t, err)
	t.Run("announce from Pleroma's relay actor", func(t *testing.T) {
		for _, i := range []*relaytest.Instance{masto, misskey, gts} {
			rc := waitFor(t, i, "Announce", plNote.ID)
			assert.Equal(t, r.ActorID(), rc.Actor, i.Flavor())
		}
	})

	boostID, err := masto.Boost(ctx, inbox, "bob", gtsNote.ID)
	require.NoError(t, err)
	t.Run("boost from Mastodon", func(t *testing.T) {
		rc := misskey.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.ID == boostID })
		assert.Equal(t, "Announce", rc.Type)
		assert.True(t, rc.LDVerified)
		// LitePub subscribers already got the boosted note from GoToSocial's
		// post; the relay relays each object once.
		assert.Equal(t, 1, countFor(pleroma, "Announce", gtsNote.ID))
	})

	require.NoError(t, masto.Edit(ctx, inbox, note, "hello, edited"))
	t.Run("update from Mastodon", func(t *testing.T) {
		rc := waitFor(t, misskey, "Update", note.ID)
		assert.True(t, rc.LDVerified)
		// GoToSocial gets the Update itself and fetches the status again
		// from its origin (an Announce of a status it has would change
		// nothing); Pleroma, which takes no relayed edit, gets nothing.
		rc = waitFor(t, gts, "Update", note.ID)
		assert.False(t, rc.Dropped, rc.Reason)
		require.Eventually(t, func() bool {
			doc, _ := gts.Status(note.ID)
			return strings.Contains(string(doc), "hello, edited")
		}, wait, 10*time.Millisecond, "GoToSocial shows the edit")
		assert.Equal(t, 1, countFor(gts, "Announce", note.ID))
		assert.Equal(t, 1, countFor(pleroma, "Announce", note.ID))
	})

	require.NoError(t, masto.Delete(ctx, inbox, note))
	t.Run("delete from Mastodon", func(t *testing.T) {
		rc := waitFor(t, misskey, "Delete", note.ID)
		assert.True(t, rc.LDVerified)
	})

	mkNote, err := misskey.Post(ctx, inbox, "mika", "from misskey")
	require.NoError(t, err)
	t.Run("create from Misskey", func(t *testing.T) {
		rc := waitFor(t, masto, "Create", mkNote.ID)
		assert.True(t, rc.LDVerified)
		assert.False(t, rc.Dropped, rc.Reason)
	})

	t.Run("exactly once, nothing back to the origin", func(t *testing.T) {
		for _, i := range all {
			seen := map[string]int{}
			for _, rc := range i.Received() {
				seen[rc.ID]++
			}
			for id, n := range seen {
				assert.Equal(t, 1, n, "%s received %s %d times", i.Flavor(), id, n)
			}
			assert.Empty(t, i.Rejected(), "%s refused requests from the relay", i.Flavor())
		}
		assert.Zero(t, countFor(masto, "Create", note.ID))
		// Pleroma refuses relayed edits and deletions, GoToSocial ignores
		// relayed deletions: none was sent to them.
		assert.Zero(t, countFor(pleroma, "Update", note.ID)+countFor(pleroma, "Delete", note.ID))
		assert.Zero(t, countFor(gts, "Delete", note.ID))
		assert.Zero(t, countFor(gts, "Announce", gtsNote.ID))
		assert.Zero(t, countFor(pleroma, "Announce", plNote.ID))
		assert.Zero(t, countFor(misskey, "Create", mkNote.ID))
	})

	t.Run("unsubscribe", func(t *testing.T) {
		require.NoError(t, misskey.Unsubscribe(ctx, inbox))
		require.Eventually(t, func() bool {
			_, err := r.Subscriber(ctx, misskey.RelayActorID())
			return errors.Is(err, relay.ErrNotSubscribed)
		}, wait, 10*time.Millisecond)
		before := len(misskey.Received())
		n, err := masto.Post(ctx, inbox, "alice", "after misskey left")
		require.NoError(t, err)
		waitFor(t, pleroma, "Announce", n.ID) // the others still get it
		waitFor(t, gts, "Announce", n.ID)
		assert.Len(t, misskey.Received(), before, "an unsubscribed instance receives nothing")

		require.NoError(t, masto.Unsubscribe(ctx, inbox))
		require.NoError(t, pleroma.Unsubscribe(ctx, inbox))
		// GoToSocial sends no Undo; the operator removes it.
		gtsBefore := len(gts.Received())
		require.NoError(t, r.Remove(ctx, gts.RelayActorID()))
		require.Eventually(t, func() bool {
			subs, err := r.Subscribers(ctx, store.SubscriberFilter{})
			return err == nil && len(subs) == 0
		}, wait, 10*time.Millisecond)
		_, err = masto.Post(ctx, inbox, "alice", "nobody is listening")
		var he *relaytest.HTTPError
		require.ErrorAs(t, err, &he, "a former subscriber cannot publish")
		assert.Equal(t, http.StatusForbidden, he.StatusCode)
		// GoToSocial is told: a Reject of its Follow and an Undo of the
		// relay's follow-back, and nothing else.
		gts.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
		gts.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Undo" })
		assert.Len(t, gts.Received(), gtsBefore+2)
	})
}

// assertAnnounceShape checks a relay Announce: addressed to the public and
// the relay's followers (GoToSocial refuses one without to/cc), published.
func assertAnnounceShape(t *testing.T, body []byte, r *relay.Relay) {
	t.Helper()
	var a struct {
		To        []string `json:"to"`
		Cc        []string `json:"cc"`
		Published string   `json:"published"`
	}
	require.NoError(t, json.Unmarshal(body, &a))
	assert.Contains(t, a.To, relay.PublicCollection)
	assert.Contains(t, a.Cc, r.ActorID()+"/followers")
	_, err := time.Parse(time.RFC3339, a.Published)
	assert.NoError(t, err, "published")
}

// fetched reports whether i fetched objectID successfully after an Announce.
func fetched(i *relaytest.Instance, objectID string) bool {
	for _, rc := range i.Received() {
		if rc.Type == "Announce" && rc.ObjectID == objectID && rc.FetchDone {
			return rc.FetchOK()
		}
	}
	return false
}
