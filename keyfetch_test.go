package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
)

// subscribeFake makes f's actor user an accepted subscriber of r.
func subscribeFake(t *testing.T, r *relay.Relay, f *fakeActors, user string) {
	t.Helper()
	follow := followDoc(f.actorID(user))
	code, text, _ := post(t, r.InboxURL(), follow, func(req *http.Request) { f.signCavage(req, user, follow) })
	require.Equal(t, http.StatusAccepted, code, "%s subscribes: %s", user, text)
}

// sendAs posts a public note by f's user, signed with the user's key.
func sendAs(t *testing.T, r *relay.Relay, f *fakeActors, user string) (int, string, http.Header) {
	t.Helper()
	body := note(f.actorID(user), randomID(), time.Time{})
	return post(t, r.InboxURL(), body, func(req *http.Request) { f.signCavage(req, user, body) })
}

// sendForged posts a public note by f's user, naming the user's key but
// signed with another one.
func sendForged(t *testing.T, r *relay.Relay, f *fakeActors, user string) (int, string, http.Header) {
	t.Helper()
	body := note(f.actorID(user), randomID(), time.Time{})
	return post(t, r.InboxURL(), body, func(req *http.Request) {
		require.NoError(t, (&httpsig.Signer{KeyID: f.keyID(user), Key: otherKey(f.key(user))}).SignRequest(req, body, time.Now()))
	})
}

// Strangers whose key servers never answer can take the key fetch slots
// shared by hosts without a subscriber, but no more than their hosts'
// shares, and never the fetch of a subscribed host's key: its new sender
// is authenticated and relayed.
func TestHangingKeyServersDoNotLockOutSubscribers(t *testing.T) {
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	hang := func(f *fakeActors) *fakeActors {
		f.getHook = func(http.ResponseWriter, *http.Request) bool { <-gate; return false }
		return f
	}
	h1, h2, h3 := hang(newFakeActors(t)), hang(newFakeActors(t)), hang(newFakeActors(t))
	sub := newFakeActors(t)
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback}, nil)
	subscribeFake(t, r, sub, "instance")
	relay.SetKeyCacheBounds(r, 1000, 4) // 4 shared slots
	relay.SetKeyFetchesPerHost(r, 2)

	held := []struct {
		f    *fakeActors
		user string
	}{{h1, "held1"}, {h1, "held2"}, {h2, "held1"}, {h2, "held2"}}
	codes := make([]int, len(held))
	var wg sync.WaitGroup
	for i, h := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = sendAs(t, r, h.f, h.user)
		}()
	}
	require.Eventually(t, func() bool {
		for _, h := range held {
			if h.f.getCount("/users/"+h.user) != 1 {
				return false
			}
		}
		return true
	}, wait, time.Millisecond, "four fetches in flight, two per host")

	code, text, hdr := sendAs(t, r, h1, "held3")
	assert.Equal(t, http.StatusServiceUnavailable, code, "over the host's share: %s", text)
	assert.NotEmpty(t, hdr.Get("Retry-After"))
	assert.Zero(t, h1.getCount("/users/held3"), "not fetched")
	code, text, _ = sendAs(t, r, h3, "x")
	assert.Equal(t, http.StatusServiceUnavailable, code, "the shared slots are taken: %s", text)
	assert.Zero(t, h3.getCount("/users/x"), "not fetched")

	code, text, _ = sendAs(t, r, sub, "newcomer")
	assert.Equal(t, http.StatusAccepted, code, "a subscribed host's new key is fetched anyway: %s", text)
	assert.Equal(t, 1, sub.getCount("/users/newcomer"))

	release()
	wg.Wait()
	assert.Equal(t, []int{http.StatusForbidden, http.StatusForbidden, http.StatusForbidden, http.StatusForbidden}, codes,
		"authenticated once their servers answer, not subscribed")
}

// An expired key of a subscribed host keeps verifying while it is fetched
// again in the background (once a minute), also while that refetch hangs
// or fails; a refetch that finds the key gone drops it. A stranger's
// expired key is not used.
func TestExpiredKeyOfSubscribedHostIsUsedWhileRefetched(t *testing.T) {
	const (
		serve = iota
		hold
		fail
		missing
	)
	var mode atomic.Int32
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	sub, stranger := newFakeActors(t), newFakeActors(t)
	faults := func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/users/instance" {
			return false
		}
		switch mode.Load() {
		case hold:
			<-gate
			if mode.Load() == fail {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return true
			}
		case fail:
			http.Error(w, "down", http.StatusServiceUnavailable)
			return true
		case missing:
			http.NotFound(w, r)
			return true
		}
		return false
	}
	sub.getHook, stranger.getHook = faults, faults
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock, KeyCacheTTL: 30 * time.Minute}, nil)
	subscribeFake(t, r, sub, "instance")
	code, text, _ := sendAs(t, r, sub, "alice")
	require.Equal(t, http.StatusAccepted, code, text)
	code, text, _ = sendAs(t, r, stranger, "bob")
	require.Equal(t, http.StatusForbidden, code, "authenticated, not subscribed: %s", text)

	clock.advance(31 * time.Minute) // both keys expire (signatures use the real time: less than SignatureMaxAge)
	mode.Store(hold)
	code, text, _ = sendAs(t, r, sub, "alice")
	assert.Equal(t, http.StatusAccepted, code, "verified with the expired key while its refetch hangs: %s", text)
	require.Eventually(t, func() bool { return sub.getCount("/users/alice") == 2 }, wait, time.Millisecond, "refetched in the background")
	code, text, _ = sendAs(t, r, sub, "alice")
	assert.Equal(t, http.StatusAccepted, code, text)

	mode.Store(fail)
	release()
	code, text, _ = sendAs(t, r, stranger, "bob")
	assert.Equal(t, http.StatusUnauthorized, code, "a stranger's expired key is not used: %s", text)
	code, text, _ = sendAs(t, r, sub, "alice")
	assert.Equal(t, http.StatusAccepted, code, "verified with the expired key while its refetch fails: %s", text)
	assert.Equal(t, 2, sub.getCount("/users/alice"), "not refetched within the minute")
	clock.advance(61 * time.Second)
	// (The held refetch may still be finishing: the first request then
	// starts none, a later one does.)
	require.Eventually(t, func() bool {
		code, text, _ := sendAs(t, r, sub, "alice")
		assert.Equal(t, http.StatusAccepted, code, text)
		return sub.getCount("/users/alice") == 3
	}, wait, time.Millisecond, "refetched a minute later")

	mode.Store(missing)
	clock.advance(61 * time.Second)
	require.Eventually(t, func() bool {
		_, _, _ = sendAs(t, r, sub, "alice")
		return !slices.Contains(relay.CachedKeys(r), sub.keyID("alice"))
	}, wait, time.Millisecond, "a key that is gone is dropped")
	code, text, _ = sendAs(t, r, sub, "alice")
	assert.Equal(t, http.StatusUnauthorized, code, "no longer cached, fetched and missing: %s", text)
}

// The reviewer's scenario: forged requests naming many existing keys of one
// host. Each key is fetched once (not again within a minute after the
// failed verification), successful fetches do not spend the failed-fetch
// budget, and the budget of all fetches (KeyFetchTotalLimit) ends the
// stream with 429.
func TestForgedRequestsNamingExistingKeysAreLimited(t *testing.T) {
	actors := newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{
		AllowHTTP: true, AllowPrivate: loopback, Clock: clock,
		KeyFetchLimit:      relay.RateLimit{Rate: 0.001, Burst: 1},
		KeyFetchTotalLimit: relay.RateLimit{Rate: 0.001, Burst: 10},
	}, nil)
	codes := map[int]int{}
	fetches := func() int {
		n := 0
		for i := range 30 {
			c := actors.getCount(fmt.Sprint("/users/u", i))
			assert.LessOrEqual(t, c, 1, "u%d fetched at most once", i)
			n += c
		}
		return n
	}
	for i := range 30 {
		code, _, h := sendForged(t, r, actors, fmt.Sprint("u", i))
		codes[code]++
		if code == http.StatusTooManyRequests {
			assert.NotEmpty(t, h.Get("Retry-After"))
		}
	}
	assert.Equal(t, map[int]int{http.StatusUnauthorized: 10, http.StatusTooManyRequests: 20}, codes)
	assert.Equal(t, 10, fetches())
	for i := range 10 {
		code, text, _ := sendForged(t, r, actors, fmt.Sprint("u", i))
		assert.Equal(t, http.StatusUnauthorized, code, "cached, fetched within the minute: %s", text)
	}
	assert.Equal(t, 10, fetches(), "no refetch within the minute")
	code, text, _ := sendAs(t, r, actors, "u0")
	assert.Equal(t, http.StatusForbidden, code, "the genuine sender, cached: %s", text)
}

// When the key cache is full, the keys of subscribed hosts are kept: keys
// of hosts without a subscriber go first, then keys only forged requests
// named.
func TestSubscribedHostKeysSurviveEviction(t *testing.T) {
	sub, stranger := newFakeActors(t), newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock}, nil)
	subscribeFake(t, r, sub, "instance")
	code, text, _ := sendAs(t, r, sub, "alice")
	require.Equal(t, http.StatusAccepted, code, text)
	relay.SetKeyCacheBounds(r, 4, 64) // sweeps keep 3 keys

	for i := range 6 {
		clock.advance(time.Second) // the subscribed host's keys are the closest to expiry
		code, text, _ = sendAs(t, r, stranger, fmt.Sprint("s", i))
		require.Equal(t, http.StatusForbidden, code, "authenticated, not subscribed: %s", text)
	}
	for i := range 4 {
		clock.advance(time.Second)
		code, text, _ = sendForged(t, r, sub, fmt.Sprint("f", i))
		require.Equal(t, http.StatusUnauthorized, code, text)
	}
	cached := relay.CachedKeys(r)
	assert.Contains(t, cached, sub.keyID("instance"))
	assert.Contains(t, cached, sub.keyID("alice"))
	code, text, _ = sendAs(t, r, sub, "alice")
	assert.Equal(t, http.StatusAccepted, code, text)
	assert.Equal(t, 1, sub.getCount("/users/alice"), "still cached")
}

// hostListingStore counts the ListSubscribers calls that ask for one
// host's subscribers.
type hostListingStore struct {
	store.Store
	calls atomic.Int32
}

func (s *hostListingStore) ListSubscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	if f.Host != "" {
		s.calls.Add(1)
	}
	return s.Store.ListSubscribers(ctx, f)
}

// An inbox request whose signature fails, even after its key was fetched
// again, asks the store once whether its keyId host has a subscriber.
func TestFailedSignatureAsksForTheHostsSubscribersOnce(t *testing.T) {
	actors := newFakeActors(t)
	clock := &stepClock{now: time.Now()}
	st := &hostListingStore{Store: newMemStore(t)}
	r := newRelayServer(t, relay.Config{AllowHTTP: true, AllowPrivate: loopback, Clock: clock, Store: st}, nil)
	subscribeFake(t, r, actors, "instance")
	code, text, _ := sendAs(t, r, actors, "k")
	require.Equal(t, http.StatusAccepted, code, "k's key is cached: %s", text)
	require.Equal(t, 1, actors.getCount("/users/k"))

	clock.advance(61 * time.Second) // the key may be fetched again
	st.calls.Store(0)
	code, text, _ = sendForged(t, r, actors, "k")
	require.Equal(t, http.StatusUnauthorized, code, text)
	require.Equal(t, 2, actors.getCount("/users/k"), "the key was fetched again")
	assert.Equal(t, int32(1), st.calls.Load(), "ListSubscribers calls for the keyId host")
}
