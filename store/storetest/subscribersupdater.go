package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// testSubscribersUpdater checks store.SubscribersUpdater, for stores that
// implement it.
func testSubscribersUpdater(t *testing.T, newStore factory) {
	updater := func(t *testing.T, s store.Store) store.SubscribersUpdater {
		u, ok := s.(store.SubscribersUpdater)
		if !ok {
			t.Skip("the store does not implement store.SubscribersUpdater")
		}
		return u
	}

	subtest(t, newStore, "UpdatesStoredSkipsMissing", func(t *testing.T, s store.Store) {
		u := updater(t, s)
		a := putSubscriber(t, s, sampleSubscriber("https://a.example/actor"))
		b := putSubscriber(t, s, sampleSubscriber("https://b.example/actor"))
		missing, err := u.UpdateSubscribers(context.Background(),
			[]string{a.ActorID, "https://gone.example/actor", b.ActorID},
			func(p *store.Subscriber) error {
				p.Delivered += 5
				p.Note = "seen " + p.ActorID
				return nil
			})
		require.NoError(t, err)
		assert.Equal(t, []string{"https://gone.example/actor"}, missing)
		for _, want := range []store.Subscriber{a, b} {
			got, err := s.GetSubscriber(context.Background(), want.ActorID)
			require.NoError(t, err)
			want.Delivered += 5
			want.Note = "seen " + want.ActorID
			assertSubscriber(t, want, got)
		}
		_, err = s.GetSubscriber(context.Background(), "https://gone.example/actor")
		assert.ErrorIs(t, err, store.ErrNotFound, "a missing subscriber is not created")
	})

	subtest(t, newStore, "ErrorChangesNothing", func(t *testing.T, s store.Store) {
		u := updater(t, s)
		a := putSubscriber(t, s, sampleSubscriber("https://a.example/actor"))
		b := putSubscriber(t, s, sampleSubscriber("https://b.example/actor"))
		boom := errors.New("boom")
		_, err := u.UpdateSubscribers(context.Background(), []string{a.ActorID, b.ActorID}, func(p *store.Subscriber) error {
			if p.ActorID == b.ActorID {
				return boom
			}
			p.Delivered++
			return nil
		})
		assert.ErrorIs(t, err, boom)
		_, err = u.UpdateSubscribers(context.Background(), []string{a.ActorID}, func(p *store.Subscriber) error {
			p.ActorID = "https://other.example/actor"
			return nil
		})
		assert.Error(t, err, "ActorID must not change")
		for _, want := range []store.Subscriber{a, b} {
			got, err := s.GetSubscriber(context.Background(), want.ActorID)
			require.NoError(t, err)
			assertSubscriber(t, want, got, "unchanged")
		}
		_, err = s.GetSubscriber(context.Background(), "https://other.example/actor")
		assert.ErrorIs(t, err, store.ErrNotFound)
	})

	subtest(t, newStore, "ConcurrentChangesAllCount", func(t *testing.T, s store.Store) {
		u := updater(t, s)
		const subs, rounds = 20, 10
		var ids []string
		for k := range subs {
			p := sampleSubscriber(fmt.Sprintf("https://h%d.example/actor", k))
			p.Delivered = 0
			ids = append(ids, putSubscriber(t, s, p).ActorID)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				for range rounds {
					_, err := u.UpdateSubscribers(context.Background(), ids, func(p *store.Subscriber) error {
						p.Delivered++
						return nil
					})
					assert.NoError(t, err)
				}
			}()
			go func() {
				defer wg.Done()
				for range rounds {
					for _, id := range ids {
						_, err := s.UpdateSubscriber(context.Background(), id, func(p *store.Subscriber, _ bool) error {
							p.Delivered++
							return nil
						})
						assert.NoError(t, err)
					}
				}
			}()
		}
		wg.Wait()
		for _, id := range ids {
			got, err := s.GetSubscriber(context.Background(), id)
			require.NoError(t, err)
			assert.Equal(t, int64(8*rounds), got.Delivered, "%s: no change lost", id)
		}
	})
}
