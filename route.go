package relay

// Routing: who gets an admitted activity, and in which form (the original
// bytes, or an Announce by the relay).

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/fedirelay/relay/store"
)

// fanOut queues the activity for every accepted subscriber on another
// host, one delivery per inbox: the original bytes for Mastodon-style
// subscribers when receivers can authenticate them (an LD signature or
// proof; Update, Delete and Move are forwarded as they are) and the body is
// at most maxVerbatimBytes, an Announce by the relay otherwise.
//
// Deduplication marks are taken in the same store change that queues the
// deliveries (the last one, for a fan-out stored in chunks: see
// batch.enqueue), so a crash cannot leave a mark without its work: the
// activity's id (a repeated activity is answered 202 and not queued
// again), and, for a post, "announced:" and the object's id: the relay
// announces an object once, and when it comes again in another Create or
// Announce (a boost, or the copy another relay forwards), only the
// verbatim deliveries go out.
func (r *Relay) fanOut(ctx context.Context, env *envelope, body []byte, objectID, senderHost string) error {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
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
	}
	announce := objectID != ""
	for {
		b, err := r.fanOutBatch(env, body, objectID, senderHost, subs, announce)
		if err != nil {
			return err
		}
		err = b.enqueue(ctx, marks...)
		var seen *store.SeenError
		switch {
		case !errors.As(err, &seen):
			return err
		case seen.Has(marks[0].ID):
			return accepted("duplicate " + marks[0].ID)
		case len(marks) == 2 && seen.Has(marks[1].ID):
			// Announced already: queue the verbatim deliveries only.
			announce, marks = false, marks[:1]
		default:
			return err
		}
	}
}

// fanOutBatch builds fanOut's deliveries; announce says whether the relay
// may announce the object (the Announces to LitePub subscribers, and to
// everyone for posts it cannot forward verbatim).
func (r *Relay) fanOutBatch(env *envelope, body []byte, objectID, senderHost string, subs []store.Subscriber, announce bool) (*batch, error) {
	verbatim := store.Payload{ID: payloadID(body), Body: body}
	var announcement store.Payload
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
		if s.Host == senderHost {
			continue
		}
		if s.Protocol == store.ProtocolLitePub || wrapUnsigned {
			if !announce {
				continue
			}
			if announcement.ID == "" {
				a, id, err := r.relayedAnnounce(env, objectID)
				if err != nil {
					return nil, err
				}
				// Named by its id, not its bytes (which hold the time):
				// a retry of the fan-out makes the same deliveries.
				announcement = store.Payload{ID: payloadID([]byte(id)), Body: a}
			}
			b.add(announcement, s.DeliveryInbox(), s.ActorID, env.Type)
			continue
		}
		b.add(verbatim, s.DeliveryInbox(), s.ActorID, env.Type)
	}
	return b, nil
}

// maxVerbatimBytes is the largest post forwarded verbatim: Misskey's inbox
// body limit (64 KiB, protocol reference §5.2 and §8).
const maxVerbatimBytes = 64 << 10

// payloadID names a payload by its content.
func payloadID(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}

// announceID returns the id of the relay's Announce of objectID made for
// the incoming activity env, derived from the object for a post (the relay
// announces an object once), else from env's type and id (the object's,
// for a Delete without an id). So a fan-out repeated after a failure, or
// another post of the same object, sends the same Announce, which
// receivers recognise by its id.
func (r *Relay) announceID(env *envelope, objectID string) string {
	source := env.Type + " " + cmp.Or(env.ID, objectID)
	if env.isPost() {
		source = "post " + objectID
	}
	sum := sha256.Sum256([]byte(source))
	return r.base.String() + "/activities/announce-" + hex.EncodeToString(sum[:16])
}
