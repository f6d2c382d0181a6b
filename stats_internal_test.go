package relay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/fedirelay/relay/store"
)

// A flush copies a subscriber's failure run, then writes it: a revive
// between the two must not get its cleared FailingSince written back
// (after a restart, the next failure would make the subscriber dormant
// again at once).
func TestStaleFailureRunNotWrittenOverRevive(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	failing := subStats{failed: 3, lastFailure: t0.Add(time.Hour), lastError: "HTTP 500",
		runStart: t0, failingSince: t0, seeded: true}

	revived := store.Subscriber{State: store.StateAccepted, UpdatedAt: t0.Add(2 * time.Hour)}
	failing.apply(&revived)
	assert.Zero(t, revived.FailingSince, "the revive's cleared failure run")
	assert.Equal(t, int64(3), revived.Failed, "the counts are still written")
	assert.Equal(t, t0.Add(time.Hour), revived.LastFailure)

	// Without a revive, the run is written.
	stillFailing := store.Subscriber{State: store.StateAccepted, UpdatedAt: t0.Add(-time.Hour)}
	failing.apply(&stillFailing)
	assert.Equal(t, t0, stillFailing.FailingSince)

	// A failure after the revive starts a new run, written as usual.
	again := failing
	again.lastFailure, again.runStart, again.failingSince = t0.Add(3*time.Hour), t0.Add(3*time.Hour), t0.Add(3*time.Hour)
	revived2 := store.Subscriber{State: store.StateAccepted, UpdatedAt: t0.Add(2 * time.Hour)}
	again.apply(&revived2)
	assert.Equal(t, t0.Add(3*time.Hour), revived2.FailingSince)
}
