package relay

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// errGone reports a 410 Gone from a fetched URL: a deleted actor or object.
var errGone = errors.New("relay: gone")

// FetchError is returned when a signed GET of a remote document fails with
// an unexpected HTTP status.
type FetchError struct {
	URL    string
	Status int
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("relay: fetching %s: HTTP %d", e.URL, e.Status)
}

// maxRedirects bounds the redirects followed by a fetch; every hop is
// signed anew and checked like the first.
const maxRedirects = 3

const acceptActivity = `application/activity+json, application/ld+json; profile="https://www.w3.org/ns/activitystreams"`

// fetch GETs an ActivityPub document with a signed request, following up to
// maxRedirects redirects, and returns at most Config.MaxBodyBytes of body.
func (r *Relay) fetch(ctx context.Context, rawURL string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	target := rawURL
	for hop := 0; ; hop++ {
		if err := checkIRI(target); err != nil {
			return nil, fmt.Errorf("relay: fetching: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return nil, fmt.Errorf("relay: fetching %s: %w", target, err)
		}
		req.Header.Set("Accept", acceptActivity)
		req.Header.Set("User-Agent", r.cfg.UserAgent)
		if err := r.signer.SignRequest(req, nil, r.now()); err != nil {
			return nil, err
		}
		resp, err := r.transport.RoundTrip(req)
		if err != nil {
			return nil, fmt.Errorf("relay: fetching %s: %w", target, err)
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" {
			drain(resp)
			if hop == maxRedirects {
				return nil, fmt.Errorf("relay: fetching %s: more than %d redirects", rawURL, maxRedirects)
			}
			next, err := req.URL.Parse(loc)
			if err != nil {
				return nil, fmt.Errorf("relay: fetching %s: bad redirect: %w", target, err)
			}
			target = next.String()
			continue
		}
		return r.readDocument(resp, target)
	}
}

func (r *Relay) readDocument(resp *http.Response, target string) ([]byte, error) {
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusGone:
		return nil, fmt.Errorf("%w: %s", errGone, target)
	case resp.StatusCode != http.StatusOK:
		return nil, &FetchError{URL: target, Status: resp.StatusCode}
	}
	if ct := resp.Header.Get("Content-Type"); !isDocumentType(ct) {
		return nil, fmt.Errorf("relay: fetching %s: unexpected content type %q", target, ct)
	}
	if resp.ContentLength > r.cfg.MaxBodyBytes {
		return nil, fmt.Errorf("relay: fetching %s: document of %d bytes is larger than %d bytes", target, resp.ContentLength, r.cfg.MaxBodyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("relay: fetching %s: %w", target, err)
	}
	if int64(len(body)) > r.cfg.MaxBodyBytes {
		return nil, fmt.Errorf("relay: fetching %s: document larger than %d bytes", target, r.cfg.MaxBodyBytes)
	}
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return nil, fmt.Errorf("relay: fetching %s: %w", target, err)
	}
	return body, nil
}

// isDocumentType reports a Content-Type an ActivityPub document may be
// served with: application/activity+json, application/ld+json (with any
// parameters) or plain application/json. A missing type is refused, like
// HTML error pages and anything else.
func isDocumentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/activity+json" || mt == "application/ld+json" || mt == "application/json")
}

// drain discards a little of what is left of a response body and closes
// it, so the connection can be reused.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// remoteActor is what the relay keeps of a fetched actor document.
type remoteActor struct {
	ID          string
	Type        string
	Inbox       string
	SharedInbox string
}

// DeliveryInbox returns the shared inbox if the actor has one, else its inbox.
func (a *remoteActor) DeliveryInbox() string {
	if a.SharedInbox != "" {
		return a.SharedInbox
	}
	return a.Inbox
}

// remoteKey is a verified binding of a key id to its owner.
type remoteKey struct {
	ID      string
	Owner   *remoteActor
	Key     crypto.PublicKey
	expires time.Time
	// refetched is when the key was last fetched again because a
	// signature did not verify with it (zero if never); guarded by
	// keyCache.mu.
	refetched time.Time
}

// keyDocument is the union of an actor document and a bare key document.
type keyDocument struct {
	ID           string          `json:"id"`
	Type         json.RawMessage `json:"type"`
	Owner        string          `json:"owner"`
	PublicKeyPem string          `json:"publicKeyPem"`
	PublicKey    json.RawMessage `json:"publicKey"`
	Inbox        string          `json:"inbox"`
	Endpoints    struct {
		SharedInbox string `json:"sharedInbox"`
	} `json:"endpoints"`
}

type publicKeyEntry struct {
	ID           string `json:"id"`
	Owner        string `json:"owner"`
	PublicKeyPem string `json:"publicKeyPem"`
}

func (d *keyDocument) keys() []publicKeyEntry {
	if len(d.PublicKey) == 0 {
		return nil
	}
	var list []publicKeyEntry
	if d.PublicKey[0] == '[' {
		_ = json.Unmarshal(d.PublicKey, &list)
		return list
	}
	var one publicKeyEntry
	if json.Unmarshal(d.PublicKey, &one) == nil {
		list = append(list, one)
	}
	return list
}

func (d *keyDocument) actor() *remoteActor {
	t, _ := typeOf(d.Type)
	return &remoteActor{ID: d.ID, Type: t, Inbox: d.Inbox, SharedInbox: d.Endpoints.SharedInbox}
}

// keyCache resolves key ids to verified owners, caching them for
// Config.KeyCacheTTL. Concurrent lookups of one key id share one fetch.
//
// The cache is bounded: when it grows past sweepAt, expired entries are
// dropped, and if more than maxKeys remain, those closest to expiry are
// evicted. At most maxFetches keys are fetched at once, whatever their
// hosts (keyId hosts are chosen by strangers, and subdomains are free).
type keyCache struct {
	r          *Relay
	mu         sync.Mutex
	keys       map[string]*remoteKey
	inflight   map[string]*keyCall
	maxKeys    int // most keys kept
	maxFetches int // most fetches in flight
	sweepAt    int // cache size that triggers the next sweep
}

type keyCall struct {
	done   chan struct{}
	key    *remoteKey
	err    error
	host   string // the keyId host, whose fetch budget paid for the call
	refund bool   // give the token back if the fetch succeeds
	// refetched is set on a refetch after a failed verification: the time
	// it started, recorded in the new entry (see remoteKey.refetched).
	refetched time.Time
}

// Bounds of the key cache.
const (
	// maxCachedKeys bounds the keys kept in memory.
	maxCachedKeys = 50_000
	// minKeySweep is the smallest cache size at which expired keys are
	// swept; afterwards the next sweep comes when the cache has doubled.
	minKeySweep = 1024
	// maxKeyFetches bounds the key fetches in flight; beyond it the inbox
	// answers 503 with Retry-After (keyBusyRetryAfter).
	maxKeyFetches = 64
	// keyRefetchInterval is how often a cached key may be fetched again
	// because a signature did not verify with it (a rotated key); forged
	// signatures naming the key cause no more fetches than that.
	keyRefetchInterval = time.Minute
)

func newKeyCache(r *Relay) *keyCache {
	return &keyCache{
		r: r, keys: map[string]*remoteKey{}, inflight: map[string]*keyCall{},
		maxKeys: maxCachedKeys, maxFetches: maxKeyFetches, sweepAt: min(minKeySweep, maxCachedKeys),
	}
}

// rateLimitedError reports that a per-host limit was exceeded; the
// request may be retried after the given time.
type rateLimitedError struct {
	what  string
	host  string
	after time.Duration
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("relay: too many %s for %s, retry in %v", e.what, e.host, e.after)
}

// Errors of keyCache.get that are not fetch failures.
var (
	// errRefetchTooSoon: the key was already fetched again because of a
	// failed verification less than keyRefetchInterval ago.
	errRefetchTooSoon = errors.New("relay: key was refetched less than a minute ago")
	// errKeyFetchesBusy: maxKeyFetches fetches are in flight.
	errKeyFetchesBusy = errors.New("relay: too many key fetches in flight")
)

// get returns the key for keyID: the cached one if it has not expired and
// is not stale, else a fresh fetch. stale, if not nil, is a key the caller
// could not verify a signature with: if the cache still holds it, the key
// is fetched again (a rotated key), at most once per keyRefetchInterval
// (else errRefetchTooSoon); if the cache already holds another one, that
// one is returned.
//
// A fetch takes a token from the keyId host's bucket (Config.KeyFetchLimit)
// and gives it back if it succeeds, so only failed fetches (errors, 404s,
// bad documents, timeouts) spend the budget; callers that join a fetch in
// flight take none. When the budget is spent, a key that was cached before
// is still fetched if its host has a subscriber (known senders are never
// locked out by strangers' failures). At most maxFetches fetches run at
// once (else errKeyFetchesBusy).
func (c *keyCache) get(ctx context.Context, keyID string, stale *remoteKey) (*remoteKey, error) {
	host := hostOf(keyID)
	checked, known := false, false
	for {
		now := c.r.now()
		c.mu.Lock()
		k, cached := c.keys[keyID]
		refresh := cached && stale != nil && k == stale
		if cached && !refresh && now.Before(k.expires) {
			c.mu.Unlock()
			return k, nil
		}
		call, ok := c.inflight[keyID]
		if !ok {
			if refresh && !k.refetched.IsZero() && now.Sub(k.refetched) < keyRefetchInterval {
				c.mu.Unlock()
				return nil, errRefetchTooSoon
			}
			if len(c.inflight) >= c.maxFetches {
				c.mu.Unlock()
				return nil, errKeyFetchesBusy
			}
			spend := !known && c.r.keyLimit != nil
			if spend {
				if allowed, after := c.r.keyLimit.allow(host, now); !allowed {
					c.mu.Unlock()
					if cached && !checked {
						checked = true
						if known = c.r.hostHasSubscriber(ctx, host); known {
							continue
						}
					}
					return nil, &rateLimitedError{what: "key fetches", host: host, after: after}
				}
			}
			call = &keyCall{done: make(chan struct{}), host: host, refund: spend}
			if refresh {
				k.refetched = now // a failed refetch counts too
				call.refetched = now
			}
			// keyID is usually a substring of the request's Signature header:
			// a copy keeps the cache from holding every such header alive.
			keyID = strings.Clone(keyID)
			c.inflight[keyID] = call
			go c.resolve(keyID, call)
		}
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.key, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// hostHasSubscriber reports whether an accepted (or dormant) subscriber
// lives on host. A store error counts as no.
func (r *Relay) hostHasSubscriber(ctx context.Context, host string) bool {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{Host: host})
	if err != nil {
		return false
	}
	for _, s := range subs {
		if s.State == store.StateAccepted || s.State == store.StateDormant {
			return true
		}
	}
	return false
}

// resolve runs one fetch on behalf of every waiter. It is detached from
// the waiters' contexts so that one impatient caller does not fail the
// others; it has its own timeout, Config.KeyFetchTimeout.
func (c *keyCache) resolve(keyID string, call *keyCall) {
	ctx, cancel := context.WithTimeout(context.Background(), c.r.cfg.KeyFetchTimeout)
	defer cancel()
	call.key, call.err = c.r.resolveKey(ctx, keyID)
	if call.err == nil && call.refund {
		c.r.keyLimit.refund(call.host, c.r.now())
	}
	c.mu.Lock()
	if call.err == nil {
		call.key.refetched = call.refetched
		c.keys[keyID] = call.key
		if len(c.keys) > c.sweepAt {
			c.sweep(c.r.now())
		}
	}
	delete(c.inflight, keyID)
	c.mu.Unlock()
	close(call.done)
}

// sweep drops the expired keys and, if more than 90 % of maxKeys remain,
// evicts those closest to expiry down to that. The next sweep comes when
// the cache has doubled (at least minKeySweep, at most maxKeys), so the
// cost of sweeping is spread over many fetches. c.mu must be held.
func (c *keyCache) sweep(now time.Time) {
	for id, k := range c.keys {
		if !now.Before(k.expires) {
			delete(c.keys, id)
		}
	}
	if keep := c.maxKeys * 9 / 10; len(c.keys) > keep {
		ids := make([]string, 0, len(c.keys))
		for id := range c.keys {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int { return c.keys[a].expires.Compare(c.keys[b].expires) })
		for _, id := range ids[:len(ids)-keep] {
			delete(c.keys, id)
		}
	}
	c.sweepAt = min(c.maxKeys, max(minKeySweep, 2*len(c.keys)))
}

// resolveKey fetches keyID and binds it to its owner both ways: the key
// document names the owner, and the owner's actor document lists the key
// (as Mastodon checks). The fetched document is trusted as the owner's
// actor document only if its id is the URL fetched (keyID without its
// fragment); otherwise the owner is fetched by its id. It accepts keys embedded in the actor document
// (keyId = actor#main-key), GoToSocial's key stubs (keyId = actor/main-key,
// a document whose publicKey.id is the keyId) and bare Key documents.
func (r *Relay) resolveKey(ctx context.Context, keyID string) (*remoteKey, error) {
	if err := checkIRI(keyID); err != nil {
		return nil, fmt.Errorf("relay: keyId: %w", err)
	}
	body, err := r.fetch(ctx, stripFragment(keyID))
	if err != nil {
		return nil, err
	}
	var doc keyDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("relay: key document %s: %w", keyID, err)
	}
	var entry publicKeyEntry
	if doc.PublicKeyPem != "" { // a bare Key document
		entry = publicKeyEntry{ID: doc.ID, Owner: doc.Owner, PublicKeyPem: doc.PublicKeyPem}
	} else {
		for _, k := range doc.keys() {
			if k.ID == keyID {
				entry = k
			}
		}
	}
	if entry.ID != keyID || entry.PublicKeyPem == "" {
		return nil, fmt.Errorf("relay: key document %s does not contain key %s", stripFragment(keyID), keyID)
	}
	if entry.Owner == "" {
		entry.Owner = doc.ID
	}
	if hostOf(entry.Owner) != hostOf(keyID) {
		return nil, fmt.Errorf("relay: key %s claims an owner on another host: %s", keyID, entry.Owner)
	}
	pub, err := ParsePublicKeyPEM(entry.PublicKeyPem)
	if err != nil {
		return nil, fmt.Errorf("relay: key %s: %w", keyID, err)
	}
	owner := doc.actor()
	if doc.ID != stripFragment(keyID) || doc.ID != entry.Owner || owner.Inbox == "" {
		// The key lives apart from its owner, or the document claims to be
		// another URL than the one fetched (an uploaded file claiming to be
		// an actor): fetch the owner, whose document must have the id it
		// was fetched by, and check that it lists this key.
		if owner, err = r.fetchOwner(ctx, entry.Owner, keyID); err != nil {
			return nil, err
		}
	}
	return &remoteKey{ID: keyID, Owner: owner, Key: pub, expires: r.now().Add(r.cfg.KeyCacheTTL)}, nil
}

func (r *Relay) fetchOwner(ctx context.Context, ownerID, keyID string) (*remoteActor, error) {
	body, err := r.fetch(ctx, ownerID)
	if err != nil {
		return nil, err
	}
	var doc keyDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("relay: actor %s: %w", ownerID, err)
	}
	if doc.ID != ownerID {
		return nil, fmt.Errorf("relay: actor document %s has id %q", ownerID, doc.ID)
	}
	for _, k := range doc.keys() {
		if k.ID == keyID {
			return doc.actor(), nil
		}
	}
	return nil, fmt.Errorf("relay: actor %s does not list key %s", ownerID, keyID)
}

// sameOrigin reports whether two URLs share scheme and host.
func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Scheme == ub.Scheme && strings.EqualFold(ua.Host, ub.Host)
}
