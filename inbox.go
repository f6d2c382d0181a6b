package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/fedirelay/relay/store"
)

// inboxError is an inbox outcome with its HTTP status. Every request the
// inbox refuses gets one, so the sender sees why.
type inboxError struct {
	status int
	msg    string
}

func (e *inboxError) Error() string { return e.msg }

func refuse(status int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasPrefix(msg, "relay: ") {
		msg = "relay: " + msg
	}
	return &inboxError{status: status, msg: msg}
}

// accepted is the outcome of a request that was taken (or deliberately
// ignored); the message is only logged.
type accepted string

func (a accepted) Error() string { return string(a) }

// serveInbox handles POST P/inbox:
//
//	413 body over Config.MaxBodyBytes (refused before reading it whole)
//	401 no, malformed or invalid HTTP signature; signer not bound to the actor
//	400 malformed JSON or an activity without type, actor or id
//	403 sender not subscribed, not public, object from another origin
//	202 accepted, or ignored (unknown types, duplicates, stale Undo)
//	503 relay closing, or the store failed (the sender should retry)
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
	var ie *inboxError
	var ok accepted
	switch {
	case err == nil:
		w.WriteHeader(http.StatusAccepted)
	case errors.As(err, &ok):
		r.log.Debug("relay: inbox: accepted without effect", "reason", string(ok))
		w.WriteHeader(http.StatusAccepted)
	case errors.As(err, &ie):
		r.log.Info("relay: inbox: refused", "status", ie.status, "reason", ie.msg, "remote", req.RemoteAddr)
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
	sig, err := FromRequest(req)
	if err != nil {
		return refuse(http.StatusUnauthorized, "%v", err)
	}
	if err := sig.Check(req, body, r.verifyOptions()); err != nil {
		return refuse(http.StatusUnauthorized, "%v", err)
	}
	env, err := parseEnvelope(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "%v", err)
	}
	key, err := r.authenticate(ctx, req, sig)
	if err != nil {
		if errors.Is(err, errGone) && env.Type == "Delete" {
			// The actor is gone (deleted account): nothing can verify it and
			// nothing unverifiable is amplified, but the sender must not
			// retry forever.
			return accepted("delete from an actor whose key is gone")
		}
		return err
	}
	switch env.Type {
	case "Follow":
		return r.handleFollow(ctx, env, key.Owner)
	case "Undo":
		return r.handleUndo(ctx, env, key.Owner)
	case "Accept", "Reject":
		return r.handleFollowBackReply(ctx, env, key.Owner)
	case "Create", "Update", "Delete", "Move", "Announce":
		return r.relayActivity(ctx, env, body, key.Owner)
	}
	return accepted("activity type " + env.Type + " is not relayed")
}

func (r *Relay) verifyOptions() VerifyOptions {
	return VerifyOptions{Now: r.now(), MaxAge: r.cfg.SignatureMaxAge, MaxFuture: r.cfg.ClockSkew}
}

// authenticate verifies the request's signature with the signer's key,
// fetching it (cached, and fetched again once if verification fails, in
// case the key was rotated).
func (r *Relay) authenticate(ctx context.Context, req *http.Request, sig *SignatureParams) (*remoteKey, error) {
	key, err := r.keys.get(ctx, sig.KeyID, false)
	if err != nil {
		if errors.Is(err, errGone) {
			return nil, err
		}
		return nil, refuse(http.StatusUnauthorized, "cannot get key %s: %v", sig.KeyID, err)
	}
	if err := sig.Verify(req, key.Key); err != nil {
		if key, err = r.keys.get(ctx, sig.KeyID, true); err != nil {
			return nil, refuse(http.StatusUnauthorized, "cannot refresh key %s: %v", sig.KeyID, err)
		}
		if err := sig.Verify(req, key.Key); err != nil {
			return nil, refuse(http.StatusUnauthorized, "%v", err)
		}
	}
	return key, nil
}

// requireSelf checks that the activity's actor signed it: Follow, Undo,
// Accept and Reject concern the actor's own relationships.
func requireSelf(env *envelope, signer *remoteActor) error {
	if signer.ID != env.Actor {
		return refuse(http.StatusUnauthorized, "signed by %s, not by the actor %s", signer.ID, env.Actor)
	}
	return nil
}

// requireBound checks that the signer may speak for the activity's actor:
// the actor itself, or the instance actor of the actor's own server
// (GoToSocial signs its users' pushes with its instance key).
func requireBound(env *envelope, signer *remoteActor) error {
	if signer.ID == env.Actor || (signer.isInstanceActor() && sameOrigin(signer.ID, env.Actor)) {
		return nil
	}
	return refuse(http.StatusUnauthorized, "signed by %s, which may not speak for %s", signer.ID, env.Actor)
}

// relayableObject returns the id of the object an activity is about, after
// checking that an embedded object comes from the actor's origin.
func relayableObject(env *envelope) (string, error) {
	o := env.Object
	if o.Embedded && (env.Type == "Create" || env.Type == "Update") {
		if o.ID != "" && !sameOrigin(o.ID, env.Actor) {
			return "", refuse(http.StatusForbidden, "object %s is not from the actor's origin", o.ID)
		}
		if o.AttributedTo != "" && !sameOrigin(o.AttributedTo, env.Actor) {
			return "", refuse(http.StatusForbidden, "object attributed to %s is not from the actor's origin", o.AttributedTo)
		}
	}
	return o.ID, nil
}

// relayActivity accepts a public activity from a subscriber and queues it
// for every other accepted subscriber before answering.
func (r *Relay) relayActivity(ctx context.Context, env *envelope, body []byte, signer *remoteActor) error {
	if err := requireBound(env, signer); err != nil {
		return err
	}
	senderHost := hostOf(env.Actor)
	senders, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{Host: senderHost})
	if err != nil {
		return err
	}
	var sender *store.Subscriber
	for i := range senders {
		if senders[i].State == store.StateAccepted {
			if sender == nil || senders[i].ActorID == env.Actor {
				sender = &senders[i]
			}
		}
	}
	if sender == nil {
		return refuse(http.StatusForbidden, "%s is not an accepted subscriber of this relay", senderHost)
	}
	// A LitePub relay actor announces public posts to its followers only.
	litePubAnnounce := env.Type == "Announce" && sender.Protocol == store.ProtocolLitePub && sender.ActorID == env.Actor
	if !env.IsPublic() && !litePubAnnounce {
		return refuse(http.StatusForbidden, "activity is not addressed to the public")
	}
	objectID, err := relayableObject(env)
	if err != nil {
		return err
	}

	mark := "activity:" + env.ID
	if env.ID == "" {
		mark = "delete:" + objectID
	}
	d := dedup{r: r}
	if fresh, err := d.mark(ctx, mark); err != nil || !fresh {
		if err != nil {
			return err
		}
		return accepted("duplicate " + mark)
	}
	if err := r.fanOut(ctx, env, body, objectID, senderHost, &d); err != nil {
		d.forget(ctx)
		return err
	}
	return nil
}

// dedup takes deduplication marks for one incoming activity and can
// release them all if the activity could not be queued, so that the
// sender's retry is not mistaken for a duplicate.
type dedup struct {
	r     *Relay
	taken []string
}

func (d *dedup) mark(ctx context.Context, id string) (bool, error) {
	fresh, err := d.r.store.MarkSeen(ctx, id, d.r.now().Add(d.r.cfg.DedupWindow))
	if err == nil && fresh {
		d.taken = append(d.taken, id)
	}
	return fresh, err
}

func (d *dedup) forget(ctx context.Context) {
	for _, id := range d.taken {
		if err := d.r.store.ForgetSeen(context.WithoutCancel(ctx), id); err != nil {
			d.r.log.Error("relay: cannot release dedup mark", "id", id, "err", err)
		}
	}
}

// fanOut queues the activity for every accepted subscriber on another
// host, one delivery per inbox: the original bytes for Mastodon-style
// subscribers when receivers can authenticate them (an LD signature or
// proof; Update, Delete and Move are forwarded as they are), an Announce by
// the relay otherwise. The relay announces a post once: when the same
// object comes again in another Create or Announce (a boost, or the copy
// another relay forwards), only the verbatim deliveries go out.
func (r *Relay) fanOut(ctx context.Context, env *envelope, body []byte, objectID, senderHost string, d *dedup) error {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
	if err != nil {
		return err
	}
	verbatim := store.Payload{ID: payloadID(body), Body: body}
	var announce store.Payload
	isPost := env.Type == "Create" || env.Type == "Announce"
	wrapUnsigned := !env.LDSigned && isPost
	announceOK := objectID != ""
	if announceOK && isPost {
		fresh, err := d.mark(ctx, "announced:"+objectID)
		if err != nil {
			return err
		}
		announceOK = fresh
	}
	b := newBatch(r)
	for i := range subs {
		s := &subs[i]
		if s.Host == senderHost {
			continue
		}
		p := &verbatim
		if s.Protocol == store.ProtocolLitePub || wrapUnsigned {
			if !announceOK {
				continue
			}
			if announce.ID == "" {
				a, _, err := r.relayedAnnounce(objectID)
				if err != nil {
					return err
				}
				announce = store.Payload{ID: payloadID(a), Body: a}
			}
			p = &announce
		}
		b.add(*p, s.DeliveryInbox(), s.ActorID, env.Type)
	}
	return b.enqueue(ctx)
}

// payloadID names a payload by its content.
func payloadID(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}
