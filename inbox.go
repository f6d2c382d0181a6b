package relay

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/fedirelay/relay/store"
)

// serveInbox handles POST P/inbox:
//
//	413 body over Config.MaxBodyBytes (refused before reading it whole)
//	401 no, malformed or invalid HTTP signature (draft-cavage or RFC 9421);
//	    key not found; signer not bound to the actor
//	400 malformed JSON (or nested too deeply), an activity without type,
//	    actor or id; an id, actor, object or keyId over maxIDLength bytes
//	403 keyId, actor or object on a blocked domain (before any fetch; a
//	    Follow signed on a blocked domain also gets a Reject, see
//	    rejectBlockedFollow);
//	    sender not subscribed, not public, object from another origin
//	429 too many key fetches for the keyId host, or too many requests from
//	    the signer's host (with Retry-After)
//	202 accepted, or ignored (unknown types, duplicates, stale Undo, posts
//	    older than Config.MaxActivityAge, the relay's own activities,
//	    Announces of other origins' objects by relays, Deletes by actors
//	    whose key is gone)
//	503 relay closing, key fetch timed out, too many key fetches in flight,
//	    or the store failed (the sender should retry; with Retry-After)
func (r *Relay) serveInbox(w http.ResponseWriter, req *http.Request) {
	r.closeMu.Lock()
	if r.isClosed() {
		r.closeMu.Unlock()
		w.Header().Set("Retry-After", "60")
		http.Error(w, "relay: shutting down", http.StatusServiceUnavailable)
		return
	}
	r.inflight.Add(1)
	r.closeMu.Unlock()
	defer r.inflight.Done()

	err := r.receive(req.Context(), w, req)
	r.observeInbox(err)
	var ie *inboxError
	var ok accepted
	switch {
	case err == nil:
		w.WriteHeader(http.StatusAccepted)
	case errors.As(err, &ok):
		r.log.Debug("relay: inbox: accepted without effect", "reason", string(ok))
		w.WriteHeader(http.StatusAccepted)
	case errors.As(err, &ie):
		r.log.Info("relay: inbox: refused", "status", ie.status, "reason", ie.msg, "remote", r.clientAddr(req))
		if ie.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(ie.retryAfter)))
		}
		http.Error(w, ie.msg, ie.status)
	default:
		r.log.Error("relay: inbox: failed", "err", err)
		w.Header().Set("Retry-After", "30")
		http.Error(w, "relay: temporarily unable to take the activity", http.StatusServiceUnavailable)
	}
}

// receive reads, authenticates and dispatches one inbox request. Cheap
// checks come first: size, signature syntax, digest and date need neither
// JSON parsing nor network.
func (r *Relay) receive(ctx context.Context, w http.ResponseWriter, req *http.Request) error {
	inboxTopic := r.topicOfInboxPath(req.URL.EscapedPath()) // "" at the relay actor's inbox
	limit := r.cfg.MaxBodyBytes
	if req.ContentLength > limit {
		return refuse(http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit", req.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return refuse(http.StatusRequestEntityTooLarge, "body is over the %d-byte limit", limit)
		}
		return refuse(http.StatusBadRequest, "reading body: %v", err)
	}
	sig, err := r.requestSignature(req)
	if err != nil {
		return badSignature("malformed", refuse(http.StatusUnauthorized, "%v", err))
	}
	keyID := sig.keyID()
	if len(keyID) > maxIDLength {
		return refuse(http.StatusBadRequest, "keyId is %d bytes long, over the %d-byte limit for ids", len(keyID), maxIDLength)
	}
	if err := checkIRI(keyID); err != nil {
		return badSignature("malformed", refuse(http.StatusUnauthorized, "unsupported keyId: %v", err))
	}
	if r.guard.blocked.blockedURL(keyID) {
		r.rejectBlockedFollow(ctx, req, sig, body)
		return refuse(http.StatusForbidden, "%s is blocked", hostOf(keyID))
	}
	if err := sig.check(req, body, r.verifyOptions()); err != nil {
		return badSignature("invalid", refuse(http.StatusUnauthorized, "%v", err))
	}
	env, err := parseEnvelope(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "%v", err)
	}
	env.rfc9421 = sig.rfc9421()
	env.inboxTopic = inboxTopic
	if env.Actor == r.actorID || keyID == r.keyID || r.topicOfActor(env.Actor) != "" || r.topicOfActor(stripFragment(keyID)) != "" {
		// An echo of the relay's own activity (a loop through another
		// relay), or a forgery: either way there is nothing to do, and the
		// relay's own key (its topic actors' included) is not fetched.
		return accepted("activity of this relay itself")
	}
	if host := r.blockedHost(env); host != "" {
		return refuse(http.StatusForbidden, "%s is blocked", host)
	}
	key, err := r.authenticate(ctx, req, sig)
	if errors.Is(err, errGone) {
		if env.Type == "Delete" && keyOwnedBy(keyID, env.Actor) {
			// The actor is gone (deleted account): nothing can verify it and
			// nothing unverifiable is amplified, but the sender must not
			// retry forever. If the actor is a subscriber whose actor
			// document is gone too, the subscription ends.
			r.removeIfGone(ctx, env.Actor)
			return accepted("delete from an actor whose key is gone")
		}
		r.log.Debug("relay: inbox: key is gone", "keyId", keyID)
		return badSignature("gone", refuse(http.StatusUnauthorized, "cannot get key %s", keyID))
	}
	if err != nil {
		return badSignature("key", err)
	}
	r.software.learn(hostOf(key.ID), req.UserAgent())
	if ok, after := r.inLimit.allow(hostOf(key.ID), r.now()); !ok {
		return refuseRetry(http.StatusTooManyRequests, after, "too many requests from %s", hostOf(key.ID))
	}
	switch env.Type {
	case "Follow":
		if topic := r.followedTopic(env); topic != "" {
			return r.handleTopicFollow(ctx, env, key.Owner, topic)
		}
		return r.handleFollow(ctx, env, key.Owner)
	case "Undo":
		if env.isUndoAnnounce() {
			return r.relayActivity(ctx, env, body, key.Owner)
		}
		if done, err := r.handleTopicUndo(ctx, env, key.Owner); done {
			return err
		}
		return r.handleUndo(ctx, env, key.Owner)
	case "Accept", "Reject":
		if done, err := r.handleTopicFollowBackReply(ctx, env, key.Owner); done {
			return err
		}
		return r.handleFollowBackReply(ctx, env, key.Owner)
	case "Create", "Update", "Delete", "Move", "Announce":
		return r.relayActivity(ctx, env, body, key.Owner)
	}
	return accepted("activity type " + env.Type + " is not relayed")
}

// relayActivity accepts a public activity from a subscriber and queues it
// for every other accepted subscriber before answering: admitSender (who
// may send), receiveOnly (whether what it sends is relayed at all),
// filterActivity (what may be relayed), then fanOut (selectRecipients: who
// gets it by content, topics and budgets; then in which form, stored
// before the answer).
func (r *Relay) relayActivity(ctx context.Context, env *envelope, body []byte, signer *remoteActor) error {
	sender, senders, err := r.admitSender(ctx, env, signer)
	if err != nil {
		return err
	}
	if env.rfc9421 && sender.SignatureScheme == "" {
		r.learnRFC9421(ctx, sender.ActorID)
	}
	// A dormant subscriber (see Config.DormantAfter) that sends something
	// is alive again.
	for i := range senders {
		if senders[i].State == store.StateDormant {
			if err := r.revive(ctx, senders[i].ActorID); err != nil {
				return err
			}
		}
	}
	if r.receiveOnly(sender) {
		return accepted("the sender is receive-only: what it sends is not relayed")
	}
	rel, err := r.filterActivity(ctx, env, body, signer, sender, senders)
	if err != nil {
		var ok accepted
		if errors.As(err, &ok) {
			r.events.Dropped("filter", 1)
		}
		return err
	}
	return r.fanOut(ctx, env, body, rel, hostOf(env.Actor))
}
