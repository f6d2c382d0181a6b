// Package storetest is the conformance suite of store.Store: every
// implementation runs it with one call from its own tests, the way
// testing/fstest checks file systems.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			s := memstore.New()
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
//	func BenchmarkStore(b *testing.B) {
//		storetest.Benchmark(b, func(b *testing.B) store.Store { ... })
//	}
//
// The suite never reads the wall clock for queue times: it passes fixed
// times through LeaseRequest.Now and Delivery.NotBefore. Only deduplication
// marks, whose expiry the store judges by its own clock, are given times
// relative to time.Now. Times are compared with time.Time.Equal, and a store
// may truncate them to microseconds (as PostgreSQL does).
package storetest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// Run runs the conformance suite against the Store implementation that
// newStore creates. newStore must return a new, empty store each time it is
// called (once per subtest) and register its own cleanup (t.Cleanup); it
// may call t.Skip or t.Fatal. Subtests are grouped by area: Values,
// Subscribers, Dedup, Queue, Concurrency, Context, Closed (when the store
// has a Close() error method), Limits (id lengths, see
// store.PortableKeyLen, and empty actor ids) and Races. Subtests do not run
// in parallel with each other; the Concurrency and Races groups call a
// single store from many goroutines and are meant to be run with -race.
// Durable stores also run RunDurable.
//
// Where store.Store leaves room, the suite reads the contract as follows,
// and checks no more than that:
//
//   - Times keep at least microsecond precision; zero times stay zero.
//   - ListSubscribers orders ActorIDs bytewise, as Go compares strings (in
//     PostgreSQL: COLLATE "C"); ListValues prefixes are literal, so LIKE or
//     glob metacharacters in them must be escaped.
//   - An empty value (nil or not) is stored and GetValue finds it.
//   - fn changing ActorID in UpdateSubscriber must not store anything under
//     another key (failing, or keeping the key, are both accepted).
//   - Enqueue fails, storing nothing, for an empty Delivery.ID.
//   - Lease with Limit <= 0 may fail or return nothing, and leases nothing;
//     SkipHosts entries set to false do not skip; ties in NotBefore may be
//     leased in any order; the exact lease end (Now == lease start +
//     Duration) is not tested.
//   - Retry ignores the fields of d other than ID, Token, Attempts,
//     NotBefore and LastError, and needs no live lease.
//   - Lease tokens are opaque strings; every delivery Lease returns has a
//     non-empty one. Complete and Retry with an empty token act whoever
//     holds the delivery (the suite uses that for deliveries it never
//     leased).
//   - CountDeliveries with a zero filter counts every delivery; deliveries
//     whose lease is running count as queued. DropDeliveries with a zero
//     filter is not tested.
//   - A delivery whose lease is running is never shed.
//   - Deduplication marks expire by the store's clock, which is assumed to
//     be within minutes of the test's wall clock.
//   - Ids and keys of store.PortableKeyLen bytes work everywhere; longer
//     ones (up to 1 MiB, including lengths around the 32 KiB key limit of
//     B+tree engines) are either refused with store.ErrTooLong or work in
//     full, and the store keeps working for other callers either way.
//   - A write whose context is cancelled during the call returns nil (and
//     is applied) or context.Canceled (and is applied or not, but whole);
//     values, subscribers and Enqueue batches are never found in part.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	groups := []struct {
		name string
		run  func(t *testing.T, newStore factory)
	}{
		{"Values", testValues},
		{"Subscribers", testSubscribers},
		{"Dedup", testDedup},
		{"EnqueueMarks", testEnqueueMarks},
		{"Queue", testQueue},
		{"CompleteSeveral", testCompleteSeveral},
		{"Concurrency", testConcurrency},
		{"Context", testContext},
		{"Closed", testClosed},
		{"Limits", testLimits},
		{"Races", testRaces},
		{"SubscribersUpdater", testSubscribersUpdater},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) { g.run(t, newStore) })
	}
}

type factory = func(t *testing.T) store.Store

// subtest runs fn as the subtest name of t with a fresh store.
func subtest(t *testing.T, newStore factory, name string, fn func(t *testing.T, s store.Store)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		s := newStore(t)
		require.NotNil(t, s, "newStore returned nil")
		fn(t, s)
	})
}

// t0 is the fixed origin of the suite's queue times.
var t0 = time.Date(2025, time.March, 14, 15, 9, 26, 535897000, time.UTC)

// at returns t0 + d.
func at(d time.Duration) time.Time { return t0.Add(d) }

// norm makes times comparable with assert.Equal: it drops the location and
// monotonic reading, and the nanoseconds a store may truncate. Two times
// that norm maps to the same value are Equal up to microseconds.
func norm(tm time.Time) time.Time {
	return tm.Truncate(time.Microsecond).UTC()
}

func normSubscriber(s store.Subscriber) store.Subscriber {
	for _, tm := range []*time.Time{&s.CreatedAt, &s.UpdatedAt, &s.LastSuccess, &s.LastFailure, &s.FailingSince} {
		*tm = norm(*tm)
	}
	return s
}

// assertSubscriber checks that got equals want, times compared with norm.
func assertSubscriber(t *testing.T, want, got store.Subscriber, msgAndArgs ...any) bool {
	t.Helper()
	return assert.Equal(t, normSubscriber(want), normSubscriber(got), msgAndArgs...)
}

// normDelivery also clears the lease token, which the lease-token cases
// check on their own.
func normDelivery(d store.Delivery) store.Delivery {
	d.NotBefore, d.Created = norm(d.NotBefore), norm(d.Created)
	d.Token = ""
	return d
}

// assertDeliveries checks that got lists want in order, times compared
// with norm.
func assertDeliveries(t *testing.T, want, got []store.Delivery, msgAndArgs ...any) bool {
	t.Helper()
	w := make([]store.Delivery, len(want))
	for i, d := range want {
		w[i] = normDelivery(d)
	}
	g := make([]store.Delivery, len(got))
	for i, d := range got {
		g[i] = normDelivery(d)
	}
	return assert.Equal(t, w, g, msgAndArgs...)
}

// refs returns the LeaseRefs of ds.
func refs(ds []store.Delivery) []store.LeaseRef {
	out := make([]store.LeaseRef, len(ds))
	for i := range ds {
		out[i] = ds[i].Ref()
	}
	return out
}

// ids returns the IDs of ds.
func ids(ds []store.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

// payload returns a payload with a body derived from id.
func payload(id string) store.Payload {
	return store.Payload{ID: id, Body: []byte(`{"id":"` + id + `"}`)}
}

// delivery is SampleDelivery.
var delivery = SampleDelivery

// SampleDelivery returns a Create delivery with the given id of payloadID
// to https://host/inbox for the subscriber https://host/actor, due and
// created at notBefore: the deliveries the suite itself uses, for a
// store's own tests.
func SampleDelivery(id, payloadID, host string, notBefore time.Time) store.Delivery {
	return store.Delivery{
		ID:           id,
		PayloadID:    payloadID,
		Inbox:        "https://" + host + "/inbox",
		Host:         host,
		Subscriber:   "https://" + host + "/actor",
		ActivityType: "Create",
		NotBefore:    notBefore,
		Created:      notBefore,
	}
}

// enqueue enqueues and requires success.
func enqueue(t *testing.T, s store.Store, payloads []store.Payload, deliveries ...store.Delivery) {
	t.Helper()
	require.NoError(t, s.Enqueue(t.Context(), payloads, deliveries))
}

// lease leases up to limit deliveries at now for d and requires success.
func lease(t *testing.T, s store.Store, now time.Time, limit int, d time.Duration, skip ...string) []store.Delivery {
	t.Helper()
	r := store.LeaseRequest{Now: now, Limit: limit, Duration: d}
	if len(skip) > 0 {
		r.SkipHosts = make(map[string]bool)
		for _, h := range skip {
			r.SkipHosts[h] = true
		}
	}
	got, err := s.Lease(t.Context(), r)
	require.NoError(t, err)
	for _, d := range got {
		require.NotEmpty(t, d.Token, "Lease returned delivery %s without a token", d.ID)
	}
	return got
}

// leaseIDs is lease returning only the IDs.
func leaseIDs(t *testing.T, s store.Store, now time.Time, limit int, d time.Duration, skip ...string) []string {
	t.Helper()
	return ids(lease(t, s, now, limit, d, skip...))
}

// count counts the deliveries matching f and requires success.
func count(t *testing.T, s store.Store, f store.DeliveryFilter) int {
	t.Helper()
	n, err := s.CountDeliveries(t.Context(), f)
	require.NoError(t, err)
	return n
}

// assertPayload checks that payload id is stored with body want.
func assertPayload(t *testing.T, s store.Store, id string, want []byte) bool {
	t.Helper()
	got, err := s.GetPayload(t.Context(), id)
	return assert.NoError(t, err, "GetPayload(%q)", id) && assert.Equal(t, want, got, "GetPayload(%q)", id)
}

// assertNoPayload checks that payload id is not stored.
func assertNoPayload(t *testing.T, s store.Store, id string) bool {
	t.Helper()
	_, err := s.GetPayload(t.Context(), id)
	return assert.ErrorIs(t, err, store.ErrNotFound, "GetPayload(%q) of a reclaimed payload", id)
}

// putSubscriber stores sub with UpdateSubscriber and requires success.
func putSubscriber(t *testing.T, s store.Store, sub store.Subscriber) store.Subscriber {
	t.Helper()
	got, err := s.UpdateSubscriber(t.Context(), sub.ActorID, func(p *store.Subscriber, _ bool) error {
		*p = sub
		return nil
	})
	require.NoError(t, err)
	return got
}

// sortedKeys returns the keys of m, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// cancelled returns a context that is already cancelled.
func cancelled(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx
}
