package storetest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// sampleSubscriber returns a subscriber with every field set.
func sampleSubscriber(actorID string) store.Subscriber {
	host := strings.SplitN(strings.TrimPrefix(actorID, "https://"), "/", 2)[0]
	zone := time.FixedZone("UTC+2", 2*60*60) // a store may return another location
	return store.Subscriber{
		ActorID:         actorID,
		Host:            host,
		Protocol:        store.ProtocolLitePub,
		State:           store.StateAccepted,
		SignatureScheme: store.SignatureRFC9421,
		Software:        "gotosocial",
		FollowID:        actorID + "#follows/1",
		Inbox:           actorID + "/inbox",
		SharedInbox:     "https://" + host + "/inbox",
		FollowBackID:    "https://relay.example/follows/" + host,
		FollowBackState: store.StatePending,
		Note:            "note with ünïcode and \"quotes\"",
		Reason:          "public reason",
		Mode:            store.ModeReceiveOnly,
		Filter:          `{"allow_tags":["cats"],"max_posts_per_hour":60}`,
		CreatedAt:       t0.In(zone),
		UpdatedAt:       at(time.Hour),
		Delivered:       1 << 40,
		Failed:          3,
		LastSuccess:     at(2 * time.Hour),
		LastFailure:     at(3 * time.Hour),
		LastError:       "HTTP 503",
		FailingSince:    at(150 * time.Minute),
	}
}

func testSubscribers(t *testing.T, newStore factory) {
	subtest(t, newStore, "GetMissing", func(t *testing.T, s store.Store) {
		_, err := s.GetSubscriber(t.Context(), "https://a.example/actor")
		assert.ErrorIs(t, err, store.ErrNotFound)
	})

	subtest(t, newStore, "Create", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		want := sampleSubscriber("https://a.example/users/alice")
		calls := 0
		got, err := s.UpdateSubscriber(ctx, want.ActorID, func(p *store.Subscriber, found bool) error {
			calls++
			assert.False(t, found, "found for an absent subscriber")
			assert.Equal(t, store.Subscriber{ActorID: want.ActorID}, *p, "fn gets a zero Subscriber with ActorID set")
			*p = want
			return nil
		})
		require.NoError(t, err)
		assert.GreaterOrEqual(t, calls, 1, "fn was not called")
		assertSubscriber(t, want, got, "UpdateSubscriber returns the stored subscriber")
		stored, err := s.GetSubscriber(ctx, want.ActorID)
		require.NoError(t, err)
		assertSubscriber(t, want, stored, "GetSubscriber after create")
	})

	subtest(t, newStore, "CreateZeroTimes", func(t *testing.T, s store.Store) {
		sub := store.Subscriber{ActorID: "https://a.example/actor", Host: "a.example", State: store.StatePending}
		putSubscriber(t, s, sub)
		got, err := s.GetSubscriber(t.Context(), sub.ActorID)
		require.NoError(t, err)
		assert.Equal(t, sub, normSubscriber(got), "zero fields and times stay zero")
		assert.True(t, got.LastSuccess.IsZero(), "LastSuccess.IsZero")
		assert.True(t, got.FailingSince.IsZero(), "FailingSince.IsZero")
	})

	subtest(t, newStore, "Update", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		orig := putSubscriber(t, s, sampleSubscriber("https://a.example/actor"))
		want := orig
		want.State = store.StateDormant
		want.Delivered++
		want.LastError = ""
		want.FailingSince = time.Time{}
		got, err := s.UpdateSubscriber(ctx, orig.ActorID, func(p *store.Subscriber, found bool) error {
			assert.True(t, found, "found for an existing subscriber")
			assertSubscriber(t, orig, *p, "fn gets the stored subscriber")
			p.State = store.StateDormant
			p.Delivered++
			p.LastError = ""
			p.FailingSince = time.Time{}
			return nil
		})
		require.NoError(t, err)
		assertSubscriber(t, want, got, "UpdateSubscriber returns the subscriber as stored")
		stored, err := s.GetSubscriber(ctx, orig.ActorID)
		require.NoError(t, err)
		assertSubscriber(t, want, stored, "GetSubscriber after update")
	})

	subtest(t, newStore, "UpdateError", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		errVeto := errors.New("veto")
		absent := "https://a.example/absent"
		_, err := s.UpdateSubscriber(ctx, absent, func(p *store.Subscriber, _ bool) error {
			p.State = store.StateAccepted
			return errVeto
		})
		assert.ErrorIs(t, err, errVeto, "UpdateSubscriber returns fn's error")
		_, err = s.GetSubscriber(ctx, absent)
		assert.ErrorIs(t, err, store.ErrNotFound, "fn's error must not create the subscriber")

		orig := putSubscriber(t, s, sampleSubscriber("https://b.example/actor"))
		_, err = s.UpdateSubscriber(ctx, orig.ActorID, func(p *store.Subscriber, _ bool) error {
			p.State = store.StateRejected
			p.Note = "changed"
			return errVeto
		})
		assert.ErrorIs(t, err, errVeto)
		stored, err := s.GetSubscriber(ctx, orig.ActorID)
		require.NoError(t, err)
		assertSubscriber(t, orig, stored, "fn's error must leave the subscriber unchanged")

		all, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
		require.NoError(t, err)
		assert.Len(t, all, 1)
	})

	subtest(t, newStore, "UpdateActorID", func(t *testing.T, s store.Store) {
		// fn must not change ActorID. A store may report an error or keep
		// the key, but must not store the subscriber under another key.
		ctx := t.Context()
		orig := putSubscriber(t, s, sampleSubscriber("https://a.example/actor"))
		other := "https://b.example/actor"
		got, err := s.UpdateSubscriber(ctx, orig.ActorID, func(p *store.Subscriber, _ bool) error {
			p.ActorID = other
			return nil
		})
		if err == nil {
			assert.Equal(t, orig.ActorID, got.ActorID, "returned ActorID")
		}
		_, err = s.GetSubscriber(ctx, other)
		assert.ErrorIs(t, err, store.ErrNotFound, "subscriber stored under the ActorID fn set")
		stored, err := s.GetSubscriber(ctx, orig.ActorID)
		require.NoError(t, err)
		assert.Equal(t, orig.ActorID, stored.ActorID)
	})

	subtest(t, newStore, "Delete", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		a := putSubscriber(t, s, sampleSubscriber("https://a.example/actor"))
		b := putSubscriber(t, s, sampleSubscriber("https://a.example/other"))
		require.NoError(t, s.DeleteSubscriber(ctx, a.ActorID))
		_, err := s.GetSubscriber(ctx, a.ActorID)
		assert.ErrorIs(t, err, store.ErrNotFound, "deleted subscriber")
		_, err = s.GetSubscriber(ctx, b.ActorID)
		assert.NoError(t, err, "other subscribers are kept")
		assert.NoError(t, s.DeleteSubscriber(ctx, a.ActorID), "deleting a deleted subscriber")
		assert.NoError(t, s.DeleteSubscriber(ctx, "https://never.example/actor"), "deleting an absent subscriber")

		for _, f := range []store.SubscriberFilter{{}, {Host: "a.example"}, {State: store.StateAccepted}} {
			list, err := s.ListSubscribers(ctx, f)
			require.NoError(t, err)
			assert.Equal(t, []string{b.ActorID}, actorIDs(list), "ListSubscribers(%+v) after delete", f)
		}

		// A deleted subscriber starts afresh.
		_, err = s.UpdateSubscriber(ctx, a.ActorID, func(p *store.Subscriber, found bool) error {
			assert.False(t, found, "found after delete")
			assert.Equal(t, store.Subscriber{ActorID: a.ActorID}, *p)
			p.Host = "a.example"
			return nil
		})
		require.NoError(t, err)
	})

	subtest(t, newStore, "List", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		empty, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
		require.NoError(t, err)
		assert.NotNil(t, empty, "ListSubscribers of an empty store")
		assert.Empty(t, empty)

		// Inserted out of order; ordered bytewise by ActorID ("Z" < "a").
		mk := func(actor, host string, state store.State) store.Subscriber {
			sub := sampleSubscriber(actor)
			sub.Host, sub.State = host, state
			return putSubscriber(t, s, sub)
		}
		c := mk("https://c.example/actor", "c.example", store.StateAccepted)
		a2 := mk("https://a.example/users/alice", "a.example", store.StatePending)
		port := mk("https://a.example:8443/actor", "a.example:8443", store.StateAccepted)
		a1 := mk("https://a.example/users/Zed", "a.example", store.StateAccepted)
		b := mk("https://b.example/actor", "b.example", store.StateDormant)

		all, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
		require.NoError(t, err)
		require.Len(t, all, 5)
		want := []store.Subscriber{a1, a2, port, b, c}
		for i := range want {
			assertSubscriber(t, want[i], all[i], "ListSubscribers()[%d]", i)
		}

		for _, tc := range []struct {
			f    store.SubscriberFilter
			want []string
		}{
			{store.SubscriberFilter{Host: "a.example"}, []string{a1.ActorID, a2.ActorID}},
			{store.SubscriberFilter{Host: "a.example:8443"}, []string{port.ActorID}},
			{store.SubscriberFilter{State: store.StateAccepted}, []string{a1.ActorID, port.ActorID, c.ActorID}},
			{store.SubscriberFilter{Host: "a.example", State: store.StatePending}, []string{a2.ActorID}},
			{store.SubscriberFilter{Host: "b.example", State: store.StateAccepted}, []string{}},
			{store.SubscriberFilter{State: store.StateRejected}, []string{}},
			{store.SubscriberFilter{Host: "none.example"}, []string{}},
		} {
			got, err := s.ListSubscribers(ctx, tc.f)
			require.NoError(t, err)
			assert.NotNil(t, got, "ListSubscribers(%+v) is never nil", tc.f)
			assert.Equal(t, tc.want, actorIDs(got), "ListSubscribers(%+v)", tc.f)
		}
	})

	subtest(t, newStore, "ListAfterHostChange", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		sub := sampleSubscriber("https://a.example/actor")
		putSubscriber(t, s, sub)
		_, err := s.UpdateSubscriber(ctx, sub.ActorID, func(p *store.Subscriber, _ bool) error {
			p.Host = "moved.example"
			return nil
		})
		require.NoError(t, err)
		got, err := s.ListSubscribers(ctx, store.SubscriberFilter{Host: "a.example"})
		require.NoError(t, err)
		assert.Empty(t, got, "subscriber listed under its old host")
		got, err = s.ListSubscribers(ctx, store.SubscriberFilter{Host: "moved.example"})
		require.NoError(t, err)
		assert.Equal(t, []string{sub.ActorID}, actorIDs(got), "subscriber not listed under its new host")
	})

	subtest(t, newStore, "Copies", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		want := sampleSubscriber("https://a.example/actor")
		var kept *store.Subscriber
		got, err := s.UpdateSubscriber(ctx, want.ActorID, func(p *store.Subscriber, _ bool) error {
			*p = want
			kept = p
			return nil
		})
		require.NoError(t, err)
		kept.Note = "changed through the pointer fn got" // fn's copy is not the stored one
		got.Note = "changed in the returned value"

		stored, err := s.GetSubscriber(ctx, want.ActorID)
		require.NoError(t, err)
		assertSubscriber(t, want, stored)
		stored.Note = "changed in GetSubscriber's value"

		list, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
		require.NoError(t, err)
		require.Len(t, list, 1)
		list[0].Note = "changed in ListSubscribers' value"

		stored, err = s.GetSubscriber(ctx, want.ActorID)
		require.NoError(t, err)
		assertSubscriber(t, want, stored, "a returned value aliases the stored subscriber")
	})
}

func actorIDs(subs []store.Subscriber) []string {
	out := make([]string, len(subs))
	for i, s := range subs {
		out[i] = s.ActorID
	}
	return out
}
