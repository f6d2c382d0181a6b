package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// markSeen calls MarkSeen and requires success.
func markSeen(t *testing.T, s store.Store, id string, until time.Time) bool {
	t.Helper()
	isNew, err := s.MarkSeen(t.Context(), id, until)
	require.NoError(t, err)
	return isNew
}

func testDedup(t *testing.T, newStore factory) {
	// Marks expire by the store's clock, so these times are relative to
	// the wall clock, far enough from it that no clock skew matters.
	later := func() time.Time { return time.Now().Add(time.Hour) }
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	const id = "https://a.example/activities/1"

	subtest(t, newStore, "New", func(t *testing.T, s store.Store) {
		assert.True(t, markSeen(t, s, id, later()), "first MarkSeen")
		assert.False(t, markSeen(t, s, id, later()), "MarkSeen of a live mark")
		assert.False(t, markSeen(t, s, id, later()), "MarkSeen of a live mark, again")
		assert.True(t, markSeen(t, s, id+"/other", later()), "MarkSeen of another id")
	})

	subtest(t, newStore, "Expired", func(t *testing.T, s store.Store) {
		assert.True(t, markSeen(t, s, id, past()), "first MarkSeen")
		assert.True(t, markSeen(t, s, id, past()), "MarkSeen after an expired mark")
		assert.True(t, markSeen(t, s, id, later()), "MarkSeen after an expired mark")
		assert.False(t, markSeen(t, s, id, later()), "an expired mark must be replaced by the new one")
	})

	subtest(t, newStore, "LiveMarkKept", func(t *testing.T, s store.Store) {
		assert.True(t, markSeen(t, s, id, later()))
		assert.False(t, markSeen(t, s, id, past()), "MarkSeen of a live mark")
		assert.False(t, markSeen(t, s, id, past()), "a live mark must be left as it is, not shortened")
	})

	subtest(t, newStore, "Expires", func(t *testing.T, s store.Store) {
		const ttl = 500 * time.Millisecond
		until := time.Now().Add(ttl)
		require.True(t, markSeen(t, s, id, until))
		if time.Until(until) > ttl/2 {
			assert.False(t, markSeen(t, s, id, past()), "MarkSeen of a live mark")
		}
		// Poll with past times, which never extend a live mark.
		deadline := time.Now().Add(ttl + 5*time.Second)
		for time.Now().Before(until) || !markSeen(t, s, id, past()) {
			if time.Now().After(deadline) {
				assert.Fail(t, "the mark did not expire")
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		assert.True(t, markSeen(t, s, id, later()), "MarkSeen after expiry")
		assert.False(t, markSeen(t, s, id, later()))
	})

	subtest(t, newStore, "Forget", func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.True(t, markSeen(t, s, id, later()))
		require.True(t, markSeen(t, s, id+"/other", later()))
		require.NoError(t, s.ForgetSeen(ctx, id))
		assert.True(t, markSeen(t, s, id, later()), "MarkSeen after ForgetSeen")
		assert.False(t, markSeen(t, s, id, later()), "MarkSeen after ForgetSeen and MarkSeen")
		assert.False(t, markSeen(t, s, id+"/other", later()), "ForgetSeen removed another mark")

		assert.NoError(t, s.ForgetSeen(ctx, "https://a.example/never"), "ForgetSeen of an absent id")
		require.True(t, markSeen(t, s, id+"/expired", past()))
		assert.NoError(t, s.ForgetSeen(ctx, id+"/expired"), "ForgetSeen of an expired mark")
		assert.True(t, markSeen(t, s, id+"/expired", later()))
	})
}
