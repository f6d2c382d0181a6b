package relay

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/fedirelay/relay/store"
	vocab "github.com/go-ap/activitypub"
)

// handleLifecycle processes the signer's own Follow, Undo (of a Follow),
// Accept or Reject (of a follow-back), whether it concerns a topic actor
// (topics.go) or the relay actor. dispatch has checked that the signer is
// the activity's actor.
func (r *Relay) handleLifecycle(ctx context.Context, env *envelope, signer *remoteActor) error {
	switch env.Type {
	case "Follow":
		if topic := r.followedTopic(env); topic != "" {
			return r.handleTopicFollow(ctx, env, signer, topic)
		}
		return r.handleFollow(ctx, env, signer)
	case "Undo":
		if done, err := r.handleTopicUndo(ctx, env); done {
			return err
		}
		return r.handleUndo(ctx, env)
	default: // Accept, Reject
		if done, err := r.handleTopicFollowBackReply(ctx, env); done {
			return err
		}
		return r.handleFollowBackReply(ctx, env)
	}
}

// signerGone answers a request whose signing key is gone (its document
// answers 410, or 404): a Delete by the key's owner is accepted, since
// nothing can verify it and nothing unverifiable is relayed, but the
// sender must not retry forever; if the actor is a subscriber whose actor
// document is gone too, the subscription ends. Anything else is a 401.
func (r *Relay) signerGone(ctx context.Context, m *message) error {
	if m.env.Type == "Delete" && keyOwnedBy(m.keyID, m.env.Actor) {
		r.removeIfGone(ctx, m.env.Actor)
		return accepted("delete from an actor whose key is gone")
	}
	r.log.Debug("relay: inbox: key is gone", "keyId", m.keyID)
	return badSignature("gone", refuse(http.StatusUnauthorized, "cannot get key %s", m.keyID))
}

// handleFollow processes a subscription request. A Follow of as:Public is
// a Mastodon-style subscription, a Follow of the relay actor a LitePub one.
// The subscriber is stored before any reply is queued, so an activity that
// arrives right after the Accept reaches the new subscriber. A repeated
// Follow is idempotent: an accepted subscriber gets its Accept again, and
// a rejected one its Reject (the FollowPolicy is not asked again, so a
// refused server cannot come back by following again).
func (r *Relay) handleFollow(ctx context.Context, env *envelope, signer *remoteActor) error {
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
	if foreign := signer.foreignInbox(); foreign != "" {
		if err := r.rejectForeignInbox(ctx, env, signer, proto); err != nil {
			return err
		}
		return refuse(http.StatusForbidden, "inbox %s is not on the actor's origin", foreign)
	}
	existing, err := r.store.GetSubscriber(ctx, env.Actor)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
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
	// The software is stored with the subscription when the rules looked
	// it up already; else it is looked up after the Follow is answered,
	// so that a slow NodeInfo does not hold the Accept back.
	software, known := "", false
	if decision != DecisionReject && (!found || existing.Software == "") {
		software, known = r.rules.cachedSoftware(env.Actor)
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
		if software != "" && s.Software == "" {
			s.Software = software
		}
		return nil
	})
	if errors.Is(err, errFollowBlocked) {
		return refuse(http.StatusForbidden, "%s is on a blocked domain", hostOf(env.Actor))
	}
	if err != nil {
		return err
	}
	r.schemes.forget(s.ActorID)
	if s.Software == "" && !known && s.State != store.StateRejected {
		r.learnSoftwareSoon(ctx, s.ActorID)
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

// rejectForeignInbox answers the Follow env of an actor whose inbox or
// shared inbox is not on its origin (see remoteActor.foreignInbox): the
// relay sends nothing off the actor's origin, not even a Reject, or it
// would post to any URL anyone names. A Reject goes to the actor's inbox
// (or shared inbox) that is on its origin, if it has one. Nothing is
// stored: a later Follow, with its inboxes fixed, is decided afresh.
func (r *Relay) rejectForeignInbox(ctx context.Context, env *envelope, signer *remoteActor, proto store.Protocol) error {
	own := signer.ownInbox()
	if own == "" {
		return nil
	}
	followed := r.actorID
	if proto == store.ProtocolMastodon {
		followed = PublicCollection
	}
	reply, _, err := r.followReply(vocab.RejectType, env.ID, env.Actor, followed, "its inbox is not on its own server")
	if err != nil {
		return err
	}
	b := newBatch(r)
	b.add(store.Payload{ID: payloadID(reply), Body: reply}, own, "", string(vocab.RejectType))
	return b.enqueue(ctx)
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
func (r *Relay) handleUndo(ctx context.Context, env *envelope) error {
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
func (r *Relay) handleFollowBackReply(ctx context.Context, env *envelope) error {
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

// revive makes a dormant subscriber accepted again (it sent something).
func (r *Relay) revive(ctx context.Context, actorID string) error {
	now := r.now().UTC()
	// The statistics first: a flush that copied the failure run before
	// this must not write it back once the store holds the revive.
	r.queue.stats.revive(actorID)
	_, err := r.store.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		if s.State == store.StateDormant {
			s.State = store.StateAccepted
			s.FailingSince = time.Time{}
			s.UpdatedAt = now
			if now.After(s.RevivedAt) {
				s.RevivedAt = now
			}
		}
		return nil
	})
	if err == nil {
		r.log.Info("relay: dormant subscriber is back", "actor", actorID)
	}
	return err
}

// actorCheckInterval bounds how often a subscriber's actor is fetched to
// learn whether it is gone after its inbox refused a delivery.
const actorCheckInterval = time.Hour

// checkActor fetches the actor of a subscriber whose inbox answered 401,
// 403 or 404 (at most once per actorCheckInterval): a 410 Gone ends the
// subscription.
func (q *deliveryQueue) checkActor(d store.Delivery) {
	now := q.r.now()
	q.mu.Lock()
	last, seen := q.checked[d.Subscriber]
	if seen && now.Sub(last) < actorCheckInterval {
		q.mu.Unlock()
		return
	}
	q.checked[d.Subscriber] = now
	q.mu.Unlock()
	q.r.removeIfGone(q.ctx, d.Subscriber)
}

// removeIfGone fetches the actor of a subscriber and ends the subscription
// if the fetch answers 410 Gone from the actor's origin (see fetch). It
// reports whether it did.
func (r *Relay) removeIfGone(ctx context.Context, actorID string) bool {
	if _, err := r.store.GetSubscriber(ctx, actorID); err != nil {
		return false
	}
	if _, err := r.fetch(ctx, actorID); !errors.Is(err, errGone) {
		return false
	}
	r.subscriberGone(ctx, actorID, "")
	return true
}

// subscriberGone ends a subscription whose inbox or actor answered 410 Gone.
func (r *Relay) subscriberGone(ctx context.Context, actorID, inbox string) {
	s, err := r.store.GetSubscriber(ctx, actorID)
	if err != nil {
		return
	}
	r.log.Info("relay: subscriber gone, removing it", "actor", s.ActorID, "inbox", inbox)
	if err := r.removeSubscriber(ctx, &s, nil); err != nil {
		r.log.Error("relay: removing gone subscriber", "actor", s.ActorID, "err", err)
		return
	}
	r.queue.stats.forget(actorID)
}

// senderAlive records what an activity a subscriber sent tells of it: that
// it signs with RFC 9421 (learnRFC9421), and that its host's dormant
// subscriptions (see Config.DormantAfter) are alive again (revive).
// sender and senders are admitSender's results.
func (r *Relay) senderAlive(ctx context.Context, env *envelope, sender *store.Subscriber, senders []store.Subscriber) error {
	if env.rfc9421 && sender.SignatureScheme == "" {
		r.learnRFC9421(ctx, sender.ActorID)
	}
	for i := range senders {
		if senders[i].State == store.StateDormant {
			if err := r.revive(ctx, senders[i].ActorID); err != nil {
				return err
			}
		}
	}
	return nil
}

// learnRFC9421 records that a subscriber signs with RFC 9421, and so
// accepts it: deliveries to it are signed that way from then on. A scheme
// already set (by the operator or earlier) is kept.
func (r *Relay) learnRFC9421(ctx context.Context, actorID string) {
	_, err := r.store.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		if s.SignatureScheme == "" {
			s.SignatureScheme = store.SignatureRFC9421
		}
		return nil
	})
	r.schemes.forget(actorID)
	if err != nil {
		r.log.Warn("relay: recording a subscriber's signature scheme", "actor", actorID, "err", err)
	}
}

// subscriberWithActor returns the subscription of subs whose actor is
// actorID, whatever its state, or nil.
func subscriberWithActor(subs []store.Subscriber, actorID string) *store.Subscriber {
	for i := range subs {
		if subs[i].ActorID == actorID {
			return &subs[i]
		}
	}
	return nil
}
