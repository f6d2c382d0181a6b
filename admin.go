package relay

// The operator-facing API: subscriptions (list, approve, refuse, update,
// remove), the run-time block list and delivery status.

import (
	"context"
	"errors"
	"fmt"
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
// fn may be called more than once and must not change ActorID.
func (r *Relay) UpdateSubscriber(ctx context.Context, actorID string, fn func(*store.Subscriber) error) (store.Subscriber, error) {
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
// record stays (state rejected, with reason in Note) until Remove. The
// refusal lasts: a new Follow from the actor (or an Undo followed by a
// Follow) is answered with a Reject again, without asking the
// FollowPolicy, until Approve accepts it or Remove deletes the record
// (after which a new Follow is decided afresh).
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
		if reason != "" {
			s.Note = reason
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
	reject, _, err := r.followReply(vocab.RejectType, s.FollowID, s.ActorID, followed)
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
// blocked only ends its subscriptions again.
//
// domain is a host name ("example.com"; a leading "*." or "." and a port
// are ignored) in its ASCII form; an empty or malformed one is an error.
// Changes made through one Relay are serialised; relays sharing a store
// see them within a minute (a started relay reads the list again every
// minute), and two relays changing the list at the same instant may lose
// one of the changes.
func (r *Relay) BlockDomain(ctx context.Context, domain string) error {
	d, err := checkDomain(domain)
	if err != nil {
		return err
	}
	if err := r.changeBlocked(ctx, func(list []string) []string {
		if !slices.Contains(list, d) {
			list = append(list, d)
		}
		return list
	}); err != nil {
		return err
	}
	// The list is installed before subscriptions are looked for, and a
	// Follow being stored checks it again (handleFollow), so no subscription
	// on the domain outlives this call.
	only := newDomainSet([]string{d})
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{})
	if err != nil {
		return err
	}
	for i := range subs {
		s := &subs[i]
		if only.contains(s.Host) || only.blockedURL(s.ActorID) || only.blockedURL(s.Inbox) || only.blockedURL(s.SharedInbox) {
			if err := r.removeSubscriber(ctx, s, nil); err != nil {
				return err
			}
			r.log.Info("subscription ended: domain blocked", "actor", s.ActorID, "domain", d)
		}
	}
	return nil
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
	return r.changeBlocked(ctx, func(list []string) []string {
		return slices.DeleteFunc(list, func(s string) bool { return s == d })
	})
}

// BlockedDomains returns the run-time block list as stored, sorted (not
// Config.BlockedDomains). It is empty, not nil, when nothing is blocked.
func (r *Relay) BlockedDomains(ctx context.Context) ([]string, error) {
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
	st := DeliveryStatus{Backlog: n, InFlight: q.busy}
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
