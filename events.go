package relay

// The relay's events, for metrics: what happened, with bounded labels.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// Observer receives the relay's events, for metrics (package
// metrics/promrelay turns them into Prometheus families). Set it as
// Config.Events; with a nil Observer the relay reports nothing and pays
// nothing.
//
// The relay calls the methods from many goroutines at once (inbox
// handlers, delivery workers, the dispatcher): they must be safe for
// concurrent use, return quickly and never block, as they run on the
// paths they describe. Every string argument takes its value from a small
// fixed set, listed with each method, or is a software family (see
// Delivered): none names a domain, an actor or an activity, so an Observer
// may use them as metric labels without the label set growing with the
// number of subscribers. New methods may be added to Observer: embed
// NopObserver in an implementation to keep it compiling.
type Observer interface {
	// InboxRequest reports one answered inbox request: outcome is
	// "accepted" (202, the activity was taken), "ignored" (202 without
	// effect: duplicates, unknown types, filtered posts), "refused" (4xx
	// or 503 for a reason the sender caused) or "failed" (503: the relay
	// could not take it, such as a store error); status is the HTTP status.
	InboxRequest(outcome string, status int)
	// SignatureFailure reports an inbox request refused for its signature:
	// reason is "malformed" (missing or unparsable Signature headers, an
	// unsupported keyId), "invalid" (date, digest or covered headers wrong,
	// or the signature does not verify), "key" (the signer's key could not
	// be obtained), "gone" (the key's actor is gone) or "not_bound" (the
	// signer may not speak for the activity's actor).
	SignatureFailure(reason string)
	// KeyFetch reports one fetch of a signer's key: outcome is "ok",
	// "gone" (410), "timeout", "error", "limited" (the host's budget is
	// spent: not fetched) or "busy" (too many fetches in flight: not
	// fetched).
	KeyFetch(outcome string)
	// Relayed reports an activity accepted for relaying and stored, once
	// for each form it goes out in: form is "verbatim" (the original
	// bytes), "announce" (an Announce by the relay) or "none" (no other
	// subscriber gets it), activityType is "Create", "Update", "Delete",
	// "Move" or "Announce", and deliveries is how many deliveries of that
	// form were queued.
	Relayed(activityType, form string, deliveries int)
	// Delivered reports one delivery attempt: outcome is "delivered"
	// (2xx), "refused" (4xx, not retried), "gone" (410: the subscriber is
	// removed), "throttled" (429) or "failed" (network error, timeout,
	// 5xx, 408: retried); software is the receiving server's software
	// family (see SoftwareFamily) or "unknown"; latency is the time from
	// queueing to the answer, set for "delivered" only.
	Delivered(outcome, software string, latency time.Duration)
	// Dropped reports n pieces of work dropped: reason is "filter"
	// (an activity refused by the relay's rules, such as too old or a
	// boost by another relay), "duplicate" (an activity relayed already),
	// "budget" (a delivery that used up Config.MaxAttempts or was refused
	// with a 4xx), "shed" (queued posts dropped for a host over
	// Config.MaxHostBacklog) or "dormant" (deliveries of a subscriber that
	// became dormant).
	Dropped(reason string, n int)
	// StoreOp reports one call to the Store: op is the method name
	// ("Enqueue", "Lease", "Complete", ...) and d how long it took,
	// whatever its result.
	StoreOp(op string, d time.Duration)
}

// NopObserver is an Observer that does nothing. Embed it in an Observer
// that implements only some methods.
type NopObserver struct{}

// InboxRequest does nothing.
func (NopObserver) InboxRequest(string, int) {}

// SignatureFailure does nothing.
func (NopObserver) SignatureFailure(string) {}

// KeyFetch does nothing.
func (NopObserver) KeyFetch(string) {}

// Relayed does nothing.
func (NopObserver) Relayed(string, string, int) {}

// Delivered does nothing.
func (NopObserver) Delivered(string, string, time.Duration) {}

// Dropped does nothing.
func (NopObserver) Dropped(string, int) {}

// StoreOp does nothing.
func (NopObserver) StoreOp(string, time.Duration) {}

// events returns the Observer to report to: Config.Events or, if nil, a
// NopObserver, so that call sites need no nil checks.
func eventsOf(cfg *Config) Observer {
	if cfg.Events == nil {
		return NopObserver{}
	}
	return cfg.Events
}

// inboxOutcome classifies the inbox's answer for Observer.InboxRequest.
func inboxOutcome(err error) (string, int) {
	var ie *inboxError
	var ok accepted
	switch {
	case err == nil:
		return "accepted", http.StatusAccepted
	case errors.As(err, &ok):
		return "ignored", http.StatusAccepted
	case errors.As(err, &ie):
		return "refused", ie.status
	}
	return "failed", http.StatusServiceUnavailable
}

// SoftwareFamily names the server software of a User-Agent header as
// "name/major", such as "mastodon/4", "misskey/2025" or "gotosocial/0",
// "name" alone when no version can be read, or "other" for software it does
// not know. The names it knows are mastodon, misskey, pleroma, akkoma,
// gotosocial, friendica, sharkey, firefish, iceshrimp, hubzilla, lemmy,
// pixelfed, peertube, mitra, snac, hollo, fedify and fedirelay; major
// versions over 4 digits are dropped. Its result takes few values, so it is
// fit for a metric label.
func SoftwareFamily(userAgent string) string {
	ua := strings.ToLower(userAgent)
	for _, name := range knownSoftware {
		i := strings.Index(ua, name)
		if i < 0 {
			continue
		}
		rest := ua[i+len(name):]
		// "Mastodon/4.5.0", "Pleroma 2.9.1", "gotosocial/0.22.0": the
		// version follows the name; GoToSocial names itself twice.
		if j := strings.LastIndex(ua, name+"/"); j > i {
			rest = ua[j+len(name):]
		}
		if m := majorVersion.FindStringSubmatch(rest); m != nil {
			return name + "/" + m[1]
		}
		return name
	}
	return "other"
}

// knownSoftware lists the names SoftwareFamily recognises, the more
// specific first (forks name their parent in their User-Agent).
var knownSoftware = []string{
	"akkoma", "sharkey", "firefish", "iceshrimp", "fedirelay", "fedify", "hollo",
	"mastodon", "misskey", "pleroma", "gotosocial", "friendica", "hubzilla",
	"lemmy", "pixelfed", "peertube", "mitra", "snac",
}

var majorVersion = regexp.MustCompile(`^[/ ]v?([0-9]{1,4})[.;) ]`)

// softwareBook remembers the software family of each subscribed host, read
// from the User-Agent of its authenticated inbox requests (name and major
// version) or else from the NodeInfo name its subscriber record keeps
// (store.Subscriber.Software), for Observer.Delivered and the status
// pages. It lives in memory, seeded from the store at Start and every
// summaryInterval.
type softwareBook struct {
	mu sync.Mutex
	m  map[string]string
}

// learn records the software of host from a request's User-Agent.
func (b *softwareBook) learn(host, userAgent string) {
	if userAgent == "" {
		return
	}
	f := SoftwareFamily(userAgent)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]string{}
	}
	if b.m[host] != f {
		b.m[host] = f
	}
}

// seed records the software of host from its NodeInfo name (see
// store.Subscriber.Software) unless a User-Agent told it already.
func (b *softwareBook) seed(host, nodeInfoName string) {
	if nodeInfoName == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]string{}
	}
	if _, ok := b.m[host]; !ok {
		b.m[host] = SoftwareFamily(nodeInfoName)
	}
}

// seedAll seeds the book from the subscribers' stored software and drops
// hosts without a subscriber.
func (b *softwareBook) seedAll(subs []store.Subscriber) {
	hosts := make(map[string]bool, len(subs))
	for i := range subs {
		hosts[subs[i].Host] = true
		b.seed(subs[i].Host, subs[i].Software)
	}
	b.keepOnly(hosts)
}

// of returns the software family of host, or "unknown".
func (b *softwareBook) of(host string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.m[host]; ok {
		return f
	}
	return "unknown"
}

// keepOnly drops hosts without a subscriber, so the book stays as large as
// the subscriber list.
func (b *softwareBook) keepOnly(hosts map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for h := range b.m {
		if !hosts[h] {
			delete(b.m, h)
		}
	}
}

// SoftwareOf returns the software family (see SoftwareFamily) of the
// server at host, learnt from the User-Agent of its inbox requests or its
// subscriber's NodeInfo, or "unknown". It is safe for concurrent use.
func (r *Relay) SoftwareOf(host string) string { return r.software.of(host) }

var _ store.Store = observedStore{}

// observedStore reports the duration of every Store call to an Observer.
type observedStore struct {
	store.Store
	ev Observer
}

func (s observedStore) since(op string, start time.Time) { s.ev.StoreOp(op, time.Since(start)) }

func (s observedStore) GetValue(ctx context.Context, key string) ([]byte, error) {
	defer s.since("GetValue", time.Now())
	return s.Store.GetValue(ctx, key)
}

func (s observedStore) PutValue(ctx context.Context, key string, value []byte) error {
	defer s.since("PutValue", time.Now())
	return s.Store.PutValue(ctx, key, value)
}

func (s observedStore) CreateValue(ctx context.Context, key string, value []byte) ([]byte, error) {
	defer s.since("CreateValue", time.Now())
	return s.Store.CreateValue(ctx, key, value)
}

func (s observedStore) GetSubscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	defer s.since("GetSubscriber", time.Now())
	return s.Store.GetSubscriber(ctx, actorID)
}

func (s observedStore) UpdateSubscriber(ctx context.Context, actorID string, fn func(*store.Subscriber, bool) error) (store.Subscriber, error) {
	defer s.since("UpdateSubscriber", time.Now())
	return s.Store.UpdateSubscriber(ctx, actorID, fn)
}

func (s observedStore) ListSubscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	defer s.since("ListSubscribers", time.Now())
	return s.Store.ListSubscribers(ctx, f)
}

func (s observedStore) Enqueue(ctx context.Context, payloads []store.Payload, deliveries []store.Delivery, marks ...store.Mark) error {
	defer s.since("Enqueue", time.Now())
	return s.Store.Enqueue(ctx, payloads, deliveries, marks...)
}

func (s observedStore) Lease(ctx context.Context, req store.LeaseRequest) ([]store.Delivery, error) {
	defer s.since("Lease", time.Now())
	return s.Store.Lease(ctx, req)
}

func (s observedStore) GetPayload(ctx context.Context, id string) ([]byte, error) {
	defer s.since("GetPayload", time.Now())
	return s.Store.GetPayload(ctx, id)
}

func (s observedStore) Complete(ctx context.Context, refs ...store.LeaseRef) error {
	defer s.since("Complete", time.Now())
	return s.Store.Complete(ctx, refs...)
}

func (s observedStore) Retry(ctx context.Context, d store.Delivery) error {
	defer s.since("Retry", time.Now())
	return s.Store.Retry(ctx, d)
}

func (s observedStore) CountDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	defer s.since("CountDeliveries", time.Now())
	return s.Store.CountDeliveries(ctx, f)
}

func (s observedStore) ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error) {
	defer s.since("ShedDeliveries", time.Now())
	return s.Store.ShedDeliveries(ctx, host, keep, types)
}

func (s observedStore) DropDeliveries(ctx context.Context, f store.DeliveryFilter) (int, error) {
	defer s.since("DropDeliveries", time.Now())
	return s.Store.DropDeliveries(ctx, f)
}

// Close closes the underlying store if it can be closed.
func (s observedStore) Close() error {
	if c, ok := s.Store.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}

// keyFetchOutcome names the result of a key fetch for Observer.KeyFetch.
func keyFetchOutcome(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errGone):
		return "gone"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error"
}

func (s observedStore) DeleteValue(ctx context.Context, key string) error {
	defer s.since("DeleteValue", time.Now())
	return s.Store.DeleteValue(ctx, key)
}

func (s observedStore) ListValues(ctx context.Context, prefix string) (map[string][]byte, error) {
	defer s.since("ListValues", time.Now())
	return s.Store.ListValues(ctx, prefix)
}

func (s observedStore) DeleteSubscriber(ctx context.Context, actorID string) error {
	defer s.since("DeleteSubscriber", time.Now())
	return s.Store.DeleteSubscriber(ctx, actorID)
}

func (s observedStore) MarkSeen(ctx context.Context, id string, until time.Time) (bool, error) {
	defer s.since("MarkSeen", time.Now())
	return s.Store.MarkSeen(ctx, id, until)
}

func (s observedStore) ForgetSeen(ctx context.Context, id string) error {
	defer s.since("ForgetSeen", time.Now())
	return s.Store.ForgetSeen(ctx, id)
}
