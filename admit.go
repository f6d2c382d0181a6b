package relay

// Admission, the first stage after authentication: who may send what
// (blocked hosts, the signer bound to the actor, subscribers only).

import (
	"context"
	"net/http"

	"github.com/fedirelay/relay/store"
)

// admitUnverified refuses, before any fetch, what no signature could
// admit: a keyId on a blocked domain (403; a Follow signed there gets a
// Reject, see rejectBlockedFollow), the relay's own activities (an echo
// through another relay, or a forgery: accepted without effect, and the
// relay's own keys, its topic actors' included, are never fetched), and an
// actor or object on a blocked domain (403).
func (r *Relay) admitUnverified(ctx context.Context, m *message) error {
	env, keyID := m.env, m.keyID
	if r.guard.blocked.blockedURL(keyID) {
		r.rejectBlockedFollow(ctx, m)
		return refuse(http.StatusForbidden, "%s is blocked", hostOf(keyID))
	}
	if env.Actor == r.actorID || keyID == r.keyID || r.topicOfActor(env.Actor) != "" || r.topicOfActor(stripFragment(keyID)) != "" {
		return accepted("activity of this relay itself")
	}
	if host := r.blockedHost(env); host != "" {
		return refuse(http.StatusForbidden, "%s is blocked", host)
	}
	return nil
}

// blockedHost returns the blocked host among the activity's actor and
// object (id, author, actor of an embedded activity), or "".
func (r *Relay) blockedHost(env *envelope) string {
	for _, u := range []string{env.Actor, env.Object.ID, env.Object.AttributedTo, env.Object.Actor} {
		if r.guard.blocked.blockedURL(u) {
			return hostOf(u)
		}
	}
	return ""
}

// requireSelf checks that the activity's actor signed it: Follow, Undo,
// Accept and Reject concern the actor's own relationships (see dispatch).
func requireSelf(env *envelope, signer *remoteActor) error {
	if signer.ID != env.Actor {
		return badSignature("not_bound", refuse(http.StatusUnauthorized, "signed by %s, not by the actor %s", signer.ID, env.Actor))
	}
	return nil
}

// requireBound checks that the signer may speak for the activity's actor:
// the actor itself, or the actor of a subscription (not a rejected one) on
// the actor's own server, given in subscribers (the subscriptions of the
// actor's host).
// GoToSocial subscribes with its instance actor, which signs its users'
// pushes (protocol reference §5.4). Any other actor of the host may not
// speak for its neighbours: Mastodon and Misskey bot accounts are of type
// Service too, and anyone may run one.
func requireBound(env *envelope, signer *remoteActor, subscribers []store.Subscriber) error {
	if signer.ID == env.Actor {
		return nil
	}
	if s := subscriberWithActor(subscribers, signer.ID); s != nil && s.State != store.StateRejected && sameOrigin(signer.ID, env.Actor) {
		return nil
	}
	return badSignature("not_bound", refuse(http.StatusUnauthorized, "signed by %s, which may not speak for %s", signer.ID, env.Actor))
}

// admitSender returns the subscription that env's actor sends under (the
// actor's own, else an active one of its host) and every subscription of
// the actor's host, after checking that the signer may speak for the actor
// (requireBound). A host without an accepted subscription is refused (403).
func (r *Relay) admitSender(ctx context.Context, env *envelope, signer *remoteActor) (*store.Subscriber, []store.Subscriber, error) {
	senderHost := hostOf(env.Actor)
	senders, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{Host: senderHost})
	if err != nil {
		return nil, nil, err
	}
	// Instances that follow only topic actors publish too.
	senders = append(senders, r.topicSenders(senderHost, senders)...)
	if err := requireBound(env, signer, senders); err != nil {
		return nil, nil, err
	}
	var sender *store.Subscriber
	for i := range senders {
		if senders[i].Active() {
			if sender == nil || senders[i].ActorID == env.Actor {
				sender = &senders[i]
			}
		}
	}
	if sender == nil {
		return nil, nil, refuse(http.StatusForbidden, "%s is not an accepted subscriber of this relay", senderHost)
	}
	return sender, senders, nil
}
