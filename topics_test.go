package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
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

// topicRelay starts a relay at relay.test, on a memory network of its own,
// with cfg.
func topicRelay(t *testing.T, cfg relay.Config) (*memnet.Network, *relay.Relay) {
	t.Helper()
	network := &memnet.Network{}
	return network, memRelay(t, network, "relay.test", newMemStore(t), cfg)
}

// drained waits until the relay has no delivery queued: everything it
// queued has reached its inbox (or given up).
func drained(t *testing.T, r *relay.Relay) {
	t.Helper()
	require.Eventually(t, func() bool {
		s, err := r.DeliveryStatus(context.Background())
		return err == nil && s.Backlog == 0 && s.InFlight == 0
	}, wait, 10*time.Millisecond, "the relay's queue drains")
}

// objectsReceived returns the ids of the objects of the posts (Create or
// Announce) that i received and kept, sorted.
func objectsReceived(i *relaytest.Instance) []string {
	var out []string
	for _, rc := range i.Received() {
		if (rc.Type == "Create" || rc.Type == "Announce") && !rc.Dropped {
			out = append(out, rc.ObjectID)
		}
	}
	slices.Sort(out)
	return out
}

func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

func memInstance(t *testing.T, network *memnet.Network, f relaytest.Flavor, host string) *relaytest.Instance {
	return relaytest.NewInstance(t, f, relaytest.Options{Network: network, Host: host, SignFetches: true, Logf: func(string, ...any) {}})
}

// Instances of the four kinds follow different topics, Mastodon style
// (the actor URL, or …/inbox) and LitePub style; each gets exactly the
// posts of its topic, from subscribers of the relay actor and from an
// instance that follows a topic only; a subscriber of the relay actor with
// its own filter gets its slice.
func TestTopicSlices(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	const base = "https://relay.test"

	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	english := memInstance(t, network, relaytest.Mastodon, "english.test")
	subscribe(t, r, pub, english)
	require.NoError(t, r.SetSubscriberFilter(ctx, english.RelayActorID(), relay.FilterSpec{Languages: []string{"en"}, DenyTags: []string{"dogs"}}))

	masto := memInstance(t, network, relaytest.Mastodon, "masto.test")
	misskey := memInstance(t, network, relaytest.Misskey, "misskey.test")
	pleroma := memInstance(t, network, relaytest.Pleroma, "pleroma.test")
	gts := memInstance(t, network, relaytest.GoToSocial, "gts.test")
	_, err := masto.Subscribe(ctx, base+"/tag/cats", "")
	require.NoError(t, err)
	_, err = misskey.Subscribe(ctx, base+"/language/ja/inbox", "")
	require.NoError(t, err)
	_, err = pleroma.Subscribe(ctx, base+"/instance/gts.test", base+"/instance/gts.test")
	require.NoError(t, err)
	_, err = gts.Subscribe(ctx, base+"/tag/dogs", base+"/tag/dogs")
	require.NoError(t, err)
	for _, i := range []*relaytest.Instance{masto, misskey, pleroma, gts} {
		i.WaitSubscribed(t, wait)
	}
	require.Eventually(t, func() bool { return slices.Contains(pleroma.Followers(), base+"/instance/gts.test") },
		wait, 10*time.Millisecond, "the topic actor follows Pleroma back")
	drained(t, r)
	require.Len(t, r.TopicFollowers(), 4)

	post := func(i *relaytest.Instance, text string, o relaytest.PostOptions) string {
		t.Helper()
		n, err := i.PostWith(ctx, base+"/inbox", "alice", text, o)
		require.NoError(t, err)
		return n.ID
	}
	cats := post(pub, "a cat", relaytest.PostOptions{Tags: []string{"Cats"}, Language: "en"})
	dogs := post(pub, "a dog", relaytest.PostOptions{Tags: []string{"dogs"}, Language: "en"})
	both := post(pub, "cat and dog", relaytest.PostOptions{Tags: []string{"CATS", "Dogs"}})
	japanese := post(pub, "猫", relaytest.PostOptions{Language: "ja"})
	plain := post(pub, "nothing special", relaytest.PostOptions{Language: "en-GB"})
	// GoToSocial follows a topic only, and publishes all the same: to the
	// relay actor's subscribers and to every matching topic.
	fromGTS := post(gts, "hello from gts", relaytest.PostOptions{Tags: []string{"cats"}})
	// So does Pleroma, whose relay actor announces to the topic it follows.
	n, err := pleroma.PostWith(ctx, base+"/instance/gts.test", "pat", "a pleroma dog", relaytest.PostOptions{Tags: []string{"dogs"}})
	require.NoError(t, err)
	fromPleroma := n.ID
	drained(t, r)

	assert.Equal(t, sorted(cats, both, fromGTS), objectsReceived(masto), "Mastodon follows #cats")
	assert.Equal(t, sorted(japanese), objectsReceived(misskey), "Misskey follows language ja")
	assert.Equal(t, sorted(fromGTS), objectsReceived(pleroma), "Pleroma follows instance gts.test")
	assert.Equal(t, sorted(dogs, both, fromPleroma), objectsReceived(gts), "GoToSocial follows #dogs")
	assert.Equal(t, sorted(cats, plain), objectsReceived(english), "the filtered subscriber: English, no dogs")
	assert.Equal(t, sorted(fromGTS, fromPleroma), objectsReceived(pub), "the publisher gets the topic-only instances' posts")
	for _, i := range []*relaytest.Instance{masto, misskey, pleroma, gts, pub, english} {
		assert.Empty(t, i.Rejected(), i.Host())
	}

	// What Mastodon got for #cats came from the topic actor: an LD-signed
	// Create verbatim, signed with the topic actor's key.
	for _, rc := range masto.Received() {
		if rc.ObjectID == cats {
			assert.Equal(t, "Create", rc.Type)
			assert.Equal(t, base+"/tag/cats#main-key", rc.KeyID)
		}
		if rc.ObjectID == fromGTS {
			assert.Equal(t, "Announce", rc.Type, "no LD signature: an Announce by the topic actor")
			assert.Equal(t, base+"/tag/cats", rc.Actor)
		}
	}

	// Deletes reach every topic follower, budget or filter regardless.
	require.NoError(t, pub.Delete(ctx, base+"/inbox", &relaytest.Note{ID: cats, Author: pub.ActorID("alice")}))
	for _, i := range []*relaytest.Instance{masto, english} {
		waitFor(t, i, "Delete", cats)
	}

	// Unfollowing a topic ends the follow (Mastodon's Undo embeds the Follow).
	require.NoError(t, masto.Unsubscribe(ctx, base+"/tag/cats"))
	require.Eventually(t, func() bool { return len(r.TopicFollowers()) == 3 }, wait, 10*time.Millisecond)
}

// The topic actor: a complete actor, found by WebFinger, listed in NodeInfo
// once followed, with canonical URLs; switched-off and blocked topics do
// not exist.
func TestTopicActorDocuments(t *testing.T) {
	network, r := topicRelay(t, relay.Config{
		Topics: relay.TopicConfig{Block: []string{"tag/Spam"}},
	})
	client := &http.Client{Transport: network, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(url string) (*http.Response, map[string]any) {
		t.Helper()
		resp, err := client.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		var doc map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		return resp, doc
	}
	resp, doc := get("https://relay.test/tag/cats")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "https://relay.test/tag/cats", doc["id"])
	assert.Equal(t, "https://relay.test/tag/cats", doc["inbox"], "the actor URL is its inbox, as buzzrelay's")
	assert.Equal(t, "tag.cats", doc["preferredUsername"])
	key, _ := doc["publicKey"].(map[string]any)
	assert.Equal(t, "https://relay.test/tag/cats#main-key", key["id"])

	resp, _ = get("https://relay.test/tag/%23CATS")
	assert.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	assert.Equal(t, "https://relay.test/tag/cats", resp.Header.Get("Location"))
	resp, _ = get("https://relay.test/tag/spam")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "a blocked topic")
	resp, doc = get("https://relay.test/language/pt_BR")
	assert.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	resp, doc = get("https://relay.test/instance/Example.ORG")
	require.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	resp, doc = get("https://relay.test/instance/example.org")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "instance.example.org", doc["preferredUsername"])

	jrd, ok := r.WebFinger("acct:tag.cats@relay.test")
	require.True(t, ok)
	assert.Equal(t, "acct:tag.cats@relay.test", jrd.Subject)
	assert.Equal(t, "https://relay.test/tag/cats", jrd.Links[0].Href)
	_, ok = r.WebFinger("acct:tag.spam@relay.test")
	assert.False(t, ok)
	for _, acct := range []string{"acct:tag.x-e78cab@relay.test", "acct:tag.猫@relay.test"} {
		jrd, ok = r.WebFinger(acct)
		require.True(t, ok, acct)
		assert.Equal(t, "acct:tag.x-e78cab@relay.test", jrd.Subject)
		assert.Equal(t, "https://relay.test/tag/%E7%8C%AB", jrd.Links[0].Href)
	}
	resp, doc = get("https://relay.test/tag/%E7%8C%AB")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "tag.x-e78cab", doc["preferredUsername"])

	off := memRelay(t, network, "off.test", newMemStore(t), relay.Config{Topics: relay.TopicConfig{Disabled: true}})
	resp, _ = get("https://off.test/tag/cats")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "topics switched off")
	_, ok = off.WebFinger("acct:tag.cats@off.test")
	assert.False(t, ok)

	_, err := relay.New(relay.Config{BaseURL: "https://x.test", Topics: relay.TopicConfig{Allow: []string{"colour/red"}}})
	assert.Error(t, err, "an unknown kind of topic")

	m := memInstance(t, network, relaytest.Mastodon, "m.test")
	_, err = m.Subscribe(context.Background(), "https://relay.test/tag/cats", "")
	require.NoError(t, err)
	m.WaitSubscribed(t, wait)
	_, doc = get("https://relay.test/nodeinfo/2.1")
	meta, _ := doc["metadata"].(map[string]any)
	topics, _ := meta["topics"].(map[string]any)
	assert.Equal(t, true, topics["enabled"])
	assert.Equal(t, []any{"tag/cats"}, topics["followed"])
}

// Persons on two servers follow a tag: each server gets one Announce per
// matching post in its shared inbox, however many of its users follow.
func TestPersonsFollowTopic(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	subscribe(t, r, pub)
	people := memInstance(t, network, relaytest.Mastodon, "people.test")
	others := memInstance(t, network, relaytest.Misskey, "others.test")
	const topic = "https://relay.test/tag/x"
	for _, f := range []struct {
		i    *relaytest.Instance
		user string
	}{{people, "ann"}, {people, "ben"}, {others, "cem"}} {
		_, err := f.i.Follow(ctx, f.user, topic)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return f.i.Follows(f.user, topic) }, wait, 10*time.Millisecond)
	}
	for _, f := range r.TopicFollowers() {
		assert.Equal(t, "person", f.Kind)
	}
	one, err := pub.PostWith(ctx, r.InboxURL(), "alice", "one", relaytest.PostOptions{Tags: []string{"X"}})
	require.NoError(t, err)
	two, err := pub.PostWith(ctx, r.InboxURL(), "alice", "two", relaytest.PostOptions{Tags: []string{"x", "y"}})
	require.NoError(t, err)
	_, err = pub.PostWith(ctx, r.InboxURL(), "alice", "three", relaytest.PostOptions{Tags: []string{"y"}})
	require.NoError(t, err)
	drained(t, r)
	for _, i := range []*relaytest.Instance{people, others} {
		assert.Equal(t, sorted(one.ID, two.ID), objectsReceived(i), i.Host())
		for _, rc := range i.Received() {
			if rc.Type == "Announce" {
				assert.Equal(t, topic, rc.Actor)
				assert.Equal(t, "/inbox", rc.Inbox, "the shared inbox")
			}
		}
		i.ResetRecords()
	}

	// cem unfollows; ann still follows for people.test.
	require.NoError(t, others.Unfollow(ctx, "cem", topic))
	require.NoError(t, people.Unfollow(ctx, "ben", topic))
	require.Eventually(t, func() bool { return len(r.TopicFollowers()) == 1 }, wait, 10*time.Millisecond)
	four, err := pub.PostWith(ctx, r.InboxURL(), "alice", "four", relaytest.PostOptions{Tags: []string{"x"}})
	require.NoError(t, err)
	drained(t, r)
	assert.Equal(t, []string{four.ID}, objectsReceived(people))
	assert.Empty(t, objectsReceived(others))
}

// A LitePub relay actor announces a tagged post by id: the relay fetches
// it once to route it (on loopback), and the #cats follower gets it.
func TestLitePubAnnounceRoutedAfterOneFetch(t *testing.T) {
	r := startRelay(t, relay.Config{})
	ctx := context.Background()
	pleroma := newInstance(t, relaytest.Pleroma)
	subscribe(t, r, pleroma)
	var relayFetches atomic.Int32
	pleroma.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/objects/") && strings.HasPrefix(req.UserAgent(), "fedirelay/") {
			relayFetches.Add(1)
		}
		return 0
	})
	masto := newInstance(t, relaytest.Mastodon)
	topic := strings.TrimSuffix(r.InboxURL(), "/inbox") + "/tag/cats"
	_, err := masto.Subscribe(ctx, topic, "")
	require.NoError(t, err)
	masto.WaitSubscribed(t, wait)

	note, err := pleroma.PostWith(ctx, r.InboxURL(), "pat", "a cat", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	rc := waitFor(t, masto, "Announce", note.ID)
	assert.Equal(t, topic, rc.Actor)
	require.Eventually(t, func() bool { return fetched(masto, note.ID) }, wait, 10*time.Millisecond)
	drained(t, r)
	assert.Equal(t, int32(1), relayFetches.Load(), "the relay fetched the object once")
}

// A subscriber capped at one post an hour gets the first post and every
// Delete; the rest is dropped and counted.
func TestBudgetNeverDropsDelete(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	small := memInstance(t, network, relaytest.Mastodon, "small.test")
	subscribe(t, r, pub, small)
	require.NoError(t, r.SetSubscriberFilter(ctx, small.RelayActorID(), relay.FilterSpec{MaxPostsPerHour: 1}))
	spec, err := r.SubscriberFilter(ctx, small.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, 1, spec.MaxPostsPerHour, "the budget is kept with the subscription")

	var notes []*relaytest.Note
	for _, text := range []string{"one", "two", "three"} {
		n, err := pub.Post(ctx, r.InboxURL(), "alice", text)
		require.NoError(t, err)
		notes = append(notes, n)
	}
	for _, n := range notes {
		require.NoError(t, pub.Delete(ctx, r.InboxURL(), n))
	}
	drained(t, r)
	assert.Equal(t, []string{notes[0].ID}, objectsReceived(small))
	for _, n := range notes {
		assert.Equal(t, 1, countFor(small, "Delete", n.ID), "every Delete goes through")
	}
	mine, total := r.BudgetDrops(small.RelayActorID())
	assert.Equal(t, int64(2), mine)
	assert.Equal(t, int64(2), total)
}

// Authors who opted out (indexable: false, #nobot or #norelay in the
// profile) are not relayed to topics; with OptOuts.Main, not at all.
func TestAuthorOptOuts(t *testing.T) {
	for _, main := range []bool{false, true} {
		t.Run(fmt.Sprintf("main=%v", main), func(t *testing.T) {
			network, r := topicRelay(t, relay.Config{OptOuts: relay.OptOutConfig{Main: main}})
			ctx := context.Background()
			pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
			sub := memInstance(t, network, relaytest.Misskey, "sub.test")
			subscribe(t, r, pub, sub)
			follower := memInstance(t, network, relaytest.Mastodon, "follower.test")
			_, err := follower.Subscribe(ctx, "https://relay.test/tag/cats", "")
			require.NoError(t, err)
			follower.WaitSubscribed(t, wait)

			require.NoError(t, pub.SetProfile("hidden", map[string]any{"indexable": false}))
			require.NoError(t, pub.SetProfile("nobot", map[string]any{"summary": "<p>I like cats. #NoBot</p>"}))
			require.NoError(t, pub.SetProfile("norelay", map[string]any{"tag": []any{map[string]any{"type": "Hashtag", "name": "#norelay"}}}))
			require.NoError(t, pub.SetProfile("open", map[string]any{"indexable": true, "summary": "#nobotany fan"}))
			ids := map[string]string{}
			for _, user := range []string{"hidden", "nobot", "norelay", "open"} {
				n, err := pub.PostWith(ctx, r.InboxURL(), user, "cat", relaytest.PostOptions{Tags: []string{"cats"}})
				require.NoError(t, err)
				ids[user] = n.ID
			}
			drained(t, r)
			assert.Equal(t, []string{ids["open"]}, objectsReceived(follower), "main=%v", main)
			want := sorted(ids["hidden"], ids["nobot"], ids["norelay"], ids["open"])
			if main {
				want = []string{ids["open"]}
			}
			assert.Equal(t, want, objectsReceived(sub), "main=%v", main)
		})
	}
}

// A topic needs MinFollowers before it relays anything, and an instance
// following a topic is decided by the FollowPolicy (with the topic).
func TestTopicLimits(t *testing.T) {
	network := &memnet.Network{}
	var asked []relay.FollowRequest
	r := memRelay(t, network, "relay.test", newMemStore(t), relay.Config{
		Topics: relay.TopicConfig{MinFollowers: 2},
		FollowPolicy: func(_ context.Context, req relay.FollowRequest) (relay.Decision, string) {
			asked = append(asked, req)
			return relay.DecisionAccept, ""
		},
	})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	subscribe(t, r, pub)
	a := memInstance(t, network, relaytest.Mastodon, "a.test")
	_, err := a.Subscribe(ctx, "https://relay.test/tag/cats", "")
	require.NoError(t, err)
	a.WaitSubscribed(t, wait)
	require.Len(t, asked, 2)
	assert.Equal(t, "tag/cats", asked[1].Topic)
	first, err := pub.PostWith(ctx, r.InboxURL(), "alice", "one", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	drained(t, r)
	assert.Empty(t, objectsReceived(a), "one follower is not enough")

	b := memInstance(t, network, relaytest.GoToSocial, "b.test")
	_, err = b.Subscribe(ctx, "https://relay.test/tag/cats", "https://relay.test/tag/cats")
	require.NoError(t, err)
	b.WaitSubscribed(t, wait)
	second, err := pub.PostWith(ctx, r.InboxURL(), "alice", "two", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	drained(t, r)
	assert.Equal(t, []string{second.ID}, objectsReceived(a))
	assert.Equal(t, []string{second.ID}, objectsReceived(b))
	assert.NotContains(t, objectsReceived(a), first.ID)
	_ = store.StateAccepted
}

// A global filter an embedder plugs in applies to every subscriber; a post
// it refuses is accepted and relayed to nobody.
func TestGlobalFilter(t *testing.T) {
	network := &memnet.Network{}
	noSpam := relay.FilterFunc(func(p *relay.Post) bool { return !slices.Contains(p.Tags, "spam") })
	r := memRelay(t, network, "relay.test", newMemStore(t), relay.Config{Filters: relay.FilterSet{noSpam}})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	sub := memInstance(t, network, relaytest.Pleroma, "sub.test")
	subscribe(t, r, pub, sub)
	_, err := pub.PostWith(ctx, r.InboxURL(), "alice", "buy now", relaytest.PostOptions{Tags: []string{"SPAM"}})
	require.NoError(t, err, "accepted (202)")
	ok, err := pub.PostWith(ctx, r.InboxURL(), "alice", "hello", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	drained(t, r)
	assert.Equal(t, []string{ok.ID}, objectsReceived(sub))
}

// When the object of a boost cannot be fetched (here its origin never
// answers the relay), the inbox does not wait beyond KeyFetchTimeout and
// the boost goes to the subscribers without filters only. (A LitePub relay
// actor's Announce whose object cannot be fetched is not relayed at all:
// see filter.go.)
func TestUnfetchableObjectGoesToUnfilteredOnly(t *testing.T) {
	network, r := topicRelay(t, relay.Config{KeyFetchTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	masto := memInstance(t, network, relaytest.Mastodon, "masto.test")
	plain := memInstance(t, network, relaytest.Mastodon, "plain.test")
	filtered := memInstance(t, network, relaytest.Mastodon, "filtered.test")
	subscribe(t, r, masto, plain, filtered)
	require.NoError(t, r.SetSubscriberFilter(ctx, filtered.RelayActorID(), relay.FilterSpec{AllowTags: []string{"cats"}}))
	follower := memInstance(t, network, relaytest.Mastodon, "follower.test")
	_, err := follower.Subscribe(ctx, "https://relay.test/tag/cats", "")
	require.NoError(t, err)
	follower.WaitSubscribed(t, wait)

	// A post of a server that is not subscribed (the relay refuses it),
	// boosted by a subscriber's user.
	origin := memInstance(t, network, relaytest.Mastodon, "origin.test")
	note, err := origin.PostWith(ctx, r.InboxURL(), "ola", "a cat", relaytest.PostOptions{Tags: []string{"cats"}})
	require.Error(t, err)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	origin.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodGet && req.URL.Path != "/users/ola" && strings.HasPrefix(req.UserAgent(), "fedirelay/") {
			<-release
		}
		return 0
	})
	_, err = masto.Boost(ctx, r.InboxURL(), "bob", note.ID)
	require.NoError(t, err, "the inbox answers although the object fetch hangs")
	waitFor(t, plain, "Announce", note.ID)
	drained(t, r)
	assert.Empty(t, objectsReceived(filtered), "its filter needs the object")
	assert.Empty(t, objectsReceived(follower), "topics need the object")
}

// An instance the relay actor refused cannot publish by following a topic;
// a held instance follow waits for ApproveTopicFollower.
func TestTopicFollowOfRefusedOrHeldInstance(t *testing.T) {
	network, r := topicRelay(t, relay.Config{FollowPolicy: relay.ManualApproval})
	ctx := context.Background()
	bad := memInstance(t, network, relaytest.Mastodon, "bad.test")
	_, err := bad.Subscribe(ctx, r.InboxURL(), "")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := r.Subscriber(ctx, bad.RelayActorID()); return err == nil }, wait, 10*time.Millisecond)
	require.NoError(t, r.Refuse(ctx, bad.RelayActorID(), "spam"))
	_, err = bad.Subscribe(ctx, "https://relay.test/tag/cats", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return bad.SubscriptionState("https://relay.test/tag/cats") == relaytest.StateRejected
	}, wait, 10*time.Millisecond, "the topic refuses it too")
	_, err = bad.Post(ctx, r.InboxURL(), "alice", "spam")
	var he *relaytest.HTTPError
	require.ErrorAs(t, err, &he)
	assert.Equal(t, http.StatusForbidden, he.StatusCode)

	held := memInstance(t, network, relaytest.Pleroma, "held.test")
	_, err = held.Subscribe(ctx, "https://relay.test/tag/cats", "https://relay.test/tag/cats")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, f := range r.TopicFollowers() {
			if f.Actor == held.RelayActorID() {
				return f.State == store.StatePending
			}
		}
		return false
	}, wait, 10*time.Millisecond)
	require.NoError(t, r.ApproveTopicFollower(ctx, "tag/#Cats", held.RelayActorID()))
	held.WaitSubscribed(t, wait)
	_, err = held.Post(ctx, "https://relay.test/tag/cats", "pat", "hello")
	require.NoError(t, err, "an accepted topic follower publishes")

	// Refused by the relay actor after its topic follow was accepted: it
	// no longer publishes.
	late := memInstance(t, network, relaytest.Mastodon, "late.test")
	_, err = late.Subscribe(ctx, "https://relay.test/tag/cats", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, f := range r.TopicFollowers() {
			if f.Actor == late.RelayActorID() {
				return true
			}
		}
		return false
	}, wait, 10*time.Millisecond)
	require.NoError(t, r.ApproveTopicFollower(ctx, "tag/cats", late.RelayActorID()))
	late.WaitSubscribed(t, wait)
	_, err = late.Post(ctx, r.InboxURL(), "alice", "allowed")
	require.NoError(t, err)
	_, err = late.Subscribe(ctx, r.InboxURL(), "")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := r.Subscriber(ctx, late.RelayActorID()); return err == nil }, wait, 10*time.Millisecond)
	require.NoError(t, r.Refuse(ctx, late.RelayActorID(), "no"))
	_, err = late.Post(ctx, r.InboxURL(), "alice", "refused")
	require.ErrorAs(t, err, &he)
	assert.Equal(t, http.StatusForbidden, he.StatusCode)
	assert.ErrorIs(t, r.ApproveTopicFollower(ctx, "tag/dogs", held.RelayActorID()), relay.ErrNotSubscribed)
}

// Below a path prefix, topic URLs are canonical with the prefix, and a
// subscription made with a non-canonical URL follows the canonical topic.
func TestTopicsBelowPrefix(t *testing.T) {
	network := &memnet.Network{}
	r, err := relay.New(relay.Config{BaseURL: "https://p.test/r", Transport: network, Store: newMemStore(t), Logger: quietLogger()})
	require.NoError(t, err)
	network.Handle("p.test", r.Handler())
	require.NoError(t, r.Start())
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	client := &http.Client{Transport: network, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("https://p.test/r/tag/cats")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, err = client.Get("https://p.test/r/tag/Cats")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	assert.Equal(t, "https://p.test/r/tag/cats", resp.Header.Get("Location"))

	m := memInstance(t, network, relaytest.Mastodon, "m.test")
	_, err = m.Subscribe(context.Background(), "https://p.test/r/tag/Cats/inbox", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(r.TopicFollowers()) == 1 }, wait, 10*time.Millisecond)
	f := r.TopicFollowers()[0]
	assert.Equal(t, "tag/cats", f.Topic)
	assert.Equal(t, "mastodon", f.Kind)
	_, err = r.Subscriber(context.Background(), m.RelayActorID())
	assert.ErrorIs(t, err, relay.ErrNotSubscribed, "not a subscription of the relay actor")
}

// A topic follower whose inbox answers 410 Gone is removed.
func TestGoneTopicFollowerIsRemoved(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	subscribe(t, r, pub)
	people := memInstance(t, network, relaytest.Mastodon, "people.test")
	const topic = "https://relay.test/tag/x"
	_, err := people.Follow(ctx, "ann", topic)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return people.Follows("ann", topic) }, wait, 10*time.Millisecond)
	require.Len(t, r.TopicFollowers(), 1)
	people.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodPost {
			return http.StatusGone
		}
		return 0
	})
	_, err = pub.PostWith(ctx, r.InboxURL(), "alice", "x", relaytest.PostOptions{Tags: []string{"x"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(r.TopicFollowers()) == 0 }, wait, 10*time.Millisecond)
}

// A server that subscribes to the relay actor and whose user follows a
// topic gets a matching post once, although the user's actor spells the
// server's shared inbox differently (host case, default port): the relay
// actor's delivery serves the topic follower too.
func TestTopicFollowerOnASubscribedInboxGetsAPostOnce(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	people := memInstance(t, network, relaytest.Mastodon, "people.test")
	subscribe(t, r, pub, people)
	const spelled = "https://PEOPLE.test:443/inbox"
	require.NoError(t, people.SetProfile("ann", map[string]any{"endpoints": map[string]any{"sharedInbox": spelled}}))
	const topic = "https://relay.test/tag/x"
	_, err := people.Follow(ctx, "ann", topic)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return people.Follows("ann", topic) }, wait, 10*time.Millisecond)
	followers := r.TopicFollowers()
	require.Len(t, followers, 1)
	require.Equal(t, spelled, followers[0].SharedInbox, "the follower keeps its spelling of the inbox")
	drained(t, r)
	people.ResetRecords()

	note, err := pub.PostWith(ctx, r.InboxURL(), "alice", "x marks the spot", relaytest.PostOptions{Tags: []string{"x"}})
	require.NoError(t, err)
	drained(t, r)
	var got []string
	for _, rc := range people.Received() {
		if rc.ObjectID == note.ID {
			got = append(got, rc.Type+" by "+rc.Actor)
		}
	}
	assert.Equal(t, []string{"Create by " + pub.ActorID("alice")}, got, "one copy, the relay actor's")
}

// countingObserver counts the relay's delivery events.
type countingObserver struct {
	relay.NopObserver
	mu        sync.Mutex
	dropped   map[string]int // by reason
	delivered map[string]int // by outcome
}

func newCountingObserver() *countingObserver {
	return &countingObserver{dropped: map[string]int{}, delivered: map[string]int{}}
}

func (o *countingObserver) Dropped(reason string, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.dropped[reason] += n
}

func (o *countingObserver) Delivered(outcome, _ string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.delivered[outcome]++
}

func (o *countingObserver) counts() (dropped, delivered map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.dropped), maps.Clone(o.delivered)
}

// A topic follower's inbox that refuses a delivery with a 4xx other than
// 410 is counted and logged like a subscriber's: a dropped delivery
// (Observer.Dropped "budget") and an info line naming the inbox.
func TestTopicDeliveryRefusalIsCounted(t *testing.T) {
	network := &memnet.Network{}
	var logs lockedBuffer
	events := newCountingObserver()
	r, err := relay.New(relay.Config{
		BaseURL: "https://relay.test", Transport: network, Store: newMemStore(t), Events: events,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	network.Handle("relay.test", r.Handler())
	require.NoError(t, r.Start())
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	ctx := context.Background()
	pub := memInstance(t, network, relaytest.Mastodon, "pub.test")
	subscribe(t, r, pub)
	people := memInstance(t, network, relaytest.Mastodon, "people.test")
	const topic = "https://relay.test/tag/x"
	_, err = people.Follow(ctx, "ann", topic)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return people.Follows("ann", topic) }, wait, 10*time.Millisecond)
	drained(t, r)
	droppedBefore, _ := events.counts()
	people.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodPost {
			return http.StatusForbidden
		}
		return 0
	})

	_, err = pub.PostWith(ctx, r.InboxURL(), "alice", "x", relaytest.PostOptions{Tags: []string{"x"}})
	require.NoError(t, err)
	drained(t, r)
	require.Eventually(t, func() bool {
		_, delivered := events.counts()
		return delivered["refused"] == 1
	}, wait, 10*time.Millisecond, "the refusal is reported")
	dropped, _ := events.counts()
	assert.Equal(t, droppedBefore["budget"]+1, dropped["budget"], "the refused delivery counts as dropped")
	assert.Regexp(t, `level=INFO msg="relay: delivery refused, not retried" .*inbox=https://people\.test/inbox .*status=403`, logs.String())
	assert.Len(t, r.TopicFollowers(), 1, "a refusal other than 410 keeps the follower")
}

// A boost of a post of a topic reaches the topic's followers as the topic
// actor's Announce, and its un-boost undoes that Announce: LitePub
// instances and persons get the topic actor's Undo, Mastodon-style
// instances the booster's Undo, as they got its Announce.
func TestTopicFollowersGetUnboosts(t *testing.T) {
	network, r := topicRelay(t, relay.Config{})
	ctx := context.Background()
	const topic = "https://relay.test/tag/cats"

	masto := memInstance(t, network, relaytest.Mastodon, "masto.test")
	subscribe(t, r, masto)
	pleroma := memInstance(t, network, relaytest.Pleroma, "pleroma.test")
	_, err := pleroma.Subscribe(ctx, topic, topic)
	require.NoError(t, err)
	pleroma.WaitSubscribed(t, wait)
	mastoTopic := memInstance(t, network, relaytest.Mastodon, "masto-topic.test")
	_, err = mastoTopic.Subscribe(ctx, topic, "")
	require.NoError(t, err)
	mastoTopic.WaitSubscribed(t, wait)
	people := memInstance(t, network, relaytest.Misskey, "people.test")
	_, err = people.Follow(ctx, "ann", topic)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return people.Follows("ann", topic) }, wait, 10*time.Millisecond)
	outsider := memInstance(t, network, relaytest.Mastodon, "outside.test")
	drained(t, r)

	note, err := outsider.PostWith(ctx, outsider.Inbox(), "olga", "a cat", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	boostID, err := masto.Boost(ctx, r.InboxURL(), "bob", note.ID)
	require.NoError(t, err)
	rc := pleroma.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
		return rc.Type == "Announce" && rc.ObjectID == note.ID && rc.FetchDone
	})
	assert.Equal(t, topic, rc.Actor, "the topic actor's Announce")
	require.True(t, pleroma.HasBoost(rc.ID), rc.Reason)
	personRC := people.WaitForMatch(t, wait, func(rc relaytest.Received) bool {
		return rc.Type == "Announce" && rc.ObjectID == note.ID && rc.FetchDone
	})
	assert.Equal(t, topic, personRC.Actor, "persons get the topic actor's Announce")
	require.True(t, people.HasBoost(personRC.ID), personRC.Reason)
	mastoTopic.WaitFor(t, wait, func([]relaytest.Received) bool { return mastoTopic.HasBoost(boostID) })

	require.NoError(t, masto.Unboost(ctx, r.InboxURL(), boostID))
	pleroma.WaitFor(t, wait, func([]relaytest.Received) bool { return !pleroma.HasBoost(rc.ID) })
	people.WaitFor(t, wait, func([]relaytest.Received) bool { return !people.HasBoost(personRC.ID) })
	mastoTopic.WaitFor(t, wait, func([]relaytest.Received) bool { return !mastoTopic.HasBoost(boostID) })
	for _, i := range []*relaytest.Instance{pleroma, people, mastoTopic} {
		assert.Empty(t, i.Rejected(), i.Host())
	}
}
