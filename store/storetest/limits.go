package storetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// longID returns an id of exactly n bytes that starts with prefix.
func longID(prefix string, n int) string {
	return prefix + strings.Repeat("x", n-len(prefix))
}

// tooLongLengths are id lengths a store may refuse: just above
// store.PortableKeyLen, around the 32 KiB key limit of B+tree engines such
// as bbolt (where a store's prefixes make the key longer than the id), and
// far above anything the relay would pass.
var tooLongLengths = []int{
	store.PortableKeyLen + 1,
	32_760, 32_761, 32_762, 32_765, 32_767, 32_768, 32_769,
	64 << 10,
	1 << 20,
}

// idCall is a change made with one id, and the check that it was applied.
type idCall struct {
	name    string
	call    func(ctx context.Context, s store.Store, id string) error
	applied func(t *testing.T, s store.Store, id string)
}

// idCalls returns a change of each kind that takes an id or key.
func idCalls() []idCall {
	later := func() time.Time { return time.Now().Add(time.Hour) }
	return []idCall{
		{"PutValue", func(ctx context.Context, s store.Store, id string) error {
			return s.PutValue(ctx, id, []byte("put"))
		}, func(t *testing.T, s store.Store, id string) {
			v, err := s.GetValue(t.Context(), id)
			if assert.NoError(t, err, "GetValue of a key PutValue accepted") {
				assert.Equal(t, []byte("put"), v)
			}
		}},
		{"CreateValue", func(ctx context.Context, s store.Store, id string) error {
			_, err := s.CreateValue(ctx, id+"c", []byte("created"))
			return err
		}, func(t *testing.T, s store.Store, id string) {
			v, err := s.GetValue(t.Context(), id+"c")
			if assert.NoError(t, err, "GetValue of a key CreateValue accepted") {
				assert.Equal(t, []byte("created"), v)
			}
		}},
		{"UpdateSubscriber", func(ctx context.Context, s store.Store, id string) error {
			_, err := s.UpdateSubscriber(ctx, id, func(p *store.Subscriber, _ bool) error {
				p.Host, p.State, p.Note = "long.example", store.StateAccepted, "long"
				return nil
			})
			return err
		}, func(t *testing.T, s store.Store, id string) {
			sub, err := s.GetSubscriber(t.Context(), id)
			if assert.NoError(t, err, "GetSubscriber of an actor id UpdateSubscriber accepted") {
				assert.Equal(t, "long", sub.Note)
			}
			subs, err := s.ListSubscribers(t.Context(), store.SubscriberFilter{Host: "long.example"})
			if assert.NoError(t, err) {
				assert.Contains(t, actorIDs(subs), id)
			}
		}},
		{"MarkSeen", func(ctx context.Context, s store.Store, id string) error {
			fresh, err := s.MarkSeen(ctx, id, later())
			if err == nil && !fresh {
				return fmt.Errorf("MarkSeen of a new id reported it seen")
			}
			return err
		}, func(t *testing.T, s store.Store, id string) {
			assert.False(t, markSeen(t, s, id, later()), "MarkSeen of an id MarkSeen accepted")
			require.NoError(t, s.ForgetSeen(t.Context(), id))
			assert.True(t, markSeen(t, s, id, later()), "MarkSeen after ForgetSeen")
		}},
		{"EnqueueMark", func(ctx context.Context, s store.Store, id string) error {
			return s.Enqueue(ctx, []store.Payload{payload("long-mark")},
				[]store.Delivery{delivery("long-mark", "long-mark", "long.example", t0)},
				store.Mark{ID: id + "e", Until: later()})
		}, func(t *testing.T, s store.Store, id string) {
			assert.False(t, markSeen(t, s, id+"e", later()), "MarkSeen of an id Enqueue accepted")
			require.NoError(t, s.Complete(t.Context(), store.IDs("long-mark")...))
		}},
		{"EnqueuePayloadID", func(ctx context.Context, s store.Store, id string) error {
			return s.Enqueue(ctx, []store.Payload{{ID: id, Body: []byte("body")}},
				[]store.Delivery{delivery("long-payload", id, "long.example", t0)})
		}, func(t *testing.T, s store.Store, id string) {
			assertPayload(t, s, id, []byte("body"))
			require.NoError(t, s.Complete(t.Context(), store.IDs("long-payload")...))
			assertNoPayload(t, s, id)
		}},
		{"EnqueueDeliveryID", func(ctx context.Context, s store.Store, id string) error {
			return s.Enqueue(ctx, []store.Payload{payload("long-delivery")},
				[]store.Delivery{delivery(id, "long-delivery", "long.example", t0)})
		}, func(t *testing.T, s store.Store, id string) {
			got := lease(t, s, at(time.Hour), 10, time.Hour, ctxHost) // not setUpState's delivery
			assert.Equal(t, []string{id}, ids(got), "Lease of a delivery Enqueue accepted")
			require.NoError(t, s.Complete(t.Context(), store.IDs(id)...))
			assertNoPayload(t, s, "long-delivery")
		}},
	}
}

// assertWorking checks that s still serves every kind of change and read.
func assertWorking(t *testing.T, s store.Store, tag string) {
	t.Helper()
	ctx := t.Context()
	key, actor, id := "check/"+tag, "https://check.example/"+tag, "https://check.example/activities/"+tag
	require.NoError(t, s.PutValue(ctx, key, []byte(tag)), "PutValue after a refused id")
	v, err := s.GetValue(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, []byte(tag), v)
	putSubscriber(t, s, sampleSubscriber(actor))
	_, err = s.GetSubscriber(ctx, actor)
	require.NoError(t, err)
	assert.True(t, markSeen(t, s, id, time.Now().Add(time.Hour)), "MarkSeen after a refused id")
	enqueue(t, s, []store.Payload{payload("check-" + tag)}, delivery("check-"+tag, "check-"+tag, "check.example", t0))
	require.NoError(t, s.Complete(ctx, store.IDs("check-"+tag)...))
	assertNoPayload(t, s, "check-"+tag)
}

func testLimits(t *testing.T, newStore factory) {
	subtest(t, newStore, "PortableKeyLen", func(t *testing.T, s store.Store) {
		// Every store accepts ids of store.PortableKeyLen bytes.
		for _, c := range idCalls() {
			id := longID("https://a.example/"+c.name+"/", store.PortableKeyLen)
			if c.name == "CreateValue" {
				id = id[:len(id)-1] // it appends a byte
			}
			require.NoError(t, c.call(t.Context(), s, id), "%s with an id of %d bytes", c.name, store.PortableKeyLen)
			c.applied(t, s, id)
		}
		assertWorking(t, s, "portable")
	})

	subtest(t, newStore, "TooLong", func(t *testing.T, s store.Store) {
		// Longer ids are either refused with ErrTooLong, changing nothing,
		// or accepted in full; either way the store keeps working.
		setUpState(t, s)
		for _, n := range tooLongLengths {
			for _, c := range idCalls() {
				id := longID(fmt.Sprintf("https://a.example/%s/%d/", c.name, n), n)
				err := c.call(t.Context(), s, id)
				if err != nil {
					assert.ErrorIs(t, err, store.ErrTooLong, "%s with an id of %d bytes", c.name, n)
				} else {
					c.applied(t, s, id)
				}
				assertWorking(t, s, fmt.Sprintf("%s-%d", c.name, n))
			}
		}
		assertStateUnchanged(t, s)
	})

	subtest(t, newStore, "TooLongConcurrent", func(t *testing.T, s store.Store) {
		// A refused id fails its own call only, never the changes of
		// callers whose changes are made (or committed) at the same time.
		const workers, rounds = 8, 10
		parallel(workers, func(w int) {
			for r := range rounds {
				if w%2 == 0 {
					c := idCalls()[(w/2+r)%len(idCalls())]
					n := tooLongLengths[(w+r)%len(tooLongLengths)]
					id := longID(fmt.Sprintf("https://a.example/%s/%d-%d/", c.name, w, r), n)
					if err := c.call(t.Context(), s, id); err != nil {
						assert.ErrorIs(t, err, store.ErrTooLong, "%s with an id of %d bytes", c.name, n)
					}
					continue
				}
				key := fmt.Sprintf("ok/%d/%d", w, r)
				assert.NoError(t, s.PutValue(t.Context(), key, []byte(key)), "PutValue beside refused ids")
				fresh, err := s.MarkSeen(t.Context(), "https://a.example/"+key, time.Now().Add(time.Hour))
				assert.NoError(t, err, "MarkSeen beside refused ids")
				assert.True(t, fresh)
				_, err = s.UpdateSubscriber(t.Context(), "https://a.example/"+key, func(p *store.Subscriber, _ bool) error {
					p.Host = "a.example"
					return nil
				})
				assert.NoError(t, err, "UpdateSubscriber beside refused ids")
			}
		})
		vals, err := s.ListValues(t.Context(), "ok/")
		require.NoError(t, err)
		assert.Len(t, vals, workers/2*rounds, "values stored beside refused ids")
		assertWorking(t, s, "after")
	})

	subtest(t, newStore, "EmptyActorID", func(t *testing.T, s store.Store) {
		called := false
		_, err := s.UpdateSubscriber(t.Context(), "", func(p *store.Subscriber, _ bool) error {
			called = true
			p.Host = "a.example"
			return nil
		})
		assert.ErrorIs(t, err, store.ErrEmptyID, "UpdateSubscriber with an empty actor id")
		assert.False(t, called, "fn called for an empty actor id")
		_, err = s.GetSubscriber(t.Context(), "")
		assert.ErrorIs(t, err, store.ErrNotFound)
		subs, err := s.ListSubscribers(t.Context(), store.SubscriberFilter{})
		require.NoError(t, err)
		assert.Empty(t, subs)
		assertWorking(t, s, "empty")
	})
}
