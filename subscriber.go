package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	vocab "github.com/go-ap/activitypub"

	"github.com/fedirelay/relay/store"
)

// handleFollow processes a subscription request. A Follow of as:Public is
// a Mastodon-style subscription, a Follow of the relay actor a LitePub one.
// The subscriber is stored before any reply is queued, so an activity that
// arrives right after the Accept reaches the new subscriber. A repeated
// Follow is idempotent: an accepted subscriber gets its Accept again, and
// a rejected one its Reject (the FollowPolicy is not asked again, so a
// refused server cannot come back by following again).
func (r *Relay) handleFollow(ctx context.Context, env *envelope, signer *remoteActor) error {
	if err := requireSelf(env, signer); err != nil {
		return err
	}
	var proto store.Protocol
	switch {
	case isPublic(env.Object.ID):
		proto = store.ProtocolMastodon
	case env.Object.ID == r.actorID:
		proto = store.ProtocolLitePub
	default:
		return refuse(http.StatusBadRequest, "only %s or %s can be followed, not %q", PublicCollection, r.actorID, env.Object.ID)
	}
	if signer.Inbox == "" {
		return refuse(http.StatusBadRequest, "actor %s has no inbox", env.Actor)
	}
	existing, err := r.store.GetSubscriber(ctx, env.Actor)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	software := r.rules.softwareOf(ctx, env.Actor)
	decision, reason := DecisionAccept, ""
	switch {
	case found && existing.State == store.StateRejected:
		// A refusal lasts: only Approve, or Remove and a new Follow, undo it.
		decision = DecisionReject
	case !found || existing.State != store.StateAccepted:
		decision, reason = r.policy(ctx, FollowRequest{
			Actor: env.Actor, ActorType: signer.Type, Host: hostOf(env.Actor), Protocol: proto, FollowID: env.ID,
		})
	}
	var followBack []byte
	var followBackID string
	if proto == store.ProtocolLitePub && decision == DecisionAccept && (!found || existing.FollowBackID == "") {
		if followBack, followBackID, err = r.followBack(env.Actor); err != nil {
			return err
		}
	}
	now := r.now().UTC()
	s, err := r.store.UpdateSubscriber(ctx, env.Actor, func(s *store.Subscriber, found bool) error {
		// Checked again here, atomically with the write: BlockDomain may
		// have run since the inbox checked (it installs the list before it
		// looks for subscriptions to end).
		if r.guard.blocked.blockedURL(env.Actor) {
			return errFollowBlocked
		}
		decision, reason, followBackID := decision, reason, followBackID
		if found && s.State == store.StateRejected {
			// Refused meanwhile (Refuse, or another Follow): the refusal
			// lasts, whatever was decided from the earlier read.
			decision, reason, followBackID = DecisionReject, "", ""
		}
		if !found {
			s.CreatedAt = now
		}
		s.Host = hostOf(env.Actor)
		s.Protocol = proto
		s.FollowID = env.ID
		s.Inbox, s.SharedInbox = signer.Inbox, signer.SharedInbox
		if software != "" {
			s.Software = software
		}
		s.UpdatedAt = now
		switch decision {
		case DecisionAccept:
			if s.State != store.StateAccepted {
				s.FailingSince = time.Time{} // a new start, e.g. for a dormant subscriber
			}
			s.State = store.StateAccepted
		case DecisionReject:
			s.State = store.StateRejected
			if reason != "" {
				s.Reason = reason
			}
		default:
			s.State = store.StatePending
		}
		if followBackID != "" {
			s.FollowBackID, s.FollowBackState = followBackID, store.StatePending
		}
		if env.rfc9421 && s.SignatureScheme == "" {
			s.SignatureScheme = store.SignatureRFC9421 // it signs so, it accepts so
		}
		return nil
	})
	if errors.Is(err, errFollowBlocked) {
		return refuse(http.StatusForbidden, "%s is on a blocked domain", hostOf(env.Actor))
	}
	if err != nil {
		return err
	}
	if s.FollowBackID != followBackID {
		followBack = nil // not accepted after all: no follow-back was stored
	}
	if s.State == store.StateAccepted && (!found || existing.State != store.StateAccepted) {
		r.queue.stats.revive(s.ActorID)
	}
	r.log.Info("relay: subscription request", "actor", s.ActorID, "protocol", s.Protocol, "state", s.State, "reason", s.Reason)
	if s.State == store.StatePending {
		r.log.Info("relay: subscription request awaits approval", "actor", s.ActorID, "software", s.Software, "host", s.Host)
	}
	return r.sendDecision(ctx, &s, followBack)
}

// errFollowBlocked aborts storing a Follow from a domain blocked meanwhile.
var errFollowBlocked = errors.New("relay: follow from a blocked domain")

// sendDecision queues the reply matching the subscriber's state: an Accept
// (followed, for a new LitePub subscriber, by the relay's reciprocal
// Follow), a Reject, or nothing while the request is pending.
func (r *Relay) sendDecision(ctx context.Context, s *store.Subscriber, followBack []byte) error {
	followed := r.actorID
	if s.Protocol == store.ProtocolMastodon {
		followed = PublicCollection
	}
	typ, reason := vocab.AcceptType, ""
	switch s.State {
	case store.StateAccepted:
	case store.StateRejected:
		typ, reason = vocab.RejectType, s.Reason
	default:
		return nil
	}
	reply, _, err := r.followReply(typ, s.FollowID, s.ActorID, followed, reason)
	if err != nil {
		return err
	}
	b := newBatch(r)
	b.add(store.Payload{ID: payloadID(reply), Body: reply}, s.DeliveryInbox(), s.ActorID, string(typ))
	if followBack != nil {
		b.add(store.Payload{ID: payloadID(followBack), Body: followBack}, s.DeliveryInbox(), s.ActorID, "Follow")
	}
	return b.enqueue(ctx)
}

// handleUndo ends a subscription when the actor undoes its own Follow,
// embedded or by id. An Undo naming another Follow than the stored one is a
// stale retry and changes nothing.
func (r *Relay) handleUndo(ctx context.Context, env *envelope, signer *remoteActor) error {
	if err := requireSelf(env, signer); err != nil {
		return err
	}
	o := env.Object
	if o.Embedded && o.Type != "Follow" {
		return accepted("undo of a " + o.Type + " is not relayed")
	}
	s, err := r.store.GetSubscriber(ctx, env.Actor)
	if errors.Is(err, store.ErrNotFound) {
		return accepted("undo from an actor that is not subscribed")
	} else if err != nil {
		return err
	}
	if o.ID != s.FollowID && (o.ID != "" || !o.Embedded || o.Actor != env.Actor) {
		return accepted("undo of follow " + o.ID + ", which is not the current subscription")
	}
	if s.State == store.StateRejected {
		// The record of a refusal stays until the operator removes it:
		// otherwise Undo and a new Follow would start afresh.
		return accepted("undo from a rejected subscriber")
	}
	r.log.Info("relay: unsubscribed", "actor", s.ActorID)
	return r.removeSubscriber(ctx, &s, nil)
}

// handleFollowBackReply records a LitePub subscriber's answer to the
// relay's reciprocal Follow. Delivery never waits for it: GoToSocial, for
// one, never answers.
func (r *Relay) handleFollowBackReply(ctx context.Context, env *envelope, signer *remoteActor) error {
	if err := requireSelf(env, signer); err != nil {
		return err
	}
	state := store.StateAccepted
	if env.Type == "Reject" {
		state = store.StateRejected
	}
	_, err := r.store.UpdateSubscriber(ctx, env.Actor, func(s *store.Subscriber, found bool) error {
		if !found || s.FollowBackID == "" || env.Object.ID != s.FollowBackID {
			return accepted(env.Type + " of an unknown follow")
		}
		s.FollowBackState = state
		s.UpdatedAt = r.now().UTC()
		return nil
	})
	return err
}

// removeSubscriber deletes a subscription with everything queued for it.
// For a LitePub subscriber the relay's reciprocal Follow is undone; reply,
// if not nil, is queued too (a Reject when the operator removes it).
func (r *Relay) removeSubscriber(ctx context.Context, s *store.Subscriber, reply []byte) error {
	if err := r.store.DeleteSubscriber(ctx, s.ActorID); err != nil {
		return err
	}
	if _, err := r.store.DropDeliveries(ctx, store.DeliveryFilter{Subscriber: s.ActorID}); err != nil {
		return err
	}
	b := newBatch(r)
	if reply != nil {
		b.add(store.Payload{ID: payloadID(reply), Body: reply}, s.DeliveryInbox(), "", "Reject")
	}
	if s.FollowBackID != "" && s.FollowBackState != store.StateRejected {
		undo, _, err := r.undoFollowBack(s.FollowBackID, s.ActorID)
		if err != nil {
			return err
		}
		b.add(store.Payload{ID: payloadID(undo), Body: undo}, s.DeliveryInbox(), "", "Undo")
	}
	return b.enqueue(ctx)
}

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
