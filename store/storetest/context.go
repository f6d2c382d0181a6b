package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// Names used by the Context and Closed groups.
const (
	ctxKey     = "relay/key"
	ctxActor   = "https://a.example/actor"
	ctxNewKey  = "relay/new"
	ctxNewSub  = "https://b.example/actor"
	ctxSeen    = "https://a.example/activities/seen"
	ctxUnseen  = "https://a.example/activities/unseen"
	ctxHost    = "a.example"
	ctxPayload = "p1"
)

// setUpState stores one value, one subscriber, one mark and one delivery.
func setUpState(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, s.PutValue(ctx, ctxKey, []byte("v")))
	putSubscriber(t, s, sampleSubscriber(ctxActor))
	require.True(t, markSeen(t, s, ctxSeen, time.Now().Add(time.Hour)))
	enqueue(t, s, []store.Payload{payload(ctxPayload)}, delivery("d1", ctxPayload, ctxHost, t0))
}

// storeCall is one call of a Store method that would change the state set
// up by setUpState if it succeeded (or, for reads, just a read).
type storeCall struct {
	name string
	call func(ctx context.Context) error
}

// everyMethod returns a call of each Store method.
func everyMethod(s store.Store) []storeCall {
	retried := delivery("d1", ctxPayload, ctxHost, t0)
	retried.Attempts, retried.NotBefore, retried.LastError = 5, at(time.Hour), "changed"
	return []storeCall{
		{"GetValue", func(ctx context.Context) error { _, err := s.GetValue(ctx, ctxKey); return err }},
		{"PutValue", func(ctx context.Context) error { return s.PutValue(ctx, ctxKey, []byte("changed")) }},
		{"PutValueNew", func(ctx context.Context) error { return s.PutValue(ctx, ctxNewKey, []byte("new")) }},
		{"CreateValue", func(ctx context.Context) error {
			_, err := s.CreateValue(ctx, ctxNewKey, []byte("new"))
			return err
		}},
		{"DeleteValue", func(ctx context.Context) error { return s.DeleteValue(ctx, ctxKey) }},
		{"ListValues", func(ctx context.Context) error { _, err := s.ListValues(ctx, ""); return err }},
		{"GetSubscriber", func(ctx context.Context) error { _, err := s.GetSubscriber(ctx, ctxActor); return err }},
		{"UpdateSubscriber", func(ctx context.Context) error {
			_, err := s.UpdateSubscriber(ctx, ctxActor, func(p *store.Subscriber, _ bool) error {
				p.Note = "changed"
				return nil
			})
			return err
		}},
		{"UpdateSubscriberNew", func(ctx context.Context) error {
			_, err := s.UpdateSubscriber(ctx, ctxNewSub, func(p *store.Subscriber, _ bool) error {
				p.Host = "b.example"
				return nil
			})
			return err
		}},
		{"DeleteSubscriber", func(ctx context.Context) error { return s.DeleteSubscriber(ctx, ctxActor) }},
		{"ListSubscribers", func(ctx context.Context) error {
			_, err := s.ListSubscribers(ctx, store.SubscriberFilter{})
			return err
		}},
		{"MarkSeen", func(ctx context.Context) error {
			_, err := s.MarkSeen(ctx, ctxUnseen, time.Now().Add(time.Hour))
			return err
		}},
		{"ForgetSeen", func(ctx context.Context) error { return s.ForgetSeen(ctx, ctxSeen) }},
		{"Enqueue", func(ctx context.Context) error {
			return s.Enqueue(ctx, []store.Payload{payload("p2")}, []store.Delivery{delivery("d2", "p2", ctxHost, t0)})
		}},
		{"Lease", func(ctx context.Context) error {
			_, err := s.Lease(ctx, store.LeaseRequest{Now: t0, Limit: 10, Duration: time.Hour})
			return err
		}},
		{"GetPayload", func(ctx context.Context) error { _, err := s.GetPayload(ctx, ctxPayload); return err }},
		{"Complete", func(ctx context.Context) error { return s.Complete(ctx, store.IDs("d1")...) }},
		{"Retry", func(ctx context.Context) error { return s.Retry(ctx, retried) }},
		{"DropDeliveries", func(ctx context.Context) error {
			_, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: ctxHost})
			return err
		}},
		{"CountDeliveries", func(ctx context.Context) error {
			_, err := s.CountDeliveries(ctx, store.DeliveryFilter{})
			return err
		}},
		{"ShedDeliveries", func(ctx context.Context) error {
			_, err := s.ShedDeliveries(ctx, ctxHost, 0, []string{"Create"})
			return err
		}},
	}
}

// assertStateUnchanged checks that the state set up by setUpState is
// intact. It leases the delivery.
func assertStateUnchanged(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	v, err := s.GetValue(ctx, ctxKey)
	if assert.NoError(t, err, "value deleted") {
		assert.Equal(t, []byte("v"), v, "value changed")
	}
	_, err = s.GetValue(ctx, ctxNewKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "value created")

	sub, err := s.GetSubscriber(ctx, ctxActor)
	if assert.NoError(t, err, "subscriber deleted") {
		assertSubscriber(t, sampleSubscriber(ctxActor), sub, "subscriber changed")
	}
	_, err = s.GetSubscriber(ctx, ctxNewSub)
	assert.ErrorIs(t, err, store.ErrNotFound, "subscriber created")

	assert.True(t, markSeen(t, s, ctxUnseen, time.Now().Add(time.Hour)), "mark stored")
	assert.False(t, markSeen(t, s, ctxSeen, time.Now().Add(time.Hour)), "mark forgotten")

	assert.Equal(t, 1, count(t, s, store.DeliveryFilter{}), "deliveries added or removed")
	assertNoPayload(t, s, "p2")
	assertPayload(t, s, ctxPayload, payload(ctxPayload).Body)
	assertDeliveries(t, []store.Delivery{delivery("d1", ctxPayload, ctxHost, t0)},
		lease(t, s, t0, 10, time.Hour), "delivery leased, retried or removed")
}

func testContext(t *testing.T, newStore factory) {
	subtest(t, newStore, "Cancelled", func(t *testing.T, s store.Store) {
		setUpState(t, s)
		ctx := cancelled(t)
		for _, c := range everyMethod(s) {
			assert.ErrorIs(t, c.call(ctx), context.Canceled, "%s with a cancelled context", c.name)
		}
		assertStateUnchanged(t, s)
	})

	subtest(t, newStore, "DeadlineExceeded", func(t *testing.T, s store.Store) {
		setUpState(t, s)
		ctx, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
		defer cancel()
		for _, c := range everyMethod(s) {
			assert.ErrorIs(t, c.call(ctx), context.DeadlineExceeded, "%s with an expired deadline", c.name)
		}
		assertStateUnchanged(t, s)
	})

	testCancelDuringWrites(t, newStore)
}

func testClosed(t *testing.T, newStore factory) {
	subtest(t, newStore, "EveryMethod", func(t *testing.T, s store.Store) {
		closer, ok := s.(interface{ Close() error })
		if !ok {
			t.Skip("the store has no Close method")
		}
		setUpState(t, s)
		require.NoError(t, closer.Close())
		for _, c := range everyMethod(s) {
			assert.ErrorIs(t, c.call(t.Context()), store.ErrClosed, "%s after Close", c.name)
		}
	})
}
