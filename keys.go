package relay

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fedirelay/relay/httpsig"
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

// document is a fetched ActivityPub document.
type document struct {
	body []byte
	// url is where the document was served from: the URL asked for, or
	// the last hop of the redirects followed.
	url *url.URL
}

// fetch GETs an ActivityPub document with a signed request, following up to
// maxRedirects redirects, and returns at most Config.MaxBodyBytes of body
// with the URL it was finally served from. It does not check what the
// document says: fetchTrusted and fetchByID do. A 410 Gone counts as the
// URL being gone (errGone) only when it comes from the origin of rawURL; a
// redirect to another origin's 410 is a *FetchError.
func (r *Relay) fetch(ctx context.Context, rawURL string) (*document, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	target := rawURL
	for hop := 0; ; hop++ {
		if err := checkIRI(target); err != nil {
			return nil, wrapf(err, "fetching")
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return nil, wrapf(err, "fetching %s", target)
		}
		req.Header.Set("Accept", acceptActivity)
		req.Header.Set("User-Agent", r.cfg.UserAgent)
		if err := r.signer.SignRequest(req, nil, r.now()); err != nil {
			return nil, err
		}
		resp, err := r.transport.RoundTrip(req)
		if err != nil {
			return nil, wrapf(err, "fetching %s", target)
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
		if resp.StatusCode == http.StatusGone && !sameOrigin(rawURL, target) {
			drain(resp)
			return nil, &FetchError{URL: target, Status: resp.StatusCode}
		}
		body, err := r.readDocument(resp, target)
		if err != nil {
			return nil, err
		}
		return &document{body: body, url: req.URL}, nil
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
		return nil, wrapf(err, "fetching %s", target)
	}
	if int64(len(body)) > r.cfg.MaxBodyBytes {
		return nil, fmt.Errorf("relay: fetching %s: document larger than %d bytes", target, r.cfg.MaxBodyBytes)
	}
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return nil, wrapf(err, "fetching %s", target)
	}
	return body, nil
}

// Trust in fetched documents.
//
// A fetched document is trusted to be the document with a given id only
// if it carries that id (read as receivers read it: see fieldsOf) and was
// served from that id's origin, after redirects: an open redirect, or a
// file uploaded to one host, cannot make the relay take a stranger's
// document for an actor or key of another host (the class of Mastodon's
// CVE-2024-23832). Every document the relay fetches (keys and actors; it
// fetches no other objects and no NodeInfo) goes through fetchTrusted or
// fetchByID, and nothing else decides trust.

// fetchTrusted fetches rawURL and returns the document with the id it is
// trusted for: its own id, if it was served from that id's origin;
// otherwise the document is fetched again by its own id (once), and that
// document, which must carry the same id and be served from its origin,
// is returned instead. A document without an id is an error.
func (r *Relay) fetchTrusted(ctx context.Context, rawURL string) (*document, string, error) {
	d, err := r.fetch(ctx, rawURL)
	if err != nil {
		return nil, "", err
	}
	id, err := documentID(d.body)
	if err != nil {
		return nil, "", fmt.Errorf("relay: document at %s: %w", rawURL, err)
	}
	if sameOrigin(id, d.url.String()) {
		return d, id, nil
	}
	if d, err = r.fetchByID(ctx, id); err != nil {
		return nil, "", err
	}
	return d, id, nil
}

// fetchByID fetches the document with the given id and returns it if it is
// trusted for that id: it carries that id and was served from the id's
// origin.
func (r *Relay) fetchByID(ctx context.Context, id string) (*document, error) {
	d, err := r.fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	got, err := documentID(d.body)
	switch {
	case err != nil:
		return nil, fmt.Errorf("relay: document at %s: %w", id, err)
	case got != id:
		return nil, fmt.Errorf("relay: document at %s has id %q", id, got)
	case !sameOrigin(id, d.url.String()):
		return nil, fmt.Errorf("relay: document %s was served from another origin (%s)", id, originOf(d.url.String()))
	}
	return d, nil
}

// documentID returns the id of a fetched document, read as receivers read
// it; the id must be an http(s) URL.
func documentID(body []byte) (string, error) {
	f, err := fieldsOf(body, "id")
	if err != nil {
		return "", err
	}
	var id string
	if err := json.Unmarshal(f["id"], &id); err != nil || id == "" {
		return "", errors.New("no id")
	}
	if err := checkIRI(id); err != nil {
		return "", fmt.Errorf("id: %w", err)
	}
	return id, nil
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

// foreignInbox returns the actor's inbox or shared inbox that is not on
// the actor's origin (scheme and canonical host), or "" if both are (or
// are absent). The relay never sends anything to such an inbox: it would
// let anyone make the relay post to any URL on any host.
func (a *remoteActor) foreignInbox() string {
	for _, in := range []string{a.Inbox, a.SharedInbox} {
		if in != "" && !sameOrigin(in, a.ID) {
			return in
		}
	}
	return ""
}

// ownInbox returns the actor's inbox if it is on the actor's origin, else
// its shared inbox if that is, else "": where a Reject may go.
func (a *remoteActor) ownInbox() string {
	for _, in := range []string{a.Inbox, a.SharedInbox} {
		if in != "" && sameOrigin(in, a.ID) {
			return in
		}
	}
	return ""
}

// remoteKey is a verified binding of a key id to its owner.
type remoteKey struct {
	ID      string
	Owner   *remoteActor
	Key     crypto.PublicKey
	expires time.Time
	host    string // the keyId host
	// refetched is when the last fetch of the key started: its first
	// fetch, or a refetch after its expiry or after a signature did not
	// verify with it (successful or not); guarded by keyCache.mu. A cached
	// key is fetched again after a failed verification, or in the
	// background while used stale, at most once per keyRefetchInterval.
	refetched time.Time
	// verified is set once a signature verified with the key: a key only
	// forged requests named is evicted before it.
	verified atomic.Bool
}

// markVerified records that k verified a signature. The flag only goes
// from false to true; reading first spares the shared cache line a write
// on every request.
func (k *remoteKey) markVerified() {
	if !k.verified.Load() {
		k.verified.Store(true)
	}
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

// parseKeyDocument decodes an actor or key document, reading its members
// as receivers do (see fieldsOf): the document, its publicKey entries and
// its endpoints may not spell a member the relay reads twice or in
// another case.
func parseKeyDocument(body []byte) (*keyDocument, error) {
	f, err := fieldsOf(body, "id", "type", "owner", "publicKeyPem", "publicKey", "inbox", "endpoints")
	if err != nil {
		return nil, err
	}
	if pk := f["publicKey"]; len(pk) > 0 {
		entries := []json.RawMessage{pk}
		if pk[0] == '[' {
			_ = json.Unmarshal(pk, &entries)
		}
		for _, e := range entries {
			if len(e) > 0 && e[0] == '{' {
				if _, err := fieldsOf(e, "id", "owner", "publicKeyPem"); err != nil {
					return nil, fmt.Errorf("publicKey: %w", err)
				}
			}
		}
	}
	if ep := f["endpoints"]; len(ep) > 0 && ep[0] == '{' {
		if _, err := fieldsOf(ep, "sharedInbox"); err != nil {
			return nil, fmt.Errorf("endpoints: %w", err)
		}
	}
	var doc keyDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, err
	}
	return &doc, nil
}

func (d *keyDocument) actor() *remoteActor {
	t, _ := typeOf(d.Type)
	return &remoteActor{ID: d.ID, Type: t, Inbox: d.Inbox, SharedInbox: d.Endpoints.SharedInbox}
}

// keyCache resolves key ids to verified owners, caching them for
// Config.KeyCacheTTL. Concurrent lookups of one key id share one fetch.
//
// Fetches in flight are capped per keyId host (maxHostFetches) and, for
// hosts without an accepted (or dormant) subscriber, all together
// (maxFetches): keyId hosts are chosen by strangers and subdomains are
// free, so hanging key servers can take those shared slots, but not more
// than their hosts' shares, and never a slot of a subscribed host, whose
// fetches do not count against maxFetches.
//
// The cache is bounded: when it grows past sweepAt, expired entries are
// dropped (those of subscribed hosts only once they are too old to be used
// stale), and if more than 90 % of maxKeys remain, keys are evicted down to
// that: keys of hosts without a subscriber first, then keys no signature
// has verified with (named by forged requests only), then those closest to
// expiry.
type keyCache struct {
	r              *Relay
	mu             sync.Mutex
	keys           map[string]*remoteKey
	inflight       map[string]*keyCall
	hostFetches    map[string]int // fetches in flight per keyId host
	sharedFetches  int            // fetches in flight for hosts without a subscriber
	maxKeys        int            // most keys kept
	maxFetches     int            // most fetches in flight for hosts without a subscriber, together
	maxHostFetches int            // most fetches in flight per keyId host
	sweepAt        int            // cache size that triggers the next sweep
}

type keyCall struct {
	done   chan struct{}
	key    *remoteKey
	err    error
	host   string     // the keyId host
	shared bool       // counted in keyCache.sharedFetches (no subscriber on host)
	refund bool       // give the failed-fetch token back if the fetch succeeds
	start  time.Time  // recorded in the new entry as remoteKey.refetched
	old    *remoteKey // the cached entry fetched again, if any
}

// Bounds of the key cache.
const (
	// maxCachedKeys bounds the keys kept in memory.
	maxCachedKeys = 50_000
	// minKeySweep is the smallest cache size at which expired keys are
	// swept; afterwards the next sweep comes when the cache has doubled.
	minKeySweep = 1024
	// maxKeyFetches bounds the key fetches in flight for keyId hosts
	// without an accepted or dormant subscriber, together; beyond it the
	// inbox answers 503 with Retry-After (keyBusyRetryAfter).
	maxKeyFetches = 64
	// maxKeyFetchesPerHost bounds the key fetches in flight for one keyId
	// host, subscribed or not (503 beyond it too).
	maxKeyFetchesPerHost = 8
	// keyRefetchInterval is how often a cached key may be fetched again,
	// counted from its last fetch (the first one included): after a
	// signature did not verify with it (a rotated key), so that forged
	// signatures naming the key cause no more fetches than that, and in the
	// background while an expired key of a subscribed host is used stale.
	keyRefetchInterval = time.Minute
)

func newKeyCache(r *Relay) *keyCache {
	return &keyCache{
		r: r, keys: map[string]*remoteKey{}, inflight: map[string]*keyCall{}, hostFetches: map[string]int{},
		maxKeys: maxCachedKeys, maxFetches: maxKeyFetches, maxHostFetches: maxKeyFetchesPerHost,
		sweepAt: min(minKeySweep, maxCachedKeys),
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
	// errRefetchTooSoon: the key was fetched less than keyRefetchInterval
	// ago.
	errRefetchTooSoon = errors.New("relay: key was fetched less than a minute ago")
	// errKeyFetchesBusy: maxKeyFetchesPerHost fetches are in flight for the
	// keyId host, or maxKeyFetches for hosts without a subscriber.
	errKeyFetchesBusy = errors.New("relay: too many key fetches in flight")
)

// get returns the key for keyID: the cached one if it has not expired and
// is not stale, else a fresh fetch. stale, if not nil, is a key the caller
// could not verify a signature with: if the cache still holds it, the key
// is fetched again (a rotated key), unless it was fetched less than
// keyRefetchInterval ago (errRefetchTooSoon); if the cache already holds
// another one, that one is returned.
//
// An expired key of a host with an accepted (or dormant) subscriber is
// returned as it is, for at most another KeyCacheTTL, while it is fetched
// again in the background (at most once per keyRefetchInterval, and not at
// all while its host's fetches are busy): strangers who keep the key fetch
// slots or budgets busy, or a key server that is failing, do not lock out
// a known sender. A refetch that fails for good (410, 404 and other 4xx
// answers, a document without the key) drops the key.
//
// A fetch of a key that is not cached, or of a cached key of a host
// without a subscriber, takes a token from the keyId host's bucket of all
// fetches (Config.KeyFetchTotalLimit; hosts with a subscriber have their
// own, larger buckets) and one from its bucket of failed fetches
// (Config.KeyFetchLimit), which it gives back if it succeeds. Fetching a
// cached key of a host with a subscriber again takes no token. Callers that
// join a fetch in flight take none. Fetches in flight are capped per host
// and, for hosts without a subscriber, all together (errKeyFetchesBusy).
//
// kh is keyID's host (see keyHost), asked whether it has a subscriber
// only when the cache cannot answer.
func (c *keyCache) get(ctx context.Context, keyID string, stale *remoteKey, kh *keyHost) (*remoteKey, error) {
	host := kh.host
	subscribed, checked := false, false
	for {
		now := c.r.now()
		c.mu.Lock()
		k, cached := c.keys[keyID]
		refresh := cached && stale != nil && k == stale
		if cached && !refresh && now.Before(k.expires) {
			c.mu.Unlock()
			return k, nil
		}
		expired := cached && !refresh
		call, ok := c.inflight[keyID]
		if (!ok || expired) && !checked {
			c.mu.Unlock()
			subscribed, checked = kh.hasSubscriber(ctx), true
			continue
		}
		if expired && subscribed && now.Before(k.expires.Add(c.r.cfg.KeyCacheTTL)) {
			// Stale while revalidate.
			if !ok && now.Sub(k.refetched) >= keyRefetchInterval {
				_, _ = c.start(keyID, host, k, subscribed, now)
			}
			c.mu.Unlock()
			return k, nil
		}
		if !ok {
			if refresh && now.Sub(k.refetched) < keyRefetchInterval {
				c.mu.Unlock()
				return nil, errRefetchTooSoon
			}
			var err error
			if call, err = c.start(keyID, host, k, subscribed, now); err != nil { // k is nil if not cached
				c.mu.Unlock()
				return nil, err
			}
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

// start starts fetching keyID, whose cached entry (if any) is old, if the
// caps on fetches in flight and the host's budgets allow it (see get).
// c.mu must be held.
func (c *keyCache) start(keyID, host string, old *remoteKey, subscribed bool, now time.Time) (*keyCall, error) {
	if c.hostFetches[host] >= c.maxHostFetches || !subscribed && c.sharedFetches >= c.maxFetches {
		c.r.events.KeyFetch("busy")
		return nil, errKeyFetchesBusy
	}
	call := &keyCall{done: make(chan struct{}), host: host, shared: !subscribed, start: now, old: old}
	if old == nil || !subscribed {
		if err := c.r.takeKeyFetchTokens(host, subscribed, now); err != nil {
			c.r.events.KeyFetch("limited")
			return nil, err
		}
		call.refund = c.r.keyLimit != nil
	}
	if old != nil {
		old.refetched = now // a failed refetch counts too
	}
	// keyID is usually a substring of the request's Signature header: a
	// copy keeps the cache from holding every such header alive.
	keyID = strings.Clone(keyID)
	c.inflight[keyID] = call
	c.hostFetches[host]++
	if call.shared {
		c.sharedFetches++
	}
	go c.resolve(keyID, call)
	return call, nil
}

// takeKeyFetchTokens takes a token from host's bucket of all key fetches
// (the larger one of hosts with a subscriber if subscribed) and one from
// its bucket of failed key fetches, or neither.
func (r *Relay) takeKeyFetchTokens(host string, subscribed bool, now time.Time) error {
	if ok, after := r.keyLimit.allow(host, now); !ok {
		return &rateLimitedError{what: "failed key fetches", host: host, after: after}
	}
	all := r.keyAll
	if subscribed {
		all = r.keySub
	}
	if ok, after := all.allow(host, now); !ok {
		r.keyLimit.refund(host, now)
		return &rateLimitedError{what: "key fetches", host: host, after: after}
	}
	return nil
}

// hostHasSubscriber reports whether an accepted (or dormant) subscriber
// lives on host. A store error counts as no.
func (r *Relay) hostHasSubscriber(ctx context.Context, host string) bool {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{Host: host})
	if err != nil {
		return false
	}
	for i := range subs {
		if subs[i].Active() {
			return true
		}
	}
	return false
}

// keyHost is the keyId host of one inbox request, with whether it has an
// accepted (or dormant) subscriber (hostHasSubscriber), asked of the store
// at most once per request and only when needed. It belongs to the
// request's goroutine.
type keyHost struct {
	r          *Relay
	host       string
	subscribed bool
	checked    bool
}

func (r *Relay) keyHostOf(keyID string) *keyHost {
	return &keyHost{r: r, host: hostOf(keyID)}
}

// hasSubscriber reports whether h's host has an accepted (or dormant)
// subscriber, asking the store the first time only.
func (h *keyHost) hasSubscriber(ctx context.Context) bool {
	if !h.checked {
		h.subscribed, h.checked = h.r.hostHasSubscriber(ctx, h.host), true
	}
	return h.subscribed
}

// signatureFailuresSpent reports whether h's host has spent its budget of
// failed signature verifications (Config.SignatureFailureLimit; hosts
// with an accepted or dormant subscriber have their own, larger buckets),
// and if so when it will have a token again. It looks at the store only
// when the host's bucket for hosts without a subscriber is empty.
func (r *Relay) signatureFailuresSpent(ctx context.Context, h *keyHost) (bool, time.Duration) {
	now := r.now()
	if empty, after := r.sigFailS.empty(h.host, now); empty {
		return true, after
	}
	if empty, after := r.sigFail.empty(h.host, now); empty && !h.hasSubscriber(ctx) {
		return true, after
	}
	return false, 0
}

// countSignatureFailure takes a token from h's host's budget of failed
// signature verifications.
func (r *Relay) countSignatureFailure(ctx context.Context, h *keyHost) {
	lim := r.sigFail
	if h.hasSubscriber(ctx) {
		lim = r.sigFailS
	}
	lim.allow(h.host, r.now())
}

// subscribedHosts returns the hosts with an accepted (or dormant)
// subscriber. A store error gives none.
func (r *Relay) subscribedHosts() map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.KeyFetchTimeout)
	defer cancel()
	subs, _ := r.store.ListSubscribers(ctx, store.SubscriberFilter{})
	hosts := make(map[string]bool, len(subs))
	for i := range subs {
		if subs[i].Active() {
			hosts[subs[i].Host] = true
		}
	}
	return hosts
}

// resolve runs one fetch on behalf of every waiter. It is detached from
// the waiters' contexts so that one impatient caller does not fail the
// others; it has its own timeout, Config.KeyFetchTimeout.
func (c *keyCache) resolve(keyID string, call *keyCall) {
	ctx, cancel := context.WithTimeout(context.Background(), c.r.cfg.KeyFetchTimeout)
	defer cancel()
	key, err := c.r.resolveKey(ctx, keyID)
	c.r.events.KeyFetch(keyFetchOutcome(err))
	if err == nil && call.refund {
		c.r.keyLimit.refund(call.host, c.r.now())
	}
	c.mu.Lock()
	cur := c.keys[keyID]
	switch {
	case err == nil:
		key.host = call.host
		key.refetched = call.start
		if cur != nil && cur.verified.Load() {
			key.verified.Store(true)
		}
		c.keys[keyID] = key
	case cur != nil && cur == call.old && !transientFetchError(err):
		// The key is gone or no longer valid: it is not used stale.
		delete(c.keys, keyID)
	}
	sweep := len(c.keys) > c.sweepAt
	delete(c.inflight, keyID)
	if c.hostFetches[call.host]--; c.hostFetches[call.host] <= 0 {
		delete(c.hostFetches, call.host)
	}
	if call.shared {
		c.sharedFetches--
	}
	call.key, call.err = key, err
	c.mu.Unlock()
	// Sweep before the waiters go on, so that what they do next (and a
	// test reading the cache) sees the cache swept.
	if sweep {
		c.sweep(c.r.subscribedHosts(), keyID)
	}
	close(call.done)
}

// transientFetchError reports a fetch failure that may go away by itself:
// a timeout, a network error, 5xx, 408 or 429.
func transientFetchError(err error) bool {
	var fe *FetchError
	var ne net.Error
	switch {
	case errors.As(err, &fe):
		return transientStatus(fe.Status)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne):
		return true
	}
	return false
}

// transientStatus reports whether an HTTP error status may go away on a
// later attempt: 5xx, 408 Request Timeout and 429 Too Many Requests.
func transientStatus(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
}

// sweep drops the expired keys (those of subscribed hosts once they are
// KeyCacheTTL past expiry, too old to be used stale) and, if more than
// 90 % of maxKeys remain, evicts keys down to that: first those of hosts
// without a subscriber, then those no signature verified with, then
// those closest to expiry. The next sweep comes when the cache has doubled
// (at least minKeySweep, at most maxKeys), so the cost of sweeping is
// spread over many fetches. subscribed is the set of subscribed hosts;
// fresh is the key just fetched, which has had no chance to verify a
// signature yet, and counts as verified.
func (c *keyCache) sweep(subscribed map[string]bool, fresh string) {
	now := c.r.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.keys) <= c.sweepAt {
		return // swept meanwhile
	}
	for id, k := range c.keys {
		end := k.expires
		if subscribed[k.host] {
			end = end.Add(c.r.cfg.KeyCacheTTL)
		}
		if !now.Before(end) {
			delete(c.keys, id)
		}
	}
	if keep := c.maxKeys * 9 / 10; len(c.keys) > keep {
		ids := make([]string, 0, len(c.keys))
		for id := range c.keys {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int {
			ka, kb := c.keys[a], c.keys[b]
			if sa, sb := subscribed[ka.host], subscribed[kb.host]; sa != sb {
				return boolCompare(sa, sb)
			}
			if va, vb := a == fresh || ka.verified.Load(), b == fresh || kb.verified.Load(); va != vb {
				return boolCompare(va, vb)
			}
			return ka.expires.Compare(kb.expires)
		})
		for _, id := range ids[:len(ids)-keep] {
			delete(c.keys, id)
		}
	}
	c.sweepAt = min(c.maxKeys, max(minKeySweep, 2*len(c.keys)))
}

// boolCompare orders false before true.
func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// resolveKey fetches keyID and binds it to its owner both ways: the key
// document names the owner, and the owner's actor document lists the key
// (as Mastodon checks). The key's document must be trusted (see
// fetchTrusted) for an id on keyID's origin, and the owner must be on
// keyID's host. That document is taken as the owner's actor document only
// if it is trusted for the URL fetched (keyID without its fragment) and is
// the owner; otherwise the owner is fetched by its id (fetchByID). It
// accepts keys embedded in the actor document (keyId = actor#main-key),
// GoToSocial's key stubs (keyId = actor/main-key, a document whose
// publicKey.id is the keyId) and bare Key documents. The key itself must
// be within httpsig.ParsePublicKeyPEM's bounds (RSA keys of at most
// httpsig.MaxRSABits), checked before the key is cached or used.
func (r *Relay) resolveKey(ctx context.Context, keyID string) (*remoteKey, error) {
	if err := checkIRI(keyID); err != nil {
		return nil, fmt.Errorf("relay: keyId: %w", err)
	}
	d, docID, err := r.fetchTrusted(ctx, stripFragment(keyID))
	if err != nil {
		return nil, err
	}
	if !sameOrigin(docID, keyID) {
		return nil, fmt.Errorf("relay: key document %s is %s, of another origin", stripFragment(keyID), docID)
	}
	doc, err := parseKeyDocument(d.body)
	if err != nil {
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
	if !sameOrigin(entry.Owner, keyID) {
		return nil, fmt.Errorf("relay: key %s claims an owner of another origin: %s", keyID, entry.Owner)
	}
	pub, err := httpsig.ParsePublicKeyPEM(entry.PublicKeyPem) // bounds RSA keys
	if err != nil {
		return nil, fmt.Errorf("relay: key %s: %w", keyID, err)
	}
	owner := doc.actor()
	if docID != stripFragment(keyID) || docID != entry.Owner || owner.Inbox == "" {
		// The key lives apart from its owner, or the document is another
		// one than the URL fetched (an uploaded file claiming to be an
		// actor): fetch the owner, which must be trusted for its id, and
		// check that it lists this key.
		if owner, err = r.fetchOwner(ctx, entry.Owner, keyID); err != nil {
			return nil, err
		}
	}
	return &remoteKey{ID: keyID, Owner: owner, Key: pub, expires: r.now().Add(r.cfg.KeyCacheTTL)}, nil
}

// fetchOwner fetches the actor ownerID (fetchByID) and checks that it
// lists keyID.
func (r *Relay) fetchOwner(ctx context.Context, ownerID, keyID string) (*remoteActor, error) {
	d, err := r.fetchByID(ctx, ownerID)
	if err != nil {
		return nil, err
	}
	doc, err := parseKeyDocument(d.body)
	if err != nil {
		return nil, fmt.Errorf("relay: actor %s: %w", ownerID, err)
	}
	for _, k := range doc.keys() {
		if k.ID == keyID {
			return doc.actor(), nil
		}
	}
	return nil, fmt.Errorf("relay: actor %s does not list key %s", ownerID, keyID)
}

// keyOwnedBy reports whether keyID is a key of actor: the actor with a
// fragment (actor#main-key) or below it (GoToSocial's actor/main-key).
func keyOwnedBy(keyID, actor string) bool {
	k := stripFragment(keyID)
	return actor != "" && (k == actor || strings.HasPrefix(k, actor+"/"))
}
