package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// BenchmarkSelectRecipients measures the content stage alone for one
// tagged post: 10,000 subscribers, 1,000 of them with filters the post
// passes, and 1,000 topic followers over 100 tags (the author's document
// cached). Compare with BenchmarkTopicsAndFilters' time per post.
func BenchmarkSelectRecipients(b *testing.B) {
	ctx := context.Background()
	st := memstore.New()
	b.Cleanup(func() { _ = st.Close() })
	r, err := New(Config{BaseURL: "https://relay.test", Store: st})
	require.NoError(b, err)
	b.Cleanup(func() { _ = r.Close(ctx) })
	subs := make([]store.Subscriber, 10000)
	for k := range subs {
		subs[k] = store.Subscriber{ActorID: fmt.Sprintf("https://i%d.test/actor", k), Host: fmt.Sprintf("i%d.test", k), State: store.StateAccepted}
		if k < 1000 {
			subs[k].Filter = fmt.Sprintf(`{"allow_tags":["t1","t%d"],"languages":["en"],"max_posts_per_hour":1048576}`, k%100)
		}
	}
	for k := range 1000 {
		host := fmt.Sprintf("f%d.test", k)
		r.topics.mu.Lock()
		require.NoError(b, r.saveTopicFollower(ctx, fmt.Sprint("tag/t", k%100), "https://"+host+"/actor",
			&TopicFollower{Topic: fmt.Sprint("tag/t", k%100), Actor: "https://" + host + "/actor", Host: host, Kind: followerMastodon, Inbox: "https://" + host + "/inbox", State: store.StateAccepted}))
		r.topics.mu.Unlock()
	}
	r.docs.entries = map[string]docEntry{"https://pub.test/users/alice": {body: []byte(`{"type":"Person"}`), expires: time.Now().Add(time.Hour)}}
	body := []byte(`{"id":"https://pub.test/users/alice/statuses/1/activity","type":"Create","actor":"https://pub.test/users/alice",
		"to":["https://www.w3.org/ns/activitystreams#Public"],"object":{"id":"https://pub.test/users/alice/statuses/1","type":"Note",
		"attributedTo":"https://pub.test/users/alice","content":"<p>hi</p>","contentMap":{"en":"<p>hi</p>"},
		"tag":[{"type":"Hashtag","name":"#t1"},{"type":"Hashtag","name":"#t2"}],"attachment":[]}}`)
	env, err := parseEnvelope(body)
	require.NoError(b, err)
	b.ResetTimer()
	for b.Loop() {
		sel, err := r.selectRecipients(ctx, env, body, env.Object.ID, subs)
		if err != nil || sel.skip != nil || len(sel.topics) != 20 {
			b.Fatalf("unexpected selection: %v %v %d", err, sel.skip != nil, len(sel.topics))
		}
	}
}
