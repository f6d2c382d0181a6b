package relay

// Documents fetched for content filters, topics and opt-outs: a post's
// object (a LitePub Announce names it by id) and its author. Fetches are
// signed and guarded (Relay.fetch), cached, and shared by concurrent
// callers (one fetch per id at a time); the inbox waits for them at most
// Config.KeyFetchTimeout in all.

import (
	"context"
	"sync"
	"time"
)

const (
	// docCacheSize bounds the cached documents (entries, not bytes: each
	// is at most Config.MaxBodyBytes, in practice a few KB).
	docCacheSize = 4096
	// docCacheTTL is how long a fetched document is used; failures are
	// remembered for docFailureTTL, so a dead origin is not asked again
	// for every post that names it.
	docCacheTTL   = 10 * time.Minute
	docFailureTTL = time.Minute
)

// docCache caches fetched documents by id. The zero value is ready.
type docCache struct {
	mu      sync.Mutex
	entries map[string]docEntry
	calls   map[string]*docCall
}

type docEntry struct {
	body    []byte
	err     error
	expires time.Time
}

type docCall struct {
	done chan struct{}
	body []byte
	err  error
}

// fetchDoc returns the document id, from the cache or fetched. The fetch
// runs on its own (bounded by KeyFetchTimeout), so a caller whose ctx ends
// gets ctx.Err() while others still get the result. The document's own id
// must be id, and it must be served from id's origin (fetchByID).
func (r *Relay) fetchDoc(ctx context.Context, id string) ([]byte, error) {
	c := &r.docs
	now := r.now()
	c.mu.Lock()
	if e, ok := c.entries[id]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.body, e.err
	}
	call := c.calls[id]
	if call == nil {
		if c.calls == nil {
			c.calls = map[string]*docCall{}
		}
		call = &docCall{done: make(chan struct{})}
		c.calls[id] = call
		go r.runDocFetch(id, call)
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.body, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Relay) runDocFetch(id string, call *docCall) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.KeyFetchTimeout)
	defer cancel()
	var body []byte
	d, err := r.fetchByID(ctx, id)
	if err == nil {
		body = d.body
	}
	call.body, call.err = body, err
	c := &r.docs
	ttl := docCacheTTL
	if err != nil {
		ttl = docFailureTTL
	}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[string]docEntry{}
	}
	if len(c.entries) >= docCacheSize {
		now := r.now()
		for k, e := range c.entries {
			if now.After(e.expires) || len(c.entries) >= docCacheSize {
				delete(c.entries, k)
			}
		}
	}
	c.entries[id] = docEntry{body: body, err: err, expires: r.now().Add(ttl)}
	delete(c.calls, id)
	c.mu.Unlock()
	close(call.done)
}
