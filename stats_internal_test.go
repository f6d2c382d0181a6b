package relay

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// reviveDuringUpdate is a store whose first UpdateSubscriber runs hook
// first: a revive that lands between a flush's copy and its write.
type reviveDuringUpdate struct {
	store.Store
	once sync.Once
	hook func()
}

func (s *reviveDuringUpdate) UpdateSubscriber(ctx context.Context, id string, fn func(*store.Subscriber, bool) error) (store.Subscriber, error) {
	s.once.Do(s.hook)
	return s.Store.UpdateSubscriber(ctx, id, fn)
}

// dormantSubscriberStore returns a memory store holding one subscriber,
// actor on b.test, dormant and failing since t0.
func dormantSubscriberStore(t *testing.T, actor string, t0 time.Time) *memstore.Store {
	t.Helper()
	ms := memstore.New()
	_, err := ms.UpdateSubscriber(context.Background(), actor, func(s *store.Subscriber, _ bool) error {
		s.Host, s.State, s.FailingSince = "b.test", store.StateDormant, t0
		return nil
	})
	require.NoError(t, err)
	return ms
}

// A flush copies a subscriber's failure run, then writes it: a revive
// between the two must not get its cleared FailingSince written back
// (after a restart, the next failure would make the subscriber dormant
// again at once). The counts are still written.
func TestStaleFailureRunNotWrittenOverRevive(t *testing.T) {
	ctx := context.Background()
	const actor = "https://b.test/actor"
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	ms := dormantSubscriberStore(t, actor, t0)
	st := &reviveDuringUpdate{Store: ms}
	stats := newDeliveryStats(&Relay{store: st})
	stats.failure(ctx, actor, t0.Add(time.Hour), "HTTP 500")
	st.hook = func() { // what Relay.revive does, in its order
		stats.revive(actor)
		_, err := ms.UpdateSubscriber(ctx, actor, func(s *store.Subscriber, _ bool) error {
			s.State, s.FailingSince = store.StateAccepted, time.Time{}
			return nil
		})
		require.NoError(t, err)
	}

	require.NoError(t, stats.flush(ctx))
	got, err := ms.GetSubscriber(ctx, actor)
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, got.State)
	assert.Zero(t, got.FailingSince, "the revive's cleared failure run")
	assert.Equal(t, int64(1), got.Failed, "the counts are written")
	assert.Equal(t, t0.Add(time.Hour), got.LastFailure)

	// Without a revive, a failure run is written.
	stats.failure(ctx, actor, t0.Add(2*time.Hour), "HTTP 500")
	require.NoError(t, stats.flush(ctx))
	got, err = ms.GetSubscriber(ctx, actor)
	require.NoError(t, err)
	assert.Equal(t, t0.Add(2*time.Hour), got.FailingSince)
}

// Two processes share a store: one records a failure run in memory, the
// other revives the subscriber (it posted) and then a delivery fails
// again. The first one's flush must not write its older run over the
// revive: the run restarts at the revive, by the times in the store.
func TestFailureRunOfAnotherProcessNotWrittenOverRevive(t *testing.T) {
	ctx := context.Background()
	const actor = "https://b.test/actor"
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	ms := dormantSubscriberStore(t, actor, t0)
	first := newDeliveryStats(&Relay{store: ms})
	first.failure(ctx, actor, t0.Add(time.Hour), "HTTP 500")

	// The other process revives it (as Relay.revive does).
	revived := t0.Add(2 * time.Hour)
	_, err := ms.UpdateSubscriber(ctx, actor, func(s *store.Subscriber, _ bool) error {
		s.State, s.FailingSince, s.RevivedAt = store.StateAccepted, time.Time{}, revived
		return nil
	})
	require.NoError(t, err)

	require.NoError(t, first.flush(ctx))
	got, err := ms.GetSubscriber(ctx, actor)
	require.NoError(t, err)
	assert.Zero(t, got.FailingSince, "a run that ended before the revive is over")
	assert.Equal(t, int64(1), got.Failed, "the counts are written")

	// It fails again after the revive: the run starts at the revive at
	// the earliest, never at the first process's older failure.
	first.failure(ctx, actor, revived.Add(time.Hour), "HTTP 500")
	require.NoError(t, first.flush(ctx))
	got, err = ms.GetSubscriber(ctx, actor)
	require.NoError(t, err)
	assert.False(t, got.FailingSince.Before(revived), "FailingSince %v predates the revive %v", got.FailingSince, revived)
	assert.Equal(t, store.StateAccepted, got.State)
}
