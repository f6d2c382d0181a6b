package relay

// The operator-facing API: subscriptions (list, approve, refuse, update,
// remove, mode, note), the run-time block list, the allowlist, delivery
// status and the overview. AdminHandler (adminapi.go) serves it as JSON.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	vocab "github.com/go-ap/activitypub"

	"github.com/fedirelay/relay/store"
)

// Subscribers returns the subscriptions that match f (the zero filter
// matches all), ordered by actor id. Their delivery statistics include the
// deliveries not yet written to the store.
func (r *Relay) Subscribers(ctx context.Context, f store.SubscriberFilter) ([]store.Subscriber, error) {
	subs, err := r.store.ListSubscribers(ctx, f)
	for i := range subs {
		subs[i] = r.queue.stats.merge(subs[i])
	}
	return subs, err
}

// Subscriber returns the subscription of an actor, or an error matching
// ErrNotSubscribed. Its delivery statistics include the deliveries not yet
// written to the store.
func (r *Relay) Subscriber(ctx context.Context, actorID string) (store.Subscriber, error) {
	s, err := r.store.GetSubscriber(ctx, actorID)
	if errors.Is(err, store.ErrNotFound) {
		return s, fmt.Errorf("%w: %s", ErrNotSubscribed, actorID)
	}
	if err == nil {
		s = r.queue.stats.merge(s)
	}
	return s, err
}

// UpdateSubscriber changes the details of a subscription (such as Note or
// Inbox) through fn, atomically, and returns the result. It sends nothing:
// change the state with Approve, Refuse or Remove so the subscriber is told.
// fn may be called more than once and must not change ActorID; it should
// be quick and do no I/O (a database store holds a transaction open while
// it runs).
func (r *Relay) UpdateSubscriber(ctx context.Context, actorID string, fn func(*store.Subscriber) error) (store.Subscriber, error) {
	defer r.schemes.forget(actorID)
	return r.store.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber, found bool) error {
		if !found {
			return fmt.Errorf("%w: %s", ErrNotSubscribed, actorID)
		}
		if err := fn(s); err != nil {
			return err
		}
		s.ActorID = actorID
		s.UpdatedAt = r.now().UTC()
		return nil
	})
}

// Approve accepts a pending (or rejected) subscription and sends the
// subscriber an Accept, plus the reciprocal Follow for LitePub. Approving
// an accepted subscriber sends its Accept again.
func (r *Relay) Approve(ctx context.Context, actorID string) error {
	return r.decide(ctx, actorID, store.StateAccepted, "")
}

// Refuse rejects a subscription, pending or accepted: the subscriber gets a
// Reject, nothing more is delivered to it or accepted from it, and the
// record stays (state rejected, with reason in Reason, which the Reject
// carries as its summary; an empty reason keeps the one stored) until
// Remove. The refusal lasts: a new Follow from the actor (or an Undo
// followed by a Follow) is answered with a Reject again, without asking
// the FollowPolicy, until Approve accepts it (clearing Reason) or Remove
// deletes the record (after which a new Follow is decided afresh).
func (r *Relay) Refuse(ctx context.Context, actorID, reason string) error {
	return r.decide(ctx, actorID, store.StateRejected, reason)
}

func (r *Relay) decide(ctx context.Context, actorID string, state store.State, reason string) error {
	cur, err := r.Subscriber(ctx, actorID)
	if err != nil {
		return err
	}
	var followBack []byte
	var followBackID string
	if state == store.StateAccepted && cur.Protocol == store.ProtocolLitePub && cur.FollowBackID == "" {
		if followBack, followBackID, err = r.followBack(actorID); err != nil {
			return err
		}
	}
	s, err := r.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber) error {
		if state == store.StateAccepted && s.State != store.StateAccepted {
			s.FailingSince = time.Time{} // a new start, e.g. for a dormant subscriber
		}
		s.State = state
		if state == store.StateAccepted {
			s.Reason = "" // the refusal, if any, is over
		} else if reason != "" {
			s.Reason = reason
		}
		if followBackID != "" {
			s.FollowBackID, s.FollowBackState = followBackID, store.StatePending
		}
		return nil
	})
	if err != nil {
		return err
	}
	if state == store.StateAccepted {
		r.queue.stats.revive(actorID)
	} else if _, err := r.store.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: actorID}); err != nil {
		return err
	}
	return r.sendDecision(ctx, &s, followBack)
}

// Remove ends a subscription: the subscriber gets a Reject (so its server
// stops showing the relay as active), everything queued for it is dropped
// and the record is deleted. Removing an actor that is not subscribed
// returns an error matching ErrNotSubscribed.
func (r *Relay) Remove(ctx context.Context, actorID string) error {
	s, err := r.Subscriber(ctx, actorID)
	if err != nil {
		return err
	}
	followed := r.actorID
	if s.Protocol == store.ProtocolMastodon {
		followed = PublicCollection
	}
	reject, _, err := r.followReply(vocab.RejectType, s.FollowID, s.ActorID, followed, "")
	if err != nil {
		return err
	}
	return r.removeSubscriber(ctx, &s, reject)
}

// BlockDomain adds domain to the relay's run-time block list, kept in the
// store, and ends every subscription on it or its subdomains (their
// records and queued deliveries are deleted; no Reject is sent to a
// blocked domain). From then on the relay treats the domain as it treats
// Config.BlockedDomains: inbox requests whose keyId, actor or object is on
// it are refused with 403 before anything is fetched, and the relay
// neither fetches from nor delivers to it. Blocking a domain already
// blocked only ends its subscriptions again. It is BlockDomains with one
// DomainBlock of severity suspend and no reason.
//
// domain is a host name ("example.com"; a leading "*." or "." and a port
// are ignored) in its ASCII form; an empty or malformed one is an error.
// Changes made through one Relay are serialised; relays sharing a store
// see them within a minute (a started relay reads the list again every
// minute), and two relays changing the list at the same instant may lose
// one of the changes.
func (r *Relay) BlockDomain(ctx context.Context, domain string) error {
	return r.BlockDomains(ctx, DomainBlock{Domain: domain})
}

// BlockDomains adds blocks to the run-time block list in one store change,
// each replacing the entry of the same domain, then ends the subscriptions
// on the domains they block (severity suspend: see BlockDomain). If any
// entry is invalid (see DomainBlock.Check), nothing changes and the error
// names it. Calling it without blocks changes nothing.
func (r *Relay) BlockDomains(ctx context.Context, blocks ...DomainBlock) error {
	if len(blocks) == 0 {
		return nil
	}
	fresh := make(map[string]DomainBlock, len(blocks))
	for i := range blocks {
		b, err := blocks[i].Check()
		if err != nil {
			return err
		}
		fresh[b.Domain] = b
	}
	if err := r.changeBlocked(ctx, func(list []DomainBlock) []DomainBlock {
		list = slices.DeleteFunc(list, func(e DomainBlock) bool { _, ok := fresh[e.Domain]; return ok })
		for _, b := range fresh {
			list = append(list, b)
		}
		return list
	}); err != nil {
		return err
	}
	var ended []string
	for d, b := range fresh {
		if b.Severity == SeveritySuspend {
			ended = append(ended, d)
		}
	}
	return r.endSubscriptionsOn(ctx, ended)
}

// UnblockDomain removes domain from the run-time block list. Domains in
// Config.BlockedDomains stay blocked. Unblocking a domain that is not on
// the list returns nil. Subscriptions ended by BlockDomain do not come
// back: the servers must follow the relay again.
func (r *Relay) UnblockDomain(ctx context.Context, domain string) error {
	d, err := checkDomain(domain)
	if err != nil {
		return err
	}
	return r.changeBlocked(ctx, func(list []DomainBlock) []DomainBlock {
		return slices.DeleteFunc(list, func(e DomainBlock) bool { return e.Domain == d })
	})
}

// BlockedDomains returns the domains the run-time block list blocks
// (severity suspend), as stored, sorted (not Config.BlockedDomains). It is
// empty, not nil, when nothing is blocked.
func (r *Relay) BlockedDomains(ctx context.Context) ([]string, error) {
	blocks, err := r.reloadBlocked(ctx)
	if err != nil {
		return nil, err
	}
	list := []string{}
	for _, b := range blocks {
		if b.Severity == SeveritySuspend {
			list = append(list, b.Domain)
		}
	}
	return list, nil
}

// DomainBlocks returns every entry of the run-time block list, whatever
// its severity, sorted by domain. It is empty, not nil, when the list is.
func (r *Relay) DomainBlocks(ctx context.Context) ([]DomainBlock, error) {
	return r.reloadBlocked(ctx)
}

// SubscriberStatus is the delivery status of one subscriber: its record
// (state, protocol, inboxes) with delivery statistics that include what the
// relay has not yet written to the store, and its backlog.
type SubscriberStatus struct {
	store.Subscriber
	// Backlog is the number of deliveries queued for the subscriber,
	// including those being attempted.
	Backlog int
}

// Status returns the delivery status of a subscriber: Delivered and Failed
// count the attempts that succeeded and failed, LastSuccess, LastFailure
// and LastError describe the latest ones, FailingSince is when the current
// run of failures began (zero while deliveries succeed), State is
// store.StateDormant once the subscriber failed for Config.DormantAfter,
// and Backlog counts its queued deliveries. It returns an error matching
// ErrNotSubscribed for an actor without a subscription, and store errors
// as they are. Status is safe for concurrent use.
func (r *Relay) Status(ctx context.Context, actorID string) (SubscriberStatus, error) {
	s, err := r.Subscriber(ctx, actorID)
	if err != nil {
		return SubscriberStatus{}, err
	}
	n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{Subscriber: actorID})
	if err != nil {
		return SubscriberStatus{}, err
	}
	return SubscriberStatus{Subscriber: s, Backlog: n}, nil
}

// Statuses returns the delivery status (see Status) of every subscriber
// that matches f, ordered by actor id. It costs one CountDeliveries per
// subscriber.
func (r *Relay) Statuses(ctx context.Context, f store.SubscriberFilter) ([]SubscriberStatus, error) {
	subs, err := r.Subscribers(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]SubscriberStatus, 0, len(subs))
	for _, s := range subs {
		n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{Subscriber: s.ActorID})
		if err != nil {
			return nil, err
		}
		out = append(out, SubscriberStatus{Subscriber: s, Backlog: n})
	}
	return out, nil
}

// HostStatus describes deliveries to one receiving host.
type HostStatus struct {
	// Host is the lower-cased host[:port].
	Host string
	// Circuit is "closed", "open" or "half-open" (see Config.BreakerThreshold).
	Circuit string
	// OpenUntil is when an open circuit lets a probe through.
	OpenUntil time.Time
	// InFlight counts deliveries to the host being attempted or waiting
	// for one of its worker slots in this process.
	InFlight int
	// Slow reports that a request to the host timed out, or waited
	// Config.MinRequestTimeout, since it last answered (see
	// Config.SlowHostWorkers); Timeout is then the shortened request
	// timeout its next delivery gets (zero for hosts that are not slow).
	Slow    bool
	Timeout time.Duration
}

// DeliveryStatus is an overview of the relay's delivery queue.
type DeliveryStatus struct {
	// Backlog is the number of queued deliveries, all hosts together.
	Backlog int
	// InFlight counts the deliveries this process has leased and not
	// finished.
	InFlight int
	// Hosts lists the hosts with deliveries in flight, a circuit that is
	// not closed or that are slow, in no particular order.
	Hosts []HostStatus
	// Lag estimates the age of the oldest due delivery: how long the
	// oldest delivery of the last lease had been due, plus the time since
	// that lease while every worker is busy. Near zero while the relay
	// keeps up.
	Lag time.Duration
}

// DeliveryStatus returns an overview of the delivery queue. It is safe for
// concurrent use and returns store errors as they are.
func (r *Relay) DeliveryStatus(ctx context.Context) (DeliveryStatus, error) {
	n, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{})
	if err != nil {
		return DeliveryStatus{}, err
	}
	q := r.queue
	now := r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	st := DeliveryStatus{Backlog: n, InFlight: q.busy, Lag: q.lagLocked(now)}
	hosts := map[string]*HostStatus{}
	get := func(h string) *HostStatus {
		if hosts[h] == nil {
			hosts[h] = &HostStatus{Host: h, Circuit: breakerClosed.String()}
		}
		return hosts[h]
	}
	for h, k := range q.perHost {
		get(h).InFlight = k
	}
	for h, t := range q.slow {
		hs := get(h)
		hs.Slow, hs.Timeout = true, t
	}
	for h := range q.breakers {
		if b := q.refreshBreakerLocked(h, now); b.state != breakerClosed {
			hs := get(h)
			hs.Circuit = b.state.String()
			if b.state == breakerOpen {
				hs.OpenUntil = b.until
			}
		}
	}
	for _, hs := range hosts {
		st.Hosts = append(st.Hosts, *hs)
	}
	return st, nil
}

// SetMode sets which way activities flow for a subscriber (see
// store.Mode): a receive-only subscriber's activities are answered 202 and
// not relayed; a send-only one is sent nothing from the next fan-out on
// (deliveries already queued for it still go out). It returns an error
// matching ErrNotSubscribed for an unknown actor, and store errors as they
// are. The mode lasts as long as the subscriber's record: a repeated
// Follow keeps it, an Undo or Remove ends it with the record.
func (r *Relay) SetMode(ctx context.Context, actorID string, mode store.Mode) error {
	if _, err := store.ParseMode(string(mode)); err != nil {
		return err
	}
	_, err := r.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber) error {
		s.Mode = mode
		return nil
	})
	return err
}

// SetNote replaces the operator's private note on a subscriber (never
// sent). It returns an error matching ErrNotSubscribed for an unknown
// actor.
func (r *Relay) SetNote(ctx context.Context, actorID, note string) error {
	_, err := r.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber) error {
		s.Note = note
		return nil
	})
	return err
}

// Overview is the state of a relay at a glance, as Relay.Overview returns
// it and the admin API's status serves it.
type Overview struct {
	// Subscribers counts the subscriptions by state (every state is
	// present, zero included).
	Subscribers map[store.State]int `json:"subscribers"`
	// Backlog is the number of queued deliveries, InFlight those this
	// process is attempting.
	Backlog  int `json:"backlog"`
	InFlight int `json:"in_flight"`
	// OpenBreakers lists the hosts whose circuit breaker is open or
	// half-open, sorted by host.
	OpenBreakers []BreakerStatus `json:"open_breakers"`
	// BlockedDomains and AllowedDomains count the entries of the run-time
	// block list and of the allowlist; AllowlistOnly says whether the
	// allowlist is enforced (SubscriptionRules.AllowlistOnly), and
	// ApprovalRequired whether requests wait for the operator.
	BlockedDomains   int  `json:"blocked_domains"`
	AllowedDomains   int  `json:"allowed_domains"`
	AllowlistOnly    bool `json:"allowlist_only"`
	ApprovalRequired bool `json:"approval_required"`
}

// BreakerStatus is one host whose circuit breaker is not closed.
type BreakerStatus struct {
	Host    string `json:"host"`
	Circuit string `json:"circuit"` // "open" or "half-open"
	// OpenUntil is when an open circuit lets a probe through.
	OpenUntil string `json:"open_until,omitempty"`
}

// Overview returns the relay's state at a glance: subscribers by state,
// the delivery backlog, deliveries in flight and open circuit breakers.
// It reads every subscriber record, and returns store errors as they are.
func (r *Relay) Overview(ctx context.Context) (Overview, error) {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{})
	if err != nil {
		return Overview{}, err
	}
	o := Overview{Subscribers: map[store.State]int{
		store.StatePending: 0, store.StateAccepted: 0, store.StateRejected: 0, store.StateDormant: 0,
	}, OpenBreakers: []BreakerStatus{}, AllowlistOnly: r.cfg.Rules.AllowlistOnly, ApprovalRequired: r.approvalRequired()}
	for i := range subs {
		o.Subscribers[subs[i].State]++
	}
	ds, err := r.DeliveryStatus(ctx)
	if err != nil {
		return Overview{}, err
	}
	o.Backlog, o.InFlight = ds.Backlog, ds.InFlight
	for _, h := range ds.Hosts {
		if h.Circuit != breakerClosed.String() {
			b := BreakerStatus{Host: h.Host, Circuit: h.Circuit}
			if !h.OpenUntil.IsZero() {
				b.OpenUntil = h.OpenUntil.UTC().Format("2006-01-02T15:04:05Z")
			}
			o.OpenBreakers = append(o.OpenBreakers, b)
		}
	}
	sortBy(o.OpenBreakers, func(b BreakerStatus) string { return b.Host })
	blocks, err := r.DomainBlocks(ctx)
	if err != nil {
		return Overview{}, err
	}
	allowed, err := r.AllowedDomains(ctx)
	if err != nil {
		return Overview{}, err
	}
	o.BlockedDomains, o.AllowedDomains = len(blocks), len(allowed)
	return o, nil
}

// approvalRequired reports whether subscription requests wait for the
// operator: Config.ApprovalRequired, or the FollowPolicy is ManualApproval.
func (r *Relay) approvalRequired() bool {
	return r.cfg.ApprovalRequired || reflect.ValueOf(r.cfg.FollowPolicy).Pointer() == reflect.ValueOf(ManualApproval).Pointer()
}

// AllowDomain adds domain (a host name, covering its subdomains) to the
// allowlist kept in the store, which SubscriptionRules.AllowlistOnly
// enforces. Relays sharing the store see the change within a minute.
// Allowing a domain already allowed changes nothing.
func (r *Relay) AllowDomain(ctx context.Context, domain string) error {
	b, err := DomainBlock{Domain: domain}.Check()
	if err != nil {
		return err
	}
	return r.changeAllowed(ctx, func(list []string) []string {
		if !slices.Contains(list, b.Domain) {
			list = append(list, b.Domain)
		}
		return list
	})
}

// DisallowDomain removes domain from the allowlist. Subscriptions already
// accepted stay (Remove them to end them). Removing a domain that is not
// on the list returns nil.
func (r *Relay) DisallowDomain(ctx context.Context, domain string) error {
	d, err := checkDomain(domain)
	if err != nil {
		return err
	}
	return r.changeAllowed(ctx, func(list []string) []string {
		return slices.DeleteFunc(list, func(s string) bool { return s == d })
	})
}

// AllowedDomains returns the allowlist, sorted; empty, not nil, when the
// list is.
func (r *Relay) AllowedDomains(ctx context.Context) ([]string, error) {
	return r.reloadAllowed(ctx)
}
