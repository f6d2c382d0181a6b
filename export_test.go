package relay

// Test hooks for the external tests (package relay_test).

// SetKeyCacheBounds sets the relay's key cache bounds: the most keys kept
// and the most key fetches in flight for hosts without a subscriber
// (maxCachedKeys and maxKeyFetches by default), so that tests need not create tens of thousands of keys.
func SetKeyCacheBounds(r *Relay, maxKeys, maxFetches int) {
	c := r.keys
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxKeys, c.maxFetches = maxKeys, maxFetches
	c.sweepAt = min(c.maxKeys, max(minKeySweep, 2*len(c.keys)))
}

// CachedKeys returns the key ids the relay's key cache holds.
func CachedKeys(r *Relay) []string {
	c := r.keys
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.keys))
	for id := range c.keys {
		ids = append(ids, id)
	}
	return ids
}

// SetKeyFetchesPerHost sets the most key fetches in flight for one keyId
// host (maxKeyFetchesPerHost by default).
func SetKeyFetchesPerHost(r *Relay, n int) {
	c := r.keys
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxHostFetches = n
}

// SetEnqueueChunk sets the most deliveries the relay stores in one store
// change (enqueueChunk by default), so that tests can fan out in chunks
// with a few subscribers.
func SetEnqueueChunk(r *Relay, n int) { r.enqueueChunk = n }

// FanOutsWaiting returns how many fan-outs wait for another one that takes
// the same deduplication marks.
func FanOutsWaiting(r *Relay) int {
	r.markLocks.mu.Lock()
	defer r.markLocks.mu.Unlock()
	return r.markLocks.waiting
}

// CompletionsToRetry returns how many completions the store failed and
// the relay keeps for its next retry (see retryCompletes).
func CompletionsToRetry(r *Relay) int {
	q := r.queue
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, c := range q.done {
		if !c.queued {
			n++
		}
	}
	return n
}
