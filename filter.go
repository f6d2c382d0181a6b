package relay

// Filtering: what may be relayed (public activities, objects from the
// actor's origin, recent posts, no relay loops).

import (
	"net/http"

	"github.com/fedirelay/relay/store"
)

// filterActivity returns the id of the object env is about if env may be
// relayed: addressed to the public (a LitePub relay actor's Announce needs
// not be), its embedded object from the actor's origin (relayableObject),
// a post no older than Config.MaxActivityAge, and not an Announce relayed
// by another relay (relayedByRelay). sender and senders are admitSender's
// results. A refusal is an inboxError; an activity ignored is accepted.
func (r *Relay) filterActivity(env *envelope, signer *remoteActor, sender *store.Subscriber, senders []store.Subscriber) (string, error) {
	// A LitePub relay actor announces public posts to its followers only.
	litePubAnnounce := env.Type == "Announce" && sender.Protocol == store.ProtocolLitePub && sender.ActorID == env.Actor
	if !env.IsPublic() && !litePubAnnounce {
		return "", refuse(http.StatusForbidden, "activity is not addressed to the public")
	}
	objectID, err := relayableObject(env)
	if err != nil {
		return "", err
	}
	if env.isPost() && !env.Published.IsZero() &&
		r.now().Sub(env.Published) > r.cfg.MaxActivityAge {
		return "", accepted("published " + env.Published.String() + ", longer ago than the maximum age")
	}
	if relayedByRelay(env, signer, objectID, senders) {
		return "", accepted("announce by a relay actor of an object from another origin")
	}
	return objectID, nil
}

// relayableObject returns the id of the object an activity is about, after
// checking that an embedded object comes from the actor's origin.
func relayableObject(env *envelope) (string, error) {
	o := env.Object
	if o.Embedded && (env.Type == "Create" || env.Type == "Update" || env.Type == "Delete") {
		if o.ID != "" && !sameOrigin(o.ID, env.Actor) {
			return "", refuse(http.StatusForbidden, "object %s is not from the actor's origin", o.ID)
		}
		if o.AttributedTo != "" && !sameOrigin(o.AttributedTo, env.Actor) {
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
