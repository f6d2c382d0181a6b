package relay

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fedirelay/relay/store"
)

// inboxError is an inbox outcome with its HTTP status. Every request the
// inbox refuses gets one, so the sender sees why.
type inboxError struct {
	status     int
	msg        string
	retryAfter time.Duration // sent as Retry-After when > 0
}

func (e *inboxError) Error() string { return e.msg }

func refuse(status int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasPrefix(msg, "relay: ") {
		msg = "relay: " + msg
	}
	return &inboxError{status: status, msg: msg}
}

// refuseRetry is refuse with a Retry-After: for 429 and 503.
func refuseRetry(status int, after time.Duration, format string, args ...any) error {
	err := refuse(status, format, args...).(*inboxError)
	err.retryAfter = after
	return err
}

// accepted is the outcome of a request that was taken (or deliberately
// ignored); the message is only logged.
type accepted string

func (a accepted) Error() string { return string(a) }

// serveInbox handles POST P/inbox:
//
//	413 body over Config.MaxBodyBytes (refused before reading it whole)
//	401 no, malformed or invalid HTTP signature (draft-cavage or RFC 9421);
//	    key not found; signer not bound to the actor
//	400 malformed JSON (or nested too deeply), an activity without type,
//	    actor or id; an id, actor, object or keyId over maxIDLength bytes
//	403 keyId, actor or object on a blocked domain (before any fetch);
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
		return refuse(http.StatusUnauthorized, "%v", err)
	}
	keyID := sig.keyID()
	if len(keyID) > maxIDLength {
		return refuse(http.StatusBadRequest, "keyId is %d bytes long, over the %d-byte limit for ids", len(keyID), maxIDLength)
	}
	if err := checkIRI(keyID); err != nil {
		return refuse(http.StatusUnauthorized, "unsupported keyId: %v", err)
	}
	if r.guard.blocked.blockedURL(keyID) {
		return refuse(http.StatusForbidden, "%s is blocked", hostOf(keyID))
	}
	if err := sig.check(req, body, r.verifyOptions()); err != nil {
		return refuse(http.StatusUnauthorized, "%v", err)
	}
	env, err := parseEnvelope(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "%v", err)
	}
	env.rfc9421 = sig.rfc9421()
	if env.Actor == r.actorID || keyID == r.keyID {
		// An echo of the relay's own activity (a loop through another
		// relay), or a forgery: either way there is nothing to do, and the
		// relay's own key is not fetched.
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
		return refuse(http.StatusUnauthorized, "key %s is gone", keyID)
	}
	if err != nil {
		return err
	}
	if ok, after := r.inLimit.allow(hostOf(key.ID), r.now()); !ok {
		return refuseRetry(http.StatusTooManyRequests, after, "too many requests from %s", hostOf(key.ID))
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

// keyOwnedBy reports whether keyID is a key of actor: the actor with a
// fragment (actor#main-key) or below it (GoToSocial's actor/main-key).
func keyOwnedBy(keyID, actor string) bool {
	k := stripFragment(keyID)
	return actor != "" && (k == actor || strings.HasPrefix(k, actor+"/"))
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

func (r *Relay) verifyOptions() VerifyOptions {
	return VerifyOptions{Now: r.now(), MaxAge: r.cfg.SignatureMaxAge, MaxFuture: r.cfg.ClockSkew}
}

// authenticate verifies the request's signature with the signer's key,
// fetching it (cached; fetched again if verification fails, in case the key
// was rotated, unless it was fetched less than keyRefetchInterval ago, in
// which case the failure is a 401 without any fetch). An expired key of a
// subscribed host is used while it is fetched again (see keyCache.get). It
// waits at most Config.KeyFetchTimeout for keys. It returns an error
// wrapping errGone when the key's document is gone, and an *inboxError
// otherwise.
func (r *Relay) authenticate(ctx context.Context, req *http.Request, sig inboundSignature) (*remoteKey, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.KeyFetchTimeout)
	defer cancel()
	keyID := sig.keyID()
	key, err := r.keys.get(ctx, keyID, nil)
	if err != nil {
		return nil, keyError("cannot get key "+keyID, err)
	}
	verr := sig.verify(req, key.Key)
	if verr == nil {
		key.markVerified()
		return key, nil
	}
	fresh, err := r.keys.get(ctx, keyID, key)
	switch {
	case errors.Is(err, errRefetchTooSoon):
		return nil, refuse(http.StatusUnauthorized, "%v", verr)
	case err != nil:
		return nil, keyError("cannot refresh key "+keyID, err)
	}
	if err := sig.verify(req, fresh.Key); err != nil {
		return nil, refuse(http.StatusUnauthorized, "%v", err)
	}
	fresh.markVerified()
	return fresh, nil
}

// keyError maps a key lookup failure to the inbox's answer: 429 when the
// keyId host's fetch budget is spent, 503 when the key server did not
// answer in time or too many keys are being fetched (the sender should
// retry), 401 otherwise.
func keyError(what string, err error) error {
	var rl *rateLimitedError
	var ne net.Error
	switch {
	case errors.Is(err, errGone):
		return err
	case errors.As(err, &rl):
		return refuseRetry(http.StatusTooManyRequests, rl.after, "%s: %v", what, err)
	case errors.Is(err, errKeyFetchesBusy):
		return refuseRetry(http.StatusServiceUnavailable, keyBusyRetryAfter, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return refuseRetry(http.StatusServiceUnavailable, keyRetryAfter, "%s: timed out", what)
	}
	return refuse(http.StatusUnauthorized, "%s: %v", what, err)
}

// keyBusyRetryAfter is the Retry-After sent when the key fetches in flight
// are at their cap (maxKeyFetchesPerHost for the keyId host, or
// maxKeyFetches for hosts without a subscriber).
const keyBusyRetryAfter = 10 * time.Second

// keyRetryAfter is the Retry-After sent when a key fetch timed out.
const keyRetryAfter = time.Minute

// inboundSignature is an incoming request's signature: draft-cavage or
// RFC 9421.
type inboundSignature interface {
	keyID() string
	rfc9421() bool
	check(req *http.Request, body []byte, opts VerifyOptions) error
	verify(req *http.Request, pub crypto.PublicKey) error
}

// requestSignature returns the request's RFC 9421 signature if it has a
// Signature-Input header, else its draft-cavage signature.
//
// Behind a reverse proxy that rewrites Host (nginx's default proxy_pass,
// Apache without ProxyPreserveHost) the request's Host is not the one the
// sender signed: senders address the relay by its public URL. When the two
// differ, a signature is verified against the request's Host first, then
// against BaseURL's host.
func (r *Relay) requestSignature(req *http.Request) (inboundSignature, error) {
	publicHost := ""
	if !strings.EqualFold(req.Host, r.base.Host) {
		publicHost = r.base.Host
	}
	if len(req.Header.Values("Signature-Input")) == 0 {
		p, err := FromRequest(req)
		if err != nil {
			return nil, err
		}
		return cavageSignature{p: p, publicHost: publicHost}, nil
	}
	m, err := MessageSignatureFromRequest(req)
	if err != nil {
		return nil, err
	}
	// @target-uri is the URL the sender used: the relay's public scheme
	// (a TLS-terminating proxy hides it) with the request's host and path.
	s := &messageSignature{m: m, req: withURL(req, r.base.Scheme, req.Host)}
	if publicHost != "" {
		s.public = withURL(req, r.base.Scheme, publicHost)
	}
	return s, nil
}

// withURL returns a shallow copy of req addressed to scheme://host with
// req's path and query, and Host set to host.
func withURL(req *http.Request, scheme, host string) *http.Request {
	abs := *req
	u := *req.URL
	u.Scheme, u.Host = scheme, host
	abs.URL = &u
	abs.Host = host
	return &abs
}

type cavageSignature struct {
	p          *SignatureParams
	publicHost string // BaseURL's host if the request's Host differs, else ""
}

func (s cavageSignature) keyID() string { return s.p.KeyID }
func (s cavageSignature) rfc9421() bool { return false }
func (s cavageSignature) check(req *http.Request, body []byte, opts VerifyOptions) error {
	return s.p.Check(req, body, opts)
}
func (s cavageSignature) verify(req *http.Request, pub crypto.PublicKey) error {
	err := s.p.Verify(req, pub)
	if err != nil && s.publicHost != "" && slices.Contains(s.p.Headers, "host") {
		if s.p.VerifyHost(req, pub, s.publicHost) == nil {
			return nil
		}
	}
	return err
}

// messageSignature checks and verifies against req, the request with an
// absolute URL, whatever request it is given; and if that fails, against
// public, the same request addressed to BaseURL's host, when the request's
// Host differs from it.
type messageSignature struct {
	m      *MessageSignature
	req    *http.Request
	public *http.Request
}

func (s *messageSignature) keyID() string { return s.m.KeyID }
func (s *messageSignature) rfc9421() bool { return true }
func (s *messageSignature) check(_ *http.Request, body []byte, opts VerifyOptions) error {
	return s.m.Check(s.req, body, opts)
}
func (s *messageSignature) verify(_ *http.Request, pub crypto.PublicKey) error {
	err := s.m.Verify(s.req, pub)
	if err != nil && s.public != nil && s.m.Verify(s.public, pub) == nil {
		return nil
	}
	return err
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
	return refuse(http.StatusUnauthorized, "signed by %s, which may not speak for %s", signer.ID, env.Actor)
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
	if err != nil {
		r.log.Warn("relay: recording a subscriber's signature scheme", "actor", actorID, "err", err)
	}
}

// relayActivity accepts a public activity from a subscriber and queues it
// for every other accepted subscriber before answering.
func (r *Relay) relayActivity(ctx context.Context, env *envelope, body []byte, signer *remoteActor) error {
	senderHost := hostOf(env.Actor)
	senders, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{Host: senderHost})
	if err != nil {
		return err
	}
	if err := requireBound(env, signer, senders); err != nil {
		return err
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
		return refuse(http.StatusForbidden, "%s is not an accepted subscriber of this relay", senderHost)
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
	// A LitePub relay actor announces public posts to its followers only.
	litePubAnnounce := env.Type == "Announce" && sender.Protocol == store.ProtocolLitePub && sender.ActorID == env.Actor
	if !env.IsPublic() && !litePubAnnounce {
		return refuse(http.StatusForbidden, "activity is not addressed to the public")
	}
	objectID, err := relayableObject(env)
	if err != nil {
		return err
	}
	if env.isPost() && !env.Published.IsZero() &&
		r.now().Sub(env.Published) > r.cfg.MaxActivityAge {
		return accepted("published " + env.Published.String() + ", longer ago than the maximum age")
	}
	if relayedByRelay(env, signer, objectID, senders) {
		return accepted("announce by a relay actor of an object from another origin")
	}

	return r.fanOut(ctx, env, body, objectID, senderHost)
}

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
		if s.Host == senderHost || !s.Receives() { // send-only subscribers get nothing
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
