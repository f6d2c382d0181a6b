package relay_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// BenchmarkTopicsAndFilters measures the inbox's time per post (one op:
// one tagged Mastodon post taken in, its fan-out to 10,000 subscribers
// stored, 202 answered) without filters, and with 1,000 topic followers
// over 100 tags and filters on 1,000 of the subscribers, filters the post
// passes, so that both fan-outs are the same (plus, with topics, the 20
// followers of the post's two tags). Deliveries are
// not sent (the relay is not started), so the figure is the inbox's work:
// reading, authenticating, selecting, building and storing the fan-out,
// plus the sender's own signing. Run it with a fixed count, e.g.
// -benchtime=30x: every op queues 10,000 deliveries that stay queued.
func BenchmarkTopicsAndFilters(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchTopics(b, false) })
	b.Run("topics+filters", func(b *testing.B) { benchTopics(b, true) })
}

func benchTopics(b *testing.B, filtered bool) {
	const subscribers, topicFollowers, topics, filteredSubs = 10000, 1000, 100, 1000
	ctx := context.Background()
	var net memnet.Network
	st := memstore.New()
	b.Cleanup(func() { _ = st.Close() })
	require.NoError(b, st.PutValue(ctx, "relay/private-key.pem", testRelayKey(b)))
	r, err := relay.New(relay.Config{
		BaseURL: "https://relay.test", Store: st, Transport: &net, Logger: quietLogger(),
		InboxLimit: relay.RateLimit{Rate: -1}, MaxHostBacklog: -1,
	})
	require.NoError(b, err)
	net.Handle("relay.test", r.Handler())
	b.Cleanup(func() { _ = r.Close(context.Background()) })

	sender := relaytest.NewInstance(b, relaytest.Mastodon, relaytest.Options{Network: &net, Host: "pub.test", Logf: func(string, ...any) {}})
	// Subscribed in the store: the relay is not started to send an Accept.
	_, err = st.UpdateSubscriber(ctx, sender.RelayActorID(), func(s *store.Subscriber, _ bool) error {
		s.Host, s.Protocol, s.State, s.Inbox = "pub.test", store.ProtocolMastodon, store.StateAccepted, sender.Inbox()
		return nil
	})
	require.NoError(b, err)
	for k := range subscribers {
		actor := fmt.Sprintf("https://i%d.test/actor", k)
		_, err := st.UpdateSubscriber(ctx, actor, func(s *store.Subscriber, _ bool) error {
			s.Host, s.Protocol, s.State = fmt.Sprintf("i%d.test", k), store.ProtocolMastodon, store.StateAccepted
			s.Inbox = fmt.Sprintf("https://i%d.test/inbox", k)
			return nil
		})
		require.NoError(b, err)
		if filtered && k < filteredSubs {
			spec := relay.FilterSpec{DenyTags: []string{"nsfw"}}
			switch k % 3 {
			case 1:
				spec = relay.FilterSpec{Languages: []string{"en", "de"}, NoSensitive: true}
			case 2:
				spec = relay.FilterSpec{AllowTags: []string{"t1", fmt.Sprint("t", k%topics)}, MaxPostsPerHour: 1 << 20}
			}
			require.NoError(b, r.SetSubscriberFilter(ctx, actor, spec))
		}
	}
	if filtered {
		for k := range topicFollowers {
			host := fmt.Sprintf("f%d.test", k)
			require.NoError(b, relay.PutTopicFollower(ctx, r, relay.TopicFollower{
				Topic: fmt.Sprint("tag/t", k%topics), Actor: "https://" + host + "/actor", Host: host,
				Kind: "mastodon", Inbox: "https://" + host + "/inbox", State: store.StateAccepted,
			}))
		}
	}
	opts := relaytest.PostOptions{Tags: []string{"t1", "t2"}, Language: "en"}
	// The first post fetches the author (for opt-outs) and warms caches.
	_, err = sender.PostWith(ctx, memRelayInbox, "alice", "warm-up", opts)
	require.NoError(b, err)
	b.ResetTimer()
	cpu0 := processCPU()
	for k := 0; k < b.N; k++ {
		_, err := sender.PostWith(ctx, memRelayInbox, "alice", fmt.Sprint("post ", k), opts)
		require.NoError(b, err)
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N)/1e6, "cpu-ms/post")
	n, err := st.CountDeliveries(ctx, store.DeliveryFilter{Host: "i9999.test"})
	require.NoError(b, err)
	require.Equal(b, b.N+1, n, "every post was queued for the last subscriber")
}
