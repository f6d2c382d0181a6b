package relay

// Filtering: what may be relayed (what authors made public, objects from
// the actor's origin, recent posts, no relay loops).

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/fedirelay/relay/store"
)

// relayable is what filterActivity learnt of an activity it lets through.
type relayable struct {
	// objectID is the id of the object the activity is about ("" if none).
	objectID string
	// objectPublished is the publication time of the post, when known: the
	// relay's Announce of it is never dated earlier.
	objectPublished time.Time
	// visibility is the audience of the post (public, or unlisted when the
	// operator opted in): the relay's Announce keeps it.
	visibility visibility
}

// filterActivity returns what env is about if env may be relayed: sent by
// a subscriber whose activities are relayed (receiveOnly), addressed to
// the public (a LitePub relay actor's Announce needs not be),
// its object IRI (and a Move's target) one receivers may fetch
// (guard.checkObjectIRI, else 400), its object from the actor's origin
// unless it is an Announce (relayableObject), a post
// no older than Config.MaxActivityAge, not an Announce relayed by another
// relay (relayedByRelay), and only what its author made public
// (checkAudience, last, as it may fetch). sender and senders are
// admitSender's results. A refusal is an inboxError; an activity ignored
// is accepted.
func (r *Relay) filterActivity(ctx context.Context, env *envelope, body []byte, signer *remoteActor, sender *store.Subscriber, senders []store.Subscriber) (relayable, error) {
	if r.receiveOnly(sender) {
		return relayable{}, accepted("the sender is receive-only: what it sends is not relayed")
	}
	// A LitePub relay actor announces public posts to its followers only.
	litePubAnnounce := env.Type == "Announce" && sender.Protocol == store.ProtocolLitePub && sender.ActorID == env.Actor
	if !env.IsPublic() && !litePubAnnounce {
		return relayable{}, refuse(http.StatusForbidden, "activity is not addressed to the public")
	}
	for _, f := range []struct{ name, iri string }{{"object", env.Object.ID}, {"target", env.Target}} {
		if f.iri == "" {
			continue
		}
		if err := r.guard.checkObjectIRI(f.iri); err != nil {
			return relayable{}, refuse(http.StatusBadRequest, "%s: %v", f.name, err)
		}
	}
	objectID, err := relayableObject(env)
	if err != nil {
		return relayable{}, err
	}
	if env.isPost() && !env.Published.IsZero() &&
		r.now().Sub(env.Published) > r.cfg.MaxActivityAge {
		return relayable{}, accepted("published " + env.Published.String() + ", longer ago than the maximum age")
	}
	if relayedByRelay(env, signer, objectID, senders) {
		return relayable{}, accepted("announce by a relay actor of an object from another origin")
	}
	v, published, err := r.checkAudience(ctx, env, body, litePubAnnounce)
	if err != nil {
		return relayable{}, err
	}
	return relayable{objectID: objectID, objectPublished: published, visibility: v}, nil
}

// relayableObject returns the id of the object an activity is about, after
// checking that the object of a Create, Update or Delete (by IRI or
// embedded, with its attributedTo) comes from the actor's origin (only an
// Announce may be about another origin's object, and a Delete by IRI of
// another host's post would make subscribers act on a post its author never
// deleted), and that the Announce an un-boost undoes is the Undo actor's own.
func relayableObject(env *envelope) (string, error) {
	o := env.Object
	if env.isUndoAnnounce() && o.Actor != env.Actor {
		return "", refuse(http.StatusForbidden, "undo by %s of an Announce by %s", env.Actor, o.Actor)
	}
	if env.Type == "Create" || env.Type == "Update" || env.Type == "Delete" {
		if o.ID != "" && !sameOrigin(o.ID, env.Actor) {
			return "", refuse(http.StatusForbidden, "object %s is not from the actor's origin", o.ID)
		}
		if o.Embedded && o.AttributedTo != "" && !sameOrigin(o.AttributedTo, env.Actor) {
			return "", refuse(http.StatusForbidden, "object attributed to %s is not from the actor's origin", o.AttributedTo)
		}
	}
	return o.ID, nil
}

// relayedByRelay is the loop guard: it reports an Announce, signed by its
// actor, whose actor is the actor of a subscription (subscribers are the
// subscriptions of the actor's host) and whose object comes from another
// origin. A server's subscription actor is its instance or relay actor;
// when it announces other origins' posts it is relaying, and relaying that
// could send posts around a cycle of relays. (An instance actor announcing
// its own server's posts, as Pleroma's relay actor does, is a publisher and
// passes.) The actor's type is not the test: bot accounts are Service
// actors too, and their boosts are relayed like anyone's.
func relayedByRelay(env *envelope, signer *remoteActor, objectID string, subscribers []store.Subscriber) bool {
	return env.Type == "Announce" && signer.ID == env.Actor && subscriberWithActor(subscribers, env.Actor) != nil &&
		objectID != "" && !sameOrigin(objectID, env.Actor)
}

// relayableVisibility reports whether a post of visibility v may be relayed: public
// ones, and unlisted ones when the operator opted in (Config.RelayUnlisted).
func (r *Relay) relayableVisibility(v visibility) bool {
	return v == visibilityPublic || v == visibilityUnlisted && r.cfg.RelayUnlisted
}

// checkAudience decides by its audience whether env (whose bytes are body)
// may be relayed, and returns the audience and the announced object's
// published time when it learnt one (for the relay's Announce). The audience is
// the narrower of the activity's and its embedded object's (a public
// Create around a followers-only note is the note's); a Tombstone or an
// object without addressing leaves the activity's. For a LitePub relay
// actor's Announce (litePubAnnounce), whose addressing says nothing about
// the post, only the object's audience counts: the embedded one, or the
// one fetched from its origin (see fetchedAudience). An activity whose
// audience is too narrow is accepted without effect (the sender did
// nothing wrong, and must not retry); a malformed object is refused (400).
func (r *Relay) checkAudience(ctx context.Context, env *envelope, body []byte, litePubAnnounce bool) (visibility, time.Time, error) {
	obj, err := parseEmbeddedObject(body)
	if err != nil {
		return 0, time.Time{}, refuse(http.StatusBadRequest, "%v", err)
	}
	addressed := obj.Embedded && env.Object.Type != "Tombstone" && len(obj.To)+len(obj.Cc) > 0
	v := visibilityOf(env.To, env.Cc)
	switch {
	case litePubAnnounce && addressed:
		v = obj.visibility()
	case litePubAnnounce:
		if v, obj.Published, err = r.fetchedAudience(ctx, env.Object.ID); err != nil {
			return 0, time.Time{}, err
		}
	case addressed:
		v = min(v, obj.visibility())
	}
	if !r.relayableVisibility(v) {
		return 0, time.Time{}, accepted(fmt.Sprintf("%s %s is %s: not relayed", env.Type, cmp.Or(env.ID, env.Object.ID), v))
	}
	return v, obj.Published, nil
}

// fetchedAudience fetches the object objectID from its origin with the
// relay's signed, guarded fetch (cached and shared with the content
// stage: see fetchDoc, which bounds it by KeyFetchTimeout), and returns
// the visibility and published time its addressing gives. The fetched
// document must have objectID as its id. A failure that may pass is a 503 for the sender to retry; any
// other is an acceptance without effect: the relay never announces what it
// cannot see.
func (r *Relay) fetchedAudience(ctx context.Context, objectID string) (visibility, time.Time, error) {
	body, err := r.fetchDoc(ctx, objectID)
	if err != nil {
		if transientFetchError(err) {
			return 0, time.Time{}, refuseRetry(http.StatusServiceUnavailable, time.Minute, "fetching the announced object: %v", err)
		}
		return 0, time.Time{}, accepted("announced object cannot be fetched: " + err.Error())
	}
	// fetchByID (through fetchDoc) checked the id and the origin it was
	// served from; the addressing is read as receivers read it
	// (case-sensitive, no duplicates).
	f, err := fieldsOf(body, "to", "cc", "published")
	if err != nil {
		return 0, time.Time{}, accepted("announced object " + objectID + " is malformed: " + err.Error())
	}
	to, errTo := idList(f["to"])
	cc, errCc := idList(f["cc"])
	if errTo != nil || errCc != nil {
		return 0, time.Time{}, accepted("announced object " + objectID + " has malformed addressing")
	}
	return visibilityOf(to, cc), parseTime(f["published"]), nil
}

// receiveOnly reports whether what sender sends is not relayed: its mode
// is store.ModeReceiveOnly, or its domain is blocked with severity
// silence. (Its counterpart, a send-only subscriber receiving nothing, is
// store.Subscriber.Receives, checked where the fan-out picks receivers.)
func (r *Relay) receiveOnly(sender *store.Subscriber) bool {
	return !sender.Publishes() || r.guard.blocked.isSilenced(sender.Host)
}
