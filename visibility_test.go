package relay_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
)

// marker posts a public note from i and waits until every one of others
// got it: what i sent to the relay before it has been dealt with.
func marker(t *testing.T, r *relay.Relay, i *relaytest.Instance, others ...*relaytest.Instance) {
	t.Helper()
	n, err := i.Post(context.Background(), r.InboxURL(), "marker", "marker")
	require.NoError(t, err)
	for _, o := range others {
		o.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.ObjectID == n.ID })
	}
}

// receivedAbout counts what i received about objectID, of any type.
func receivedAbout(i *relaytest.Instance, objectID string) int {
	n := 0
	for _, rc := range i.Received() {
		if rc.ObjectID == objectID {
			n++
		}
	}
	return n
}

// createAround is a public Create by user on i embedding a note addressed
// to, cc.
func createAround(i *relaytest.Instance, user string, to, cc []string) ([]byte, string) {
	actor := i.ActorID(user)
	noteID := actor + "/statuses/" + time.Now().Format("150405.000000000")
	b, _ := json.Marshal(map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams", "id": noteID + "/activity", "type": "Create", "actor": actor,
		"to": []string{relay.PublicCollection}, "cc": []string{actor + "/followers"},
		"object": map[string]any{
			"id": noteID, "type": "Note", "attributedTo": actor, "content": "<p>hidden</p>", "to": to, "cc": cc,
		},
	})
	return b, noteID
}

func TestRelaysOnlyWhatAuthorsMadePublic(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{})
	inbox := r.InboxURL()
	masto := newInstance(t, relaytest.Mastodon)
	misskey := newInstance(t, relaytest.Misskey)
	pleroma := newInstance(t, relaytest.Pleroma)
	gts := newInstance(t, relaytest.GoToSocial)
	subscribe(t, r, masto, misskey, pleroma, gts)

	t.Run("unlisted post", func(t *testing.T) {
		n, err := gts.PostVisible(ctx, inbox, "gus", "unlisted", relaytest.Unlisted)
		require.NoError(t, err, "accepted without effect")
		marker(t, r, gts, masto, misskey, pleroma)
		for _, i := range []*relaytest.Instance{masto, misskey, pleroma} {
			assert.Zero(t, receivedAbout(i, n.ID), "%s got an unlisted post", i.Flavor())
		}

		t.Run("its edit and its deletion", func(t *testing.T) {
			require.NoError(t, gts.Edit(ctx, inbox, n, "unlisted, edited"))
			require.NoError(t, gts.Delete(ctx, inbox, n))
			marker(t, r, gts, masto, misskey, pleroma)
			for _, i := range []*relaytest.Instance{masto, misskey, pleroma} {
				assert.Zero(t, receivedAbout(i, n.ID), "%s got the edit or deletion of an unlisted post", i.Flavor())
			}
		})
	})

	t.Run("followers-only post", func(t *testing.T) {
		n, err := misskey.PostVisible(ctx, inbox, "mika", "followers only", relaytest.FollowersOnly)
		var he *relaytest.HTTPError
		require.ErrorAs(t, err, &he)
		assert.Equal(t, http.StatusForbidden, he.StatusCode)
		marker(t, r, misskey, masto, pleroma, gts)
		for _, i := range []*relaytest.Instance{masto, pleroma, gts} {
			assert.Zero(t, receivedAbout(i, n.ID), "%s got a followers-only post", i.Flavor())
		}
	})

	t.Run("public Create around an unlisted or followers-only post", func(t *testing.T) {
		followers := masto.ActorID("alice") + "/followers"
		for _, c := range []struct {
			name   string
			to, cc []string
		}{
			{"unlisted", []string{followers}, []string{relay.PublicCollection}},
			{"followers-only", []string{followers}, nil},
			{"direct", []string{gts.ActorID("gus")}, nil},
		} {
			body, noteID := createAround(masto, "alice", c.to, c.cc)
			resp, err := masto.Send(ctx, inbox, "alice", body)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusAccepted, resp.StatusCode, c.name)
			marker(t, r, masto, misskey, pleroma, gts)
			for _, i := range []*relaytest.Instance{misskey, pleroma, gts} {
				assert.Zero(t, receivedAbout(i, noteID), "%s: %s got it", c.name, i.Flavor())
			}
		}
	})

	t.Run("LitePub Announce by IRI: the fetched object decides", func(t *testing.T) {
		hidden, err := pleroma.PostVisible(ctx, inbox, "pat", "unlisted on pleroma", relaytest.Unlisted)
		require.NoError(t, err)
		shown, err := pleroma.PostVisible(ctx, inbox, "pat", "public on pleroma", relaytest.Public)
		require.NoError(t, err)
		for _, i := range []*relaytest.Instance{masto, misskey, gts} {
			waitFor(t, i, "Announce", shown.ID)
			assert.Zero(t, receivedAbout(i, hidden.ID), "%s got Pleroma's unlisted post", i.Flavor())
		}
	})

	t.Run("public post", func(t *testing.T) {
		n, err := gts.PostVisible(ctx, inbox, "gus", "public", relaytest.Public)
		require.NoError(t, err)
		for _, i := range []*relaytest.Instance{masto, misskey, pleroma} {
			waitFor(t, i, "Announce", n.ID)
		}
	})
}

func TestRelayUnlistedOptIn(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{RelayUnlisted: true})
	inbox := r.InboxURL()
	masto := newInstance(t, relaytest.Mastodon)
	gts := newInstance(t, relaytest.GoToSocial)
	subscribe(t, r, masto, gts)

	n, err := gts.PostVisible(ctx, inbox, "gus", "unlisted", relaytest.Unlisted)
	require.NoError(t, err)
	rc := waitFor(t, masto, "Announce", n.ID)
	// The relay's Announce keeps the post unlisted.
	var a struct{ To, Cc []string }
	require.NoError(t, json.Unmarshal(rc.Body, &a))
	assert.NotContains(t, a.To, relay.PublicCollection)
	assert.Contains(t, a.Cc, relay.PublicCollection)

	hidden, err := gts.PostVisible(ctx, inbox, "gus", "followers only", relaytest.FollowersOnly)
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he, "followers-only posts stay private with the opt-in")
	marker(t, r, gts, masto)
	assert.Zero(t, receivedAbout(masto, hidden.ID))
}

// TestEditsBoostsAndUnboostsReachEveryFlavor follows a post, its edit, a
// boost and its withdrawal to every kind of subscriber, each applying what
// it gets the way the real server does.
func TestEditsBoostsAndUnboostsReachEveryFlavor(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{})
	inbox := r.InboxURL()
	masto := newInstance(t, relaytest.Mastodon)
	masto2 := newInstance(t, relaytest.Mastodon)
	misskey := newInstance(t, relaytest.Misskey)
	misskey2 := newInstance(t, relaytest.Misskey)
	pleroma := newInstance(t, relaytest.Pleroma)
	gts := newInstance(t, relaytest.GoToSocial)
	friendica := newInstance(t, relaytest.Friendica)
	subscribe(t, r, masto, masto2, misskey, misskey2, pleroma, gts, friendica)
	require.Eventually(t, func() bool {
		s, err := r.Subscriber(ctx, gts.RelayActorID())
		return err == nil && s.Software == "gotosocial"
	}, wait, 10*time.Millisecond, "the relay learns GoToSocial's software from its NodeInfo")

	note, err := masto.Post(ctx, inbox, "alice", "first version")
	require.NoError(t, err)
	for _, i := range []*relaytest.Instance{masto2, misskey, pleroma, gts, friendica} {
		i.WaitFor(t, wait, func([]relaytest.Received) bool { _, ok := i.Status(note.ID); return ok })
	}

	t.Run("edit", func(t *testing.T) {
		require.NoError(t, masto.Edit(ctx, inbox, note, "second version"))
		// Mastodon applies the LD-signed Update; GoToSocial fetches the
		// status again (the relay signed, not the author).
		for _, i := range []*relaytest.Instance{masto2, gts} {
			i.WaitFor(t, wait, func([]relaytest.Received) bool {
				doc, _ := i.Status(note.ID)
				return strings.Contains(string(doc), "second version")
			})
		}
		// Misskey gets it and, as the real one, applies no edit of a note.
		rc := waitFor(t, misskey, "Update", note.ID)
		assert.True(t, rc.LDVerified)
		// Pleroma and Friendica can take no relayed edit: nothing is sent
		// to them, and they keep the first version.
		marker(t, r, masto, pleroma, friendica)
		for _, i := range []*relaytest.Instance{pleroma, friendica} {
			assert.Zero(t, countFor(i, "Update", note.ID), i.Flavor())
			assert.Equal(t, 1, countFor(i, "Announce", note.ID), i.Flavor())
			doc, _ := i.Status(note.ID)
			assert.Contains(t, string(doc), "first version", i.Flavor())
		}
	})

	t.Run("Announce date", func(t *testing.T) {
		// Over 64 KiB: Misskey gets the relay's Announce instead, dated
		// no earlier than the note (made with milliseconds).
		big, err := misskey.Post(ctx, inbox, "mika", strings.Repeat("long ", 14000))
		require.NoError(t, err)
		rc := misskey2.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
			return rc.Type == "Announce" && rc.ObjectID == big.ID && rc.FetchDone
		})
		assert.False(t, rc.Dropped, rc.Reason)
		assert.True(t, misskey2.HasBoost(rc.ID))
	})

	// A post the relay never announced, on a server that is not
	// subscribed, boosted by a subscriber's user.
	outsider := newInstance(t, relaytest.Mastodon)
	far, err := outsider.Post(ctx, outsider.Inbox(), "olga", "from outside")
	require.NoError(t, err)
	boostID, err := masto.Boost(ctx, inbox, "bob", far.ID)
	require.NoError(t, err)
	relayAnnounce := map[*relaytest.Instance]string{}
	t.Run("boost", func(t *testing.T) {
		for _, i := range []*relaytest.Instance{masto2, misskey} {
			i.WaitFor(t, wait, func([]relaytest.Received) bool { return i.HasBoost(boostID) })
		}
		for _, i := range []*relaytest.Instance{pleroma, gts} {
			rc := i.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
				return rc.Type == "Announce" && rc.ObjectID == far.ID && rc.FetchDone
			})
			require.True(t, i.HasBoost(rc.ID), "%s: %s", i.Flavor(), rc.Reason)
			relayAnnounce[i] = rc.ID
		}
	})

	t.Run("un-boost", func(t *testing.T) {
		require.NoError(t, masto.Unboost(ctx, inbox, boostID))
		for _, i := range []*relaytest.Instance{masto2, misskey} {
			i.WaitFor(t, wait, func([]relaytest.Received) bool { return !i.HasBoost(boostID) })
		}
		for _, i := range []*relaytest.Instance{pleroma, gts} {
			id := relayAnnounce[i]
			i.WaitFor(t, wait, func([]relaytest.Received) bool { return !i.HasBoost(id) })
		}
	})

	t.Run("un-boost of a post the relay announced for its Create", func(t *testing.T) {
		relayOwn := pleroma.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
			return rc.Type == "Announce" && rc.ObjectID == note.ID
		}).ID
		id, err := masto2.Boost(ctx, inbox, "bea", note.ID)
		require.NoError(t, err)
		misskey.WaitFor(t, wait, func([]relaytest.Received) bool { return misskey.HasBoost(id) })
		require.NoError(t, masto2.Unboost(ctx, inbox, id))
		misskey.WaitFor(t, wait, func([]relaytest.Received) bool { return !misskey.HasBoost(id) })
		marker(t, r, masto2, pleroma, gts)
		// The relay's Announce was not made for this boost: it stays.
		assert.True(t, pleroma.HasBoost(relayOwn))
		assert.Zero(t, countFor(pleroma, "Undo", relayOwn))
	})

	t.Run("delete", func(t *testing.T) {
		require.NoError(t, masto.Delete(ctx, inbox, note))
		// Mastodon, Misskey and Friendica apply the LD-signed Delete.
		for _, i := range []*relaytest.Instance{masto2, misskey, friendica} {
			i.WaitFor(t, wait, func([]relaytest.Received) bool { _, ok := i.Status(note.ID); return !ok })
		}
		// Pleroma refuses relayed Deletes and GoToSocial ignores them:
		// neither is sent one.
		marker(t, r, masto, pleroma, gts)
		assert.Zero(t, countFor(pleroma, "Delete", note.ID))
		assert.Zero(t, countFor(gts, "Delete", note.ID))
	})

	for _, i := range []*relaytest.Instance{masto, masto2, misskey, misskey2, pleroma, gts, friendica} {
		assert.Empty(t, i.Rejected(), "%s refused requests from the relay", i.Flavor())
	}
}

// TestLitePubAnnounceOfAnUnfetchableObject: the relay never announces what
// it cannot see. A gone object is not relayed (202, so the sender does not
// retry); an origin that fails for now gets a 503 to retry later.
func TestLitePubAnnounceOfAnUnfetchableObject(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, relay.Config{})
	inbox := r.InboxURL()
	masto := newInstance(t, relaytest.Mastodon)
	pleroma := newInstance(t, relaytest.Pleroma)
	subscribe(t, r, masto, pleroma)

	status := http.StatusGone
	pleroma.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodGet && strings.HasPrefix(req.URL.Path, "/objects/") {
			return status
		}
		return 0
	})
	gone, err := pleroma.Post(ctx, inbox, "pat", "gone before the relay looks")
	require.NoError(t, err, "accepted without effect")

	status = http.StatusServiceUnavailable
	_, err = pleroma.Post(ctx, inbox, "pat", "origin down for now")
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, http.StatusServiceUnavailable, he.StatusCode)

	pleroma.SetFault(nil)
	marker(t, r, pleroma, masto)
	assert.Zero(t, receivedAbout(masto, gone.ID))
}
