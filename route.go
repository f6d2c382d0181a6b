package relay

// Routing: who gets an admitted activity, and in which form (the original
// bytes, or an Announce by the relay or by a topic actor).

import (
	"context"
	"errors"

	"github.com/fedirelay/relay/store"
)

// fanOut queues the activity for every accepted subscriber on another
// host that selectRecipients chose, and for the topic followers it chose
// (addTopicDeliveries), one delivery per inbox, in the form each
// subscriber's software applies (formFor): the original bytes, the relay's
// Announce of the object, the relay's Undo of that Announce, or nothing.
//
// Deduplication marks are taken in the same store change that queues the
// deliveries (the last one, for a fan-out stored in chunks: see
// batch.enqueue), so a crash cannot leave a mark without its work: the
// activity's id (a repeated activity is answered 202 and not queued
// again), and, for a post, "announced:" and the object's id: the relay
// announces an object once, and when it comes again in another Create or
// Announce (a boost, or the copy another relay forwards), only the
// verbatim deliveries go out. A boost that makes the relay announce also
// takes boostedMark, so that its un-boost undoes the relay's Announce.
func (r *Relay) fanOut(ctx context.Context, env *envelope, body []byte, rel relayable, senderHost string) error {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
	if err != nil {
		return err
	}
	objectID := rel.objectID
	sel, err := r.selectRecipients(ctx, env, body, objectID, subs)
	if err != nil {
		return err
	}
	until := r.now().Add(r.cfg.DedupWindow)
	marks := []store.Mark{{ID: "activity:" + env.ID, Until: until}}
	if env.ID == "" {
		marks[0].ID = "delete:" + objectID
	}
	if objectID != "" && env.isPost() {
		marks = append(marks, store.Mark{ID: "announced:" + objectID, Until: until})
		if env.Type == "Announce" {
			marks = append(marks, store.Mark{ID: boostedMark(env.ID), Until: until})
		}
	}
	announce := objectID != ""
	if env.isUndoAnnounce() {
		// The relay's Announce is undone only where this boost made it.
		announce = false
		if env.Object.Object != "" {
			if announce, err = r.announcedForBoost(ctx, env.Object.ID); err != nil {
				return err
			}
		}
	}
	for {
		b, err := r.fanOutBatch(env, body, rel, senderHost, subs, announce, sel)
		if err != nil {
			return err
		}
		err = b.enqueue(ctx, marks...)
		var seen *store.SeenError
		switch {
		case !errors.As(err, &seen):
			if err == nil {
				r.budgets.spend(sel.charge, r.now())
				r.relayed(env, b, body)
			}
			return err
		case seen.Has(marks[0].ID):
			r.events.Dropped("duplicate", 1)
			return accepted("duplicate " + marks[0].ID)
		case len(marks) > 1 && seen.Has(marks[1].ID):
			// Announced already: queue the verbatim deliveries only.
			announce, marks = false, marks[:1]
		default:
			return err
		}
	}
}

// fanOutBatch builds fanOut's deliveries to the subscribers and topic
// followers sel chose; announce says whether the relay may announce the
// object (the Announces to LitePub subscribers, and to everyone for posts
// it cannot forward verbatim), or, for an un-boost, undo its Announce.
func (r *Relay) fanOutBatch(env *envelope, body []byte, rel relayable, senderHost string, subs []store.Subscriber, announce bool, sel *selection) (*batch, error) {
	objectID := rel.objectID
	verbatim := store.Payload{ID: payloadID(body), Body: body}
	var own store.Payload // the relay's Announce, or its Undo, built once
	isPost := env.isPost()
	// An Announce that embeds an object of another origin is never
	// forwarded as it is: only the object's IRI is relayed, so receivers
	// fetch it from its origin.
	foreignEmbed := env.Type == "Announce" && env.Object.Embedded && !sameOrigin(objectID, env.Actor)
	// A post too large for Misskey's inbox (413 above 64 KiB, and 4xx is
	// not retried) goes to every Mastodon-style subscriber as an Announce,
	// as unsigned posts do: the relay cannot tell Misskey from Mastodon.
	// Update, Delete and Move stay verbatim (an Announce of a deleted or
	// edited object would be wrong), so Misskey misses the large ones.
	tooLarge := isPost && len(body) > maxVerbatimBytes
	wrapUnsigned := (!env.LDSigned && isPost) || foreignEmbed || tooLarge
	b := newBatch(r)
	for i := range subs {
		s := &subs[i]
		if s.Host == senderHost || sel.skips(i) || !sameOrigin(s.DeliveryInbox(), s.ActorID) || !s.Receives() {
			// Nothing goes back to the sender's host, nor to subscribers the
			// content stage left out, nor to an inbox off
			// the subscriber's origin (a subscription stored before
			// handleFollow refused those), nor to a send-only subscriber.
			continue
		}
		switch formFor(s, env, wrapUnsigned) {
		case formVerbatim:
			b.add(verbatim, s.DeliveryInbox(), s.ActorID, env.Type)
		case formAnnounce, formUndoAnnounce:
			if !announce {
				continue
			}
			if own.ID == "" {
				var doc []byte
				var id string
				var err error
				if isPost {
					doc, id, err = r.relayedAnnounce(env, rel)
				} else {
					doc, id, err = r.undoRelayedAnnounce(env, env.Object.Object)
				}
				if err != nil {
					return nil, err
				}
				// Named by its id, not its bytes (which hold the time):
				// a retry of the fan-out makes the same deliveries.
				own = store.Payload{ID: payloadID([]byte(id)), Body: doc}
			}
			b.add(own, s.DeliveryInbox(), s.ActorID, env.Type)
		}
	}
	if err := r.addTopicDeliveries(b, env, rel, senderHost, sel, announce, wrapUnsigned, verbatim); err != nil {
		return nil, err
	}
	return b, nil
}

// addTopicDeliveries queues an activity for the topic followers selection
// chose: one delivery per inbox, none to an inbox the relay actor's
// fan-out serves, on the sender's host, on a blocked domain or off the
// follower's origin. Instances
// get the form formFor gives a subscriber of their protocol (the topic
// actor's Announce instead of the relay's); persons get posts as the topic
// actor's Announce, and Updates, Deletes and Moves as they are (their
// servers apply them by LD signature).
func (r *Relay) addTopicDeliveries(b *batch, env *envelope, rel relayable, senderHost string, sel *selection, announce, wrapUnsigned bool, verbatim store.Payload) error {
	if sel == nil || len(sel.topics) == 0 {
		return nil
	}
	announcements, undos := map[string]store.Payload{}, map[string]store.Payload{}
	for _, t := range sel.topics {
		f := t.f
		inbox := f.deliveryInbox()
		if f.Host == senderHost || b.servesInbox(inbox) || r.guard.blocked.blockedURL(inbox) || !sameOrigin(inbox, f.Actor) {
			continue
		}
		var form deliveryForm
		switch f.Kind {
		case followerMastodon:
			form = formFor(&store.Subscriber{Protocol: store.ProtocolMastodon}, env, wrapUnsigned)
		case followerLitePub:
			form = formFor(&store.Subscriber{Protocol: store.ProtocolLitePub}, env, wrapUnsigned)
		case followerPerson:
			switch {
			case env.isPost():
				form = formAnnounce
			case env.isUndoAnnounce():
				form = formUndoAnnounce // they got the topic actor's Announce
			default:
				form = formVerbatim
			}
		}
		switch form {
		case formVerbatim:
			b.addAs(verbatim, inbox, t.actor, env.Type)
		case formAnnounce:
			if !announce || rel.objectID == "" {
				continue
			}
			p, ok := announcements[t.actor]
			if !ok {
				var err error
				if p, err = r.topicAnnounce(t.actor, env, rel); err != nil {
					return err
				}
				announcements[t.actor] = p
			}
			b.addAs(p, inbox, t.actor, env.Type)
		case formUndoAnnounce:
			if !announce || env.Object.Object == "" {
				continue
			}
			p, ok := undos[t.actor]
			if !ok {
				var err error
				if p, err = r.undoTopicAnnounce(t.actor, env, env.Object.Object); err != nil {
					return err
				}
				undos[t.actor] = p
			}
			b.addAs(p, inbox, t.actor, env.Type)
		}
	}
	return nil
}

// maxVerbatimBytes is the largest post forwarded verbatim: Misskey's inbox
// body limit (64 KiB, protocol reference §5.2 and §8).
const maxVerbatimBytes = 64 << 10

// topicAnnounce builds the Announce of a post by a topic actor for the
// incoming activity env, as relayedAnnounce builds the relay actor's (the
// post's visibility kept, dated no earlier than the post), its id derived
// from the topic actor and the relay's own Announce id, so a retried
// fan-out sends the same Announce.
func (r *Relay) topicAnnounce(actor string, env *envelope, rel relayable) (store.Payload, error) {
	id := r.topicAnnounceID(actor, r.announceID(env, rel.objectID))
	b, err := r.announceBy(actor, id, env, rel)
	if err != nil {
		return store.Payload{}, err
	}
	return store.Payload{ID: payloadID([]byte(id)), Body: b}, nil
}

// topicAnnounceID is the id of the topic actor actor's Announce for the
// relay's Announce relayAnnounceID.
func (r *Relay) topicAnnounceID(actor, relayAnnounceID string) string {
	return r.derivedID("announce", actor+" "+relayAnnounceID)
}

// deliveryForm is the form in which a subscriber gets a relayed activity.
type deliveryForm int

const (
	// formNone: nothing, as no form would be applied (or it would be
	// refused, which counts against the subscriber).
	formNone deliveryForm = iota
	// formVerbatim: the original bytes, signed by the relay.
	formVerbatim
	// formAnnounce: the relay's Announce of the object (relayedAnnounce).
	formAnnounce
	// formUndoAnnounce: the relay's Undo of its own Announce of the object
	// of an un-boost (undoRelayedAnnounce).
	formUndoAnnounce
)

// formFor returns the form in which s gets env: the form its software
// applies (docs/protocol.md, "Which form each server applies"). wrap says
// that a post cannot go verbatim to anyone (no LD signature, an embedded
// object of another origin, or too large for Misskey).
//
//   - Posts (Create, Announce): the relay's Announce to LitePub
//     subscribers and when wrap, verbatim otherwise.
//   - Un-boosts (Undo of an Announce): verbatim to Mastodon-style
//     subscribers when LD-signed (Mastodon and Misskey remove the boost),
//     else the relay's Undo of its own Announce.
//   - Update, Delete, Move: verbatim to Mastodon-style subscribers. Of the
//     LitePub ones, GoToSocial gets Updates verbatim (it refetches a
//     forwarded status from its origin) and Friendica Deletes (it applies
//     them, LD-signed or once the object answers 410); Pleroma and Akkoma
//     refuse every relayed activity but Create and ignore a second Announce
//     of an object, GoToSocial ignores relayed Deletes, Friendica skips
//     posts it has: they get nothing.
func formFor(s *store.Subscriber, env *envelope, wrap bool) deliveryForm {
	litePub := s.Protocol == store.ProtocolLitePub
	software := softwareKind(s.Software)
	switch {
	case env.isPost():
		if litePub || wrap {
			return formAnnounce
		}
		return formVerbatim
	case env.isUndoAnnounce():
		if !litePub && env.LDSigned {
			return formVerbatim
		}
		return formUndoAnnounce
	case !litePub:
		return formVerbatim
	case env.Type == "Update" && software == softwareGoToSocial:
		return formVerbatim
	case env.Type == "Delete" && software == softwareFriendica:
		return formVerbatim
	}
	return formNone
}

// boostedMark is the mark a boost takes when it makes the relay announce
// its object (the relay had not announced it): its un-boost then undoes
// the relay's Announce. It lives as long as the deduplication marks.
func boostedMark(boostID string) string { return "boosted:" + boostID }

// announcedForBoost reports whether the boost boostID made the relay
// announce its object, with a check-only mark (Store.Enqueue keeps no mark
// whose Until has passed).
func (r *Relay) announcedForBoost(ctx context.Context, boostID string) (bool, error) {
	if boostID == "" {
		return false, nil
	}
	err := r.store.Enqueue(ctx, nil, nil, store.Mark{ID: boostedMark(boostID)})
	var seen *store.SeenError
	if errors.As(err, &seen) {
		return true, nil
	}
	return false, err
}
