package relay

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
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

// receive takes one inbox request through its stages: read it (size,
// body, signature syntax, digest and date, activity), admit what can be
// refused before any fetch, authenticate the signer, then dispatch by
// activity type. Cheap checks come first: only authenticate may fetch.
func (r *Relay) receive(ctx context.Context, w http.ResponseWriter, req *http.Request) error {
	m, err := r.readMessage(w, req)
	if err != nil {
		return err
	}
	if err := r.admitUnverified(ctx, m); err != nil {
		return err
	}
	signer, err := r.authenticate(ctx, m)
	if errors.Is(err, errGone) {
		return r.signerGone(ctx, m)
	}
	if err != nil {
		return err
	}
	return r.dispatch(ctx, m, signer)
}

// readMessage reads the request's body (at most Config.MaxBodyBytes), its
// signature and its activity. It needs neither the network nor the store.
func (r *Relay) readMessage(w http.ResponseWriter, req *http.Request) (*message, error) {
	limit := r.cfg.MaxBodyBytes
	if req.ContentLength > limit {
		return nil, refuse(http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit", req.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, refuse(http.StatusRequestEntityTooLarge, "body is over the %d-byte limit", limit)
		}
		return nil, refuse(http.StatusBadRequest, "reading body: %v", err)
	}
	sig, err := r.requestSignature(req)
	if err != nil {
		return nil, badSignature("malformed", refuse(http.StatusUnauthorized, "%v", err))
	}
	keyID := sig.keyID()
	if len(keyID) > maxIDLength {
		return nil, refuse(http.StatusBadRequest, "keyId is %d bytes long, over the %d-byte limit for ids", len(keyID), maxIDLength)
	}
	if err := checkIRI(keyID); err != nil {
		return nil, badSignature("malformed", refuse(http.StatusUnauthorized, "unsupported keyId: %v", err))
	}
	if err := sig.check(req, body, r.verifyOptions()); err != nil {
		return nil, badSignature("invalid", refuse(http.StatusUnauthorized, "%v", err))
	}
	env, err := parseEnvelope(body)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "%v", err)
	}
	env.rfc9421 = sig.rfc9421()
	env.inboxTopic = r.topicOfInboxPath(req.URL.EscapedPath()) // "" at the relay actor's inbox
	return &message{req: req, body: body, sig: sig, keyID: keyID, env: env}, nil
}

// dispatch hands an authenticated activity to its stage: posts, edits,
// deletions, moves, boosts and un-boosts go down the relay path
// (relayActivity); Follow, Undo, Accept and Reject, which concern the
// signer's own relationships, to the subscriber lifecycle (handleLifecycle).
// Other types are accepted without effect.
func (r *Relay) dispatch(ctx context.Context, m *message, signer *remoteActor) error {
	env := m.env
	switch {
	case env.isRelayable():
		return r.relayActivity(ctx, env, m.body, signer)
	case env.Type == "Follow", env.Type == "Undo", env.Type == "Accept", env.Type == "Reject":
		if err := requireSelf(env, signer); err != nil {
			return err
		}
		return r.handleLifecycle(ctx, env, signer)
	}
	return accepted("activity type " + env.Type + " is not relayed")
}

// relayActivity accepts a public activity from a subscriber and queues it
// for every other accepted subscriber before answering: admitSender (who
// may send), senderAlive (what the sending tells of the sender),
// filterActivity (what may be relayed), then fanOut (selectRecipients: who
// gets it by content, topics and budgets; then in which form, stored
// before the answer).
func (r *Relay) relayActivity(ctx context.Context, env *envelope, body []byte, signer *remoteActor) error {
	sender, senders, err := r.admitSender(ctx, env, signer)
	if err != nil {
		return err
	}
	if err := r.senderAlive(ctx, env, sender, senders); err != nil {
		return err
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
