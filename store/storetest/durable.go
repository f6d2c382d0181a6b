package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// RunDurable checks that a durable store keeps its state when it is closed
// and opened again. newStore creates a new, empty store as for Run; reopen
// closes the store it is given (and any store reopen returned before) and
// returns a store opened on the same state, registering its cleanup
// itself. For a store in a directory, reopen closes it and opens the same
// directory again; for a database, it closes the connection and connects
// anew.
//
//	func TestDurable(t *testing.T) {
//		storetest.RunDurable(t, newStore, func(t *testing.T, s store.Store) store.Store {
//			require.NoError(t, s.(*filestore.Store).Close())
//			return openIn(t, s.(*filestore.Store).Dir())
//		})
//	}
//
// The state written before the reopen is every kind the contract keeps:
// values (empty, binary and long keys), subscribers with every field set,
// live and forgotten deduplication marks, queued, retried, completed,
// dropped and shed deliveries and their payloads. Leases may or may not
// survive a reopen; the checks lease only after every lease has expired.
func RunDurable(t *testing.T, newStore func(t *testing.T) store.Store, reopen func(t *testing.T, s store.Store) store.Store) {
	t.Helper()
	t.Run("Durable", func(t *testing.T) {
		s := newStore(t)
		require.NotNil(t, s, "newStore returned nil")
		ctx := t.Context()
		later := time.Now().Add(time.Hour)

		// Values.
		longKey := longID("long/", store.PortableKeyLen)
		values := map[string][]byte{
			"relay/key":   []byte("-----BEGIN PRIVATE KEY-----"),
			"empty":       {},
			"binary":      {0, 0xff, 0xfe, '\n', 0},
			longKey:       []byte("long"),
			"policy/ünï":  []byte(`{"a":1}`),
			"deleted/key": []byte("gone"),
		}
		for k, v := range values {
			require.NoError(t, s.PutValue(ctx, k, v))
		}
		require.NoError(t, s.PutValue(ctx, "relay/key", []byte("replaced")))
		values["relay/key"] = []byte("replaced")
		require.NoError(t, s.DeleteValue(ctx, "deleted/key"))
		delete(values, "deleted/key")

		// Subscribers.
		subs := []store.Subscriber{
			sampleSubscriber("https://a.example/users/alice"),
			sampleSubscriber("https://b.example/actor"),
			sampleSubscriber(longID("https://c.example/", store.PortableKeyLen)),
		}
		for _, sub := range subs {
			putSubscriber(t, s, sub)
		}
		putSubscriber(t, s, sampleSubscriber("https://gone.example/actor"))
		require.NoError(t, s.DeleteSubscriber(ctx, "https://gone.example/actor"))

		// Deduplication marks.
		const seen, forgotten = "https://a.example/activities/seen", "https://a.example/activities/forgotten"
		require.True(t, markSeen(t, s, seen, later))
		require.True(t, markSeen(t, s, forgotten, later))
		require.NoError(t, s.ForgetSeen(ctx, forgotten))

		// Queue: p1 is shared by d1 (kept), d2 (retried) and d3 (completed);
		// p2 by d4 (dropped) only; p3 by d5 (shed) and d6 (leased).
		d1 := delivery("d1", "p1", "a.example", t0)
		d2 := delivery("d2", "p1", "b.example", t0)
		d3 := delivery("d3", "p1", "c.example", t0)
		d4 := delivery("d4", "p2", "drop.example", t0)
		d5 := delivery("d5", "p3", "shed.example", t0)
		d6 := delivery("d6", "p3", "e.example", at(time.Second))
		d6.ActivityType, d6.Subscriber = "Delete", ""
		enqueue(t, s, []store.Payload{payload("p1"), payload("p2"), payload("p3")}, d1, d2, d3, d4, d5, d6)
		got := lease(t, s, t0, 10, time.Minute, "a.example", "c.example", "drop.example", "shed.example", "e.example")
		require.Equal(t, []string{"d2"}, ids(got))
		d2.Attempts, d2.NotBefore, d2.LastError = 3, at(10*time.Minute), "HTTP 503"
		require.NoError(t, s.Retry(ctx, d2))
		require.NoError(t, s.Complete(ctx, store.IDs("d3")...))
		n, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: "drop.example"})
		require.NoError(t, err)
		require.Equal(t, 1, n)
		n, err = s.ShedDeliveries(ctx, "shed.example", 0, []string{"Create"})
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, []string{"d6"}, leaseIDs(t, s, at(time.Second), 10, time.Minute, "a.example", "b.example"))

		check := func(t *testing.T, s store.Store, round int) {
			t.Helper()
			gotValues, err := s.ListValues(ctx, "")
			require.NoError(t, err)
			assert.Equal(t, sortedKeys(values), sortedKeys(gotValues), "value keys after reopen %d", round)
			for k, v := range values {
				assert.Equal(t, v, gotValues[k], "value %.40q after reopen %d", k, round)
			}
			gotSubs, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
			require.NoError(t, err)
			if assert.Len(t, gotSubs, len(subs), "subscribers after reopen %d", round) {
				for i := range subs {
					assertSubscriber(t, subs[i], gotSubs[i], "subscriber after reopen %d", round)
				}
			}
			byHost, err := s.ListSubscribers(ctx, store.SubscriberFilter{Host: "b.example"})
			require.NoError(t, err)
			assert.Equal(t, []string{"https://b.example/actor"}, actorIDs(byHost), "host index after reopen %d", round)

			assert.False(t, markSeen(t, s, seen, later), "a live mark lost by reopen %d", round)
			assert.Equal(t, 3, count(t, s, store.DeliveryFilter{}), "deliveries after reopen %d", round)
			assertPayload(t, s, "p1", payload("p1").Body)
			assertNoPayload(t, s, "p2")
			assertPayload(t, s, "p3", payload("p3").Body)
			// Every lease has expired an hour later.
			got := lease(t, s, at(time.Hour), 10, time.Minute)
			assertDeliveries(t, []store.Delivery{d1, d6, d2}, got, "queue after reopen %d", round)
		}

		s = reopen(t, s)
		require.NotNil(t, s, "reopen returned nil")
		check(t, s, 1)
		assert.True(t, markSeen(t, s, forgotten, later), "a forgotten mark came back after reopen")

		// Enqueue stays idempotent across a reopen, and payload reference
		// counts are rebuilt: p1 goes with the last of d1 and d2.
		changed := d1
		changed.Inbox = "https://a.example/other-inbox"
		require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p1", Body: []byte("other")}}, []store.Delivery{changed}))
		assert.Equal(t, 3, count(t, s, store.DeliveryFilter{}), "Enqueue of a queued ID after reopen")
		assertPayload(t, s, "p1", payload("p1").Body)
		require.NoError(t, s.Complete(ctx, store.IDs("d1")...))
		assertPayload(t, s, "p1", payload("p1").Body)
		require.NoError(t, s.Complete(ctx, store.IDs("d2")...))
		assertNoPayload(t, s, "p1")
		for i := range 3 {
			enqueue(t, s, []store.Payload{payload(fmt.Sprintf("new%d", i))},
				delivery(fmt.Sprintf("new%d", i), fmt.Sprintf("new%d", i), "a.example", t0))
		}

		s = reopen(t, s)
		require.NotNil(t, s, "reopen returned nil")
		assert.False(t, markSeen(t, s, forgotten, later), "a mark made after the first reopen lost")
		assert.Equal(t, 4, count(t, s, store.DeliveryFilter{}), "deliveries after the second reopen")
		assertNoPayload(t, s, "p1")
		got = lease(t, s, at(2*time.Hour), 10, time.Minute)
		if assert.Len(t, got, 4, "queue after the second reopen") { // ties at t0 in any order
			assert.ElementsMatch(t, []string{"new0", "new1", "new2"}, ids(got[:3]))
			assert.Equal(t, "d6", got[3].ID)
		}
		for _, d := range got {
			require.NoError(t, s.Complete(ctx, d.Ref()))
		}
		for _, p := range []string{"new0", "new1", "new2", "p3"} {
			assertNoPayload(t, s, p)
		}
	})
}
