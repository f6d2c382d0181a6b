package relaytest

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// forward sends body to to's inbox signed by from's relay actor: a relay's forward of a
// verbatim activity.
func forward(t *testing.T, from, to *Instance, body []byte) {
	t.Helper()
	sendAs(t, from, "", to, body)
}

// sendAs sends body to to's inbox, signed by keyOwner of from.
func sendAs(t *testing.T, from *Instance, keyOwner string, to *Instance, body []byte) {
	t.Helper()
	resp, err := from.Send(context.Background(), to.Inbox(), keyOwner, body)
	require.NoError(t, err)
	b := readAll(t, resp)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", b)
}

// lastOf returns the last record of type typ that i received.
func lastOf(t *testing.T, i *Instance, typ string) Received {
	t.Helper()
	rs := i.Received()
	for k := len(rs) - 1; k >= 0; k-- {
		if rs[k].Type == typ {
			return rs[k]
		}
	}
	t.Fatalf("%s received no %s", i.Flavor(), typ)
	return Received{}
}

// announceBody is an Announce of objectID by user on a, dated published.
func announceBody(a *Instance, user, objectID string, published time.Time) []byte {
	b, _ := json.Marshal(map[string]any{
		"@context": asContext, "id": a.URL() + "/activities/" + newUUID(), "type": "Announce",
		"actor": a.ActorID(user), "object": objectID, "published": published.UTC().Format(time.RFC3339Nano),
		"to": []any{publicIRI},
	})
	return b
}

func TestMisskeyDropsAnnounceOlderThanItsNote(t *testing.T) {
	ctx := context.Background()
	m := modes()[1]
	src := newInst(t, m, Misskey, "src.test")
	a := newInst(t, m, Mastodon, "a.test")
	mk := newInst(t, m, Misskey, "misskey.test")

	n, err := src.Post(ctx, a.Inbox(), "mika", "hello")
	require.NoError(t, err)
	// The note was made some milliseconds into its second.
	n.Published = n.Published.Truncate(time.Second).Add(500 * time.Millisecond)
	src.storeNoteForTest(n)

	early := announceBody(a, "alice", n.ID, n.Published.Truncate(time.Second))
	sendAs(t, a, "alice", mk, early)
	rc := mk.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Announce" && r.FetchDone })
	assert.True(t, rc.Dropped)
	assert.Contains(t, rc.Reason, "malformed createdAt")
	assert.False(t, mk.HasBoost(rc.ID))

	mk.ResetRecords()
	onTime := announceBody(a, "alice", n.ID, n.Published)
	sendAs(t, a, "alice", mk, onTime)
	rc = mk.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Announce" && r.FetchDone })
	assert.False(t, rc.Dropped, rc.Reason)
	assert.True(t, mk.HasBoost(rc.ID))
}

func TestGoToSocialAppliesForwardedUpdates(t *testing.T) {
	ctx := context.Background()
	m := modes()[1]
	src := newInst(t, m, Mastodon, "src.test")
	relay := newInst(t, m, Mastodon, "relay.test")
	gts := newInst(t, m, GoToSocial, "gts.test")

	n, err := src.Post(ctx, gts.Inbox(), "alice", "first")
	require.NoError(t, err)
	_, ok := gts.Status(n.ID)
	require.True(t, ok, "a Create signed by its author is applied")

	// An Announce of a status it has: nothing happens, not even a refetch.
	forward(t, relay, gts, announceBody(relay, "", n.ID, time.Now()))
	rc := lastOf(t, gts, "Announce")
	assert.True(t, rc.Dropped)
	assert.Empty(t, rc.FetchURL)

	// An Update forwarded by another actor: the status is fetched again from its origin.
	require.NoError(t, src.Edit(ctx, relay.Inbox(), n, "second"))
	update := lastOf(t, relay, "Update")
	forward(t, relay, gts, update.Body)
	rc = gts.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Update" && r.FetchDone })
	assert.True(t, rc.FetchOK(), rc.Reason)
	doc, ok := gts.Status(n.ID)
	require.True(t, ok)
	assert.Contains(t, string(doc), "second")

	// A forwarded Delete is ignored.
	require.NoError(t, src.Delete(ctx, relay.Inbox(), n))
	forward(t, relay, gts, lastOf(t, relay, "Delete").Body)
	assert.True(t, lastOf(t, gts, "Delete").Dropped)
	_, ok = gts.Status(n.ID)
	assert.True(t, ok)
}

func TestUndoOfAnnounce(t *testing.T) {
	ctx := context.Background()
	m := modes()[1]
	src := newInst(t, m, Mastodon, "src.test")
	relay := newInst(t, m, Mastodon, "relay.test")
	mk := newInst(t, m, Misskey, "misskey.test")
	gts := newInst(t, m, GoToSocial, "gts.test")
	n, err := src.Post(ctx, relay.Inbox(), "alice", "boost me")
	require.NoError(t, err)

	// A boost sent by the booster is applied, and its Undo removes it.
	boostID, err := src.Boost(ctx, mk.Inbox(), "bob", n.ID)
	require.NoError(t, err)
	mk.WaitFor(t, waitTimeout, func([]Received) bool { return mk.HasBoost(boostID) })
	require.NoError(t, src.Unboost(ctx, mk.Inbox(), boostID))
	rc := lastOf(t, mk, "Undo")
	assert.False(t, rc.Dropped, rc.Reason)
	assert.False(t, mk.HasBoost(boostID))

	// GoToSocial applies an Undo only when the announcer signs it: a forwarded one is ignored.
	boostID, err = src.Boost(ctx, relay.Inbox(), "bob", n.ID)
	require.NoError(t, err)
	forward(t, relay, gts, lastOf(t, relay, "Announce").Body)
	gts.WaitFor(t, waitTimeout, func([]Received) bool { return gts.HasBoost(boostID) })
	require.NoError(t, src.Unboost(ctx, relay.Inbox(), boostID))
	forward(t, relay, gts, lastOf(t, relay, "Undo").Body)
	assert.True(t, lastOf(t, gts, "Undo").Dropped)
	assert.True(t, gts.HasBoost(boostID))

	// The Undo of the relay's own Announce, embedded and signed by the relay, is applied.
	own := announceBody(relay, "", n.ID+"/other", time.Now())
	var announce map[string]any
	require.NoError(t, json.Unmarshal(own, &announce))
	require.True(t, gts.addBoost(announce["id"].(string), relay.RelayActorID(), n.ID))
	delete(announce, "@context")
	undo, _ := json.Marshal(map[string]any{
		"@context": asContext, "id": relay.URL() + "/activities/" + newUUID(), "type": "Undo",
		"actor": relay.RelayActorID(), "object": announce, "to": []any{publicIRI},
	})
	forward(t, relay, gts, undo)
	rc = lastOf(t, gts, "Undo")
	assert.False(t, rc.Dropped, rc.Reason)
	assert.False(t, gts.HasBoost(announce["id"].(string)))
}

func TestPostVisibility(t *testing.T) {
	ctx := context.Background()
	m := modes()[1]
	relay := NewInstance(t, Mastodon, Options{Network: m.net, Host: "relay.test", SignFetches: true})
	for _, f := range allFlavors {
		src := newInst(t, m, f, "src-"+f.String()+".test")
		for _, v := range []Visibility{Public, Unlisted, FollowersOnly} {
			n, err := src.PostVisible(ctx, relay.Inbox(), "alice", v.String(), v)
			require.NoError(t, err)
			assert.Equal(t, v, n.Visibility)
			status, doc, _, err := relay.fetchJSON(ctx, n.ID)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status)
			to, cc := v.addressing(n.Author)
			assert.ElementsMatch(t, to, asList(doc["to"]), "%s %s", f, v)
			assert.ElementsMatch(t, cc, asList(doc["cc"]), "%s %s", f, v)
		}
	}
}

func asList(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	if v == nil {
		return []any{}
	}
	return []any{v}
}

// storeNoteForTest serves n again as it is now (after a test changed it).
func (i *Instance) storeNoteForTest(n *Note) {
	author, err := i.noteAuthor(n)
	if err != nil {
		panic(err)
	}
	note := i.noteDoc(n, author, "")
	note["@context"] = i.activityContext()
	i.storeDoc(note)
}
