package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
)

// status sends body to the relay inbox as keyOwner of i and returns the
// HTTP status and response text.
func status(t *testing.T, i *relaytest.Instance, r *relay.Relay, keyOwner string, body []byte, opts ...relaytest.SendOption) (int, string) {
	t.Helper()
	resp, err := i.Send(context.Background(), r.InboxURL(), keyOwner, body, opts...)
	require.NoError(t, err)
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text)
}

func createDoc(i *relaytest.Instance, user, id string, to ...string) []byte {
	if to == nil {
		to = []string{relay.PublicCollection}
	}
	actor := i.ActorID(user)
	doc := map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams",
		"id":       actor + "/statuses/" + id + "/activity",
		"type":     "Create",
		"actor":    actor,
		"to":       to,
		"object": map[string]any{
			"id": actor + "/statuses/" + id, "type": "Note", "attributedTo": actor,
			"content": "hi", "to": to,
		},
	}
	b, _ := json.Marshal(doc)
	return b
}

func TestInboxRefusesBadInput(t *testing.T) {
	r := startRelay(t, relay.Config{MaxBodyBytes: 64 << 10})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender, receiver)
	stranger := newInstance(t, relaytest.Mastodon)

	valid := createDoc(sender, "alice", "1")
	tests := []struct {
		name   string
		from   *relaytest.Instance
		user   string
		body   []byte
		opts   []relaytest.SendOption
		status int
	}{
		{"malformed JSON", sender, "alice", []byte(`{"type":"Create",`), nil, http.StatusBadRequest},
		{"JSON without actor", sender, "alice", []byte(`{"id":"x","type":"Create"}`), nil, http.StatusBadRequest},
		{"unsigned", sender, "alice", valid, []relaytest.SendOption{relaytest.WithoutSignature()}, http.StatusUnauthorized},
		{"body tampered after signing", sender, "alice", valid, []relaytest.SendOption{relaytest.WithTamperedBody(createDoc(sender, "alice", "2"))}, http.StatusUnauthorized},
		{"digest not signed", sender, "alice", valid, []relaytest.SendOption{relaytest.WithSignedHeaders("(request-target)", "host", "date")}, http.StatusUnauthorized},
		{"date two hours old", sender, "alice", valid, []relaytest.SendOption{relaytest.WithDate(time.Now().Add(-2 * time.Hour))}, http.StatusUnauthorized},
		{"date in the future", sender, "alice", valid, []relaytest.SendOption{relaytest.WithDate(time.Now().Add(20 * time.Minute))}, http.StatusUnauthorized},
		{"signed by another actor than the author", sender, "mallory", valid, nil, http.StatusUnauthorized},
		{"key of an unknown actor", sender, "alice", valid, []relaytest.SendOption{relaytest.WithKeyID(sender.ActorID("nobody-here") + "#main-key")}, http.StatusUnauthorized},
		{"not subscribed", stranger, "alice", createDoc(stranger, "alice", "3"), nil, http.StatusForbidden},
		{"not public", sender, "alice", createDoc(sender, "alice", "4", sender.ActorID("alice")+"/followers"), nil, http.StatusForbidden},
		{"follow of another object", sender, "", mustJSON(map[string]any{
			"id": sender.RelayActorID() + "/f2", "type": "Follow", "actor": sender.RelayActorID(), "object": sender.ActorID("bob"),
		}), nil, http.StatusBadRequest},
		// Follow, Undo, Accept and Reject concern the signer's own
		// relationships: signed by anyone else, they are refused, whatever
		// they are about (known or not, relay or topic actor).
		{"follow signed by another actor", sender, "mallory", mustJSON(map[string]any{
			"id": sender.ActorID("alice") + "#follows/1", "type": "Follow", "actor": sender.ActorID("alice"), "object": relay.PublicCollection,
		}), nil, http.StatusUnauthorized},
		{"undo of an unknown follow signed by another actor", sender, "mallory", mustJSON(map[string]any{
			"id": sender.ActorID("alice") + "#undo/1", "type": "Undo", "actor": sender.ActorID("alice"),
			"object": map[string]any{"id": sender.ActorID("alice") + "#follows/9", "type": "Follow", "actor": sender.ActorID("alice"), "object": strings.TrimSuffix(r.ActorID(), "/actor") + "/tag/unknown"},
		}), nil, http.StatusUnauthorized},
		{"accept of an unknown follow signed by another actor", sender, "mallory", mustJSON(map[string]any{
			"id": sender.ActorID("alice") + "#accepts/1", "type": "Accept", "actor": sender.ActorID("alice"), "object": "https://relay.invalid/follows/unknown",
		}), nil, http.StatusUnauthorized},
		{"body over the limit", sender, "alice", bytes.Repeat([]byte("x"), 65<<10), nil, http.StatusRequestEntityTooLarge},
		{"ignored activity type", sender, "alice", mustJSON(map[string]any{
			"id": sender.ActorID("alice") + "#likes/1", "type": "Like", "actor": sender.ActorID("alice"), "object": "https://x.example/1",
		}), nil, http.StatusAccepted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, text := status(t, tt.from, r, tt.user, tt.body, tt.opts...)
			assert.Equal(t, tt.status, code, text)
			if code >= 400 {
				assert.True(t, strings.HasPrefix(text, "relay: "), "a clear error: %q", text)
			}
		})
	}
	// The key fetch failure above was for a missing actor; the tampered
	// request must not have been relayed either.
	assert.Zero(t, countFor(receiver, "Create", sender.ActorID("alice")+"/statuses/2"))

	// After all that, the relay still works. (Without an LD signature the
	// post reaches Mastodon as the relay's Announce.)
	code, text := status(t, sender, r, "alice", valid)
	require.Equal(t, http.StatusAccepted, code, text)
	waitFor(t, receiver, "Announce", sender.ActorID("alice")+"/statuses/1")
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// A body without Content-Length over the limit is refused without reading
// it whole.
func TestInboxRefusesOversizedChunkedBody(t *testing.T) {
	r := startRelay(t, relay.Config{MaxBodyBytes: 1 << 10})
	const total = 64 << 20
	var written atomic.Int64
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for written.Load() < total {
			n, err := pw.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, err := http.NewRequest(http.MethodPost, r.InboxURL(), pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/activity+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	pr.CloseWithError(io.ErrClosedPipe)
	assert.Less(t, written.Load(), int64(total/4), "the relay stopped reading early")
}

func TestDuplicateActivityIsRelayedOnce(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Misskey)
	litepub := newInstance(t, relaytest.Pleroma)
	subscribe(t, r, sender, receiver, litepub)

	body := createDoc(sender, "alice", "dup")
	for range 3 {
		code, text := status(t, sender, r, "alice", body)
		require.Equal(t, http.StatusAccepted, code, text)
	}
	objectID := sender.ActorID("alice") + "/statuses/dup"
	waitFor(t, receiver, "Announce", objectID)
	waitFor(t, litepub, "Announce", objectID)
	// Once more, as if another relay forwarded the same post: the relay
	// has announced that object already.
	code, _ := status(t, sender, r, "alice", body)
	require.Equal(t, http.StatusAccepted, code)
	// A later, different activity is a sync point: when it has arrived,
	// anything the duplicates queued would have arrived too.
	marker := createDoc(sender, "alice", "marker")
	code, _ = status(t, sender, r, "alice", marker)
	require.Equal(t, http.StatusAccepted, code)
	waitFor(t, litepub, "Announce", sender.ActorID("alice")+"/statuses/marker")
	waitFor(t, receiver, "Announce", sender.ActorID("alice")+"/statuses/marker")
	assert.Equal(t, 1, countFor(receiver, "Announce", objectID))
	assert.Equal(t, 1, countFor(litepub, "Announce", objectID))
}

// A post sent right after a subscriber's Accept reaches that subscriber.
func TestNewSubscriberGetsTheNextPost(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender)
	for n := range 5 {
		late := newInstance(t, relaytest.Misskey)
		_, err := late.Subscribe(context.Background(), r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		// No waiting for the Accept to arrive: the subscription exists as
		// soon as the relay answered the Follow.
		id := fmt.Sprintf("right-after-%d", n)
		code, text := status(t, sender, r, "alice", createDoc(sender, "alice", id))
		require.Equal(t, http.StatusAccepted, code, text)
		waitFor(t, late, "Announce", sender.ActorID("alice")+"/statuses/"+id)
	}
}

func TestManualApproval(t *testing.T) {
	r := startRelay(t, relay.Config{FollowPolicy: relay.ManualApproval})
	ctx := context.Background()
	masto := newInstance(t, relaytest.Mastodon)
	pleroma := newInstance(t, relaytest.Pleroma)
	for _, i := range []*relaytest.Instance{masto, pleroma} {
		_, err := i.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
	}
	pending, err := r.Subscribers(ctx, store.SubscriberFilter{State: store.StatePending})
	require.NoError(t, err)
	assert.Len(t, pending, 2)
	assert.False(t, masto.Subscribed())

	// A pending subscriber cannot publish yet.
	code, _ := status(t, masto, r, "alice", createDoc(masto, "alice", "early"))
	assert.Equal(t, http.StatusForbidden, code)

	require.NoError(t, r.Approve(ctx, masto.RelayActorID()))
	masto.WaitSubscribed(t, wait)
	require.NoError(t, r.Refuse(ctx, pleroma.RelayActorID(), "not this time"))
	pleroma.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	s, err := r.Subscriber(ctx, pleroma.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, store.StateRejected, s.State)
	assert.Equal(t, "not this time", s.Reason)
	assert.Empty(t, pleroma.Followers(), "no follow-back for a refused subscriber")

	// Details are changeable through the Go API.
	s, err = r.UpdateSubscriber(ctx, masto.RelayActorID(), func(s *store.Subscriber) error {
		s.Note = "approved by admin"
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, "approved by admin", s.Note)
	_, err = r.UpdateSubscriber(ctx, "https://nobody.example/actor", func(*store.Subscriber) error { return nil })
	assert.ErrorIs(t, err, relay.ErrNotSubscribed)
}

func TestPolicyRejectsFollow(t *testing.T) {
	var asked []relay.FollowRequest
	r := startRelay(t, relay.Config{FollowPolicy: func(_ context.Context, req relay.FollowRequest) (relay.Decision, string) {
		asked = append(asked, req)
		return relay.DecisionReject, "closed relay"
	}})
	masto := newInstance(t, relaytest.Misskey)
	_, err := masto.Subscribe(context.Background(), r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	masto.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Equal(t, relaytest.StateRejected, masto.SubscriptionState(r.InboxURL()))
	require.Len(t, asked, 1)
	assert.Equal(t, store.ProtocolMastodon, asked[0].Protocol)
	assert.Equal(t, masto.RelayActorID(), asked[0].Actor)
}

func TestRepeatedFollowIsIdempotent(t *testing.T) {
	r := startRelay(t, relay.Config{})
	ctx := context.Background()
	pleroma := newInstance(t, relaytest.Pleroma)
	subscribe(t, r, pleroma)
	first, err := r.Subscriber(ctx, pleroma.RelayActorID())
	require.NoError(t, err)
	_, err = pleroma.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n := 0
		for _, rc := range pleroma.Received() {
			if rc.Type == "Accept" {
				n++
			}
		}
		return n == 2
	}, wait, 10*time.Millisecond, "the second Follow is accepted again")
	subs, err := r.Subscribers(ctx, store.SubscriberFilter{})
	require.NoError(t, err)
	require.Len(t, subs, 1)
	assert.Equal(t, first.FollowBackID, subs[0].FollowBackID, "no second follow-back")
	assert.Equal(t, store.StateAccepted, subs[0].State)
}

func TestUndoFromAnotherActorIsIgnored(t *testing.T) {
	r := startRelay(t, relay.Config{})
	ctx := context.Background()
	masto := newInstance(t, relaytest.Mastodon)
	followID, err := masto.Subscribe(ctx, r.InboxURL(), r.ActorID())
	require.NoError(t, err)
	masto.WaitSubscribed(t, wait)
	// Another actor of the same server tries to undo the instance's Follow.
	undo := mustJSON(map[string]any{
		"id": masto.ActorID("mallory") + "#undo", "type": "Undo", "actor": masto.ActorID("mallory"),
		"object": map[string]any{"id": followID, "type": "Follow", "actor": masto.RelayActorID(), "object": relay.PublicCollection},
	})
	code, text := status(t, masto, r, "mallory", undo)
	assert.Equal(t, http.StatusAccepted, code, text)
	// A stale Undo by the right actor, naming another Follow, is ignored too.
	stale := mustJSON(map[string]any{
		"id": masto.RelayActorID() + "#undo-old", "type": "Undo", "actor": masto.RelayActorID(), "object": masto.URL() + "/old-follow",
	})
	code, text = status(t, masto, r, "", stale)
	assert.Equal(t, http.StatusAccepted, code, text)
	s, err := r.Subscriber(ctx, masto.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, s.State)
	// The Undo by id from the subscriber itself ends the subscription.
	byID := mustJSON(map[string]any{
		"id": masto.RelayActorID() + "#undo-real", "type": "Undo", "actor": masto.RelayActorID(), "object": followID,
	})
	code, text = status(t, masto, r, "", byID)
	assert.Equal(t, http.StatusAccepted, code, text)
	_, err = r.Subscriber(ctx, masto.RelayActorID())
	assert.ErrorIs(t, err, relay.ErrNotSubscribed)
}

// A sender that rotated its key is verified after one refetch of the key
// (once a minute has passed since the key was fetched).
func TestRotatedKeyIsRefetched(t *testing.T) {
	clock := &stepClock{now: time.Now()}
	r := startRelay(t, relay.Config{Clock: clock})
	sender := newInstance(t, relaytest.Mastodon)
	receiver := newInstance(t, relaytest.Pleroma)
	subscribe(t, r, sender, receiver)
	code, text := status(t, sender, r, "alice", createDoc(sender, "alice", "before"))
	require.Equal(t, http.StatusAccepted, code, text)

	require.NoError(t, sender.RotateKey("alice"))
	clock.advance(61 * time.Second) // a key fetched within the minute is not fetched again
	code, text = status(t, sender, r, "alice", createDoc(sender, "alice", "after"))
	require.Equal(t, http.StatusAccepted, code, text)
	waitFor(t, receiver, "Announce", sender.ActorID("alice")+"/statuses/after")
}

// A refused subscriber can no longer publish.
func TestRefusedSubscriberCannotPublish(t *testing.T) {
	r := startRelay(t, relay.Config{})
	sender := newInstance(t, relaytest.Mastodon)
	subscribe(t, r, sender)
	require.NoError(t, r.Refuse(context.Background(), sender.RelayActorID(), "spam"))
	code, text := status(t, sender, r, "alice", createDoc(sender, "alice", "x"))
	assert.Equal(t, http.StatusForbidden, code, text)
}
