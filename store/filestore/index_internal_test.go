package filestore

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// TestIndexConsistent runs random queue operations and checks after each,
// and after reopening, that the in-memory index is consistent and matches
// the file.
func TestIndexConsistent(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(dir, &Options{ReclaimInterval: -1})
	require.NoError(t, err)
	check := func(step int) {
		t.Helper()
		s.mu.RLock()
		defer s.mu.RUnlock()
		require.NoError(t, s.q.Check(), "step %d", step)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2025, time.March, 14, 15, 9, 26, 0, time.UTC)
	now := t0
	for step := range 300 {
		switch k := rng.IntN(10); {
		case k < 3:
			pid := fmt.Sprintf("p%d", rng.IntN(5))
			var ds []store.Delivery
			for range 1 + rng.IntN(3) {
				h := fmt.Sprintf("h%d.test", rng.IntN(4))
				ds = append(ds, store.Delivery{ID: fmt.Sprintf("d%d", rng.IntN(40)), PayloadID: pid, Host: h,
					Inbox: "https://" + h + "/inbox", Subscriber: fmt.Sprintf("s%d", rng.IntN(3)),
					ActivityType: "Create", NotBefore: now.Add(time.Duration(rng.IntN(5)) * time.Second), Created: now})
			}
			require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: pid, Body: []byte(pid)}}, ds))
		case k < 5:
			now = now.Add(time.Duration(rng.IntN(3)) * time.Second)
			_, err := s.Lease(ctx, store.LeaseRequest{Now: now, Limit: 1 + rng.IntN(4), Duration: 2 * time.Second, PerHost: rng.IntN(2)})
			require.NoError(t, err)
		case k < 7:
			require.NoError(t, s.Complete(ctx, store.IDs(fmt.Sprintf("d%d", rng.IntN(40)))...))
		case k < 8:
			err := s.Retry(ctx, store.Delivery{ID: fmt.Sprintf("d%d", rng.IntN(40)), Attempts: 1, NotBefore: now.Add(time.Second)})
			if err != nil {
				require.ErrorIs(t, err, store.ErrNotFound)
			}
		case k < 9:
			_, err := s.DropDeliveries(ctx, store.DeliveryFilter{Host: fmt.Sprintf("h%d.test", rng.IntN(4)), Subscriber: "s1"})
			require.NoError(t, err)
		default:
			_, err := s.ShedDeliveries(ctx, fmt.Sprintf("h%d.test", rng.IntN(4)), rng.IntN(3), []string{"Create"})
			require.NoError(t, err)
		}
		check(step)
		if step%100 == 99 {
			n := len(s.q.ByID)
			require.NoError(t, s.Close())
			s, err = Open(dir, &Options{ReclaimInterval: -1})
			require.NoError(t, err)
			require.Len(t, s.q.ByID, n, "reopened")
			check(step)
		}
	}
	require.NoError(t, s.Close())
}
