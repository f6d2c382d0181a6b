package relaytest

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Incoming requests: signature verification (protocol.md §6.2) and what each flavor does with
// the activities it accepts (§5.1-5.4).

type verifyError struct {
	reason string
	gone   bool
}

// skew returns the accepted Date distance.
func (i *Instance) skew() time.Duration {
	if i.opts.MaxClockSkew > 0 {
		return i.opts.MaxClockSkew
	}
	if i.flavor == Misskey {
		return 300 * time.Second
	}
	return time.Hour
}

func (i *Instance) maxBody() int64 {
	if i.opts.MaxBodyBytes > 0 {
		return i.opts.MaxBodyBytes
	}
	if i.flavor == Misskey {
		return 64 << 10
	}
	return 1 << 20
}

// verifyRequest checks the draft-cavage signature of a server-side request whose body is body
// (nil for GET). It returns the keyId and the key's owner.
func (i *Instance) verifyRequest(ctx context.Context, r *http.Request, body []byte) (string, string, *verifyError) {
	fail := func(format string, args ...any) *verifyError {
		return &verifyError{reason: fmt.Sprintf(format, args...)}
	}
	h := r.Header.Get("Signature")
	if h == "" {
		return "", "", fail("missing Signature header")
	}
	sp, err := parseSignature(h)
	if err != nil {
		return "", "", fail("malformed Signature header: %v", err)
	}
	keyID := sp.keyID
	switch strings.ToLower(sp.algorithm) {
	case "", "rsa-sha256", "hs2019":
	default:
		return keyID, "", fail("unsupported signature algorithm %q (only rsa-sha256 and hs2019 are supported)", sp.algorithm)
	}
	required := []string{"(request-target)", "host"}
	isPost := r.Method == http.MethodPost
	if isPost {
		required = append(required, "digest")
	}
	for _, req := range required {
		if !containsFold(sp.headers, req) {
			return keyID, "", fail("%s must be signed (signed: %q)", req, strings.Join(sp.headers, " "))
		}
	}
	signsDate := containsFold(sp.headers, "date")
	signsCreated := containsFold(sp.headers, "(created)")
	if !signsDate && !signsCreated {
		return keyID, "", fail("date or (created) must be signed (signed: %q)", strings.Join(sp.headers, " "))
	}
	now := time.Now()
	window := i.skew()
	checkTime := func(what string, t time.Time) *verifyError {
		if now.Sub(t) > window {
			return fail("%s %s is too old (more than %v in the past)", what, t.UTC().Format(time.RFC3339), window)
		}
		if t.Sub(now) > window {
			return fail("%s %s is too far in the future (more than %v ahead)", what, t.UTC().Format(time.RFC3339), window)
		}
		return nil
	}
	if signsDate {
		d, err := http.ParseTime(r.Header.Get("Date"))
		if err != nil {
			return keyID, "", fail("unparseable Date %q", r.Header.Get("Date"))
		}
		if e := checkTime("Date", d); e != nil {
			return keyID, "", e
		}
	}
	if signsCreated {
		if !sp.hasCreated {
			return keyID, "", fail("(created) signed without a created parameter")
		}
		if e := checkTime("(created)", time.Unix(sp.created, 0)); e != nil {
			return keyID, "", e
		}
	}
	if sp.hasExpires && now.Unix() > sp.expires {
		return keyID, "", fail("signature expired")
	}
	if i.flavor == Misskey && !strings.EqualFold(r.Host, i.host) {
		return keyID, "", fail("signed host %q is not %q", r.Host, i.host)
	}
	if isPost || containsFold(sp.headers, "digest") {
		if err := checkDigest(r.Header.Get("Digest"), body); err != nil {
			return keyID, "", fail("%v", err)
		}
	}
	withQuery, err := serverSigningString(r, sp, true)
	if err != nil {
		return keyID, "", fail("%v", err)
	}
	withoutQuery, _ := serverSigningString(r, sp, false)
	verifies := func(k *remoteKey) bool {
		if verifyRSA(k.pub, withQuery, sp.signature) == nil {
			return true
		}
		return withoutQuery != withQuery && verifyRSA(k.pub, withoutQuery, sp.signature) == nil
	}
	k, cached, err := i.remoteKeyFor(ctx, keyID, false)
	if err != nil {
		return keyID, "", &verifyError{reason: "cannot get key: " + err.Error(), gone: errors.Is(err, errGone)}
	}
	if !verifies(k) {
		if !cached {
			return keyID, "", fail("signature does not verify with key %s", keyID)
		}
		// Maybe the key changed: refetch once, like Mastodon.
		k, _, err = i.remoteKeyFor(ctx, keyID, true)
		if err != nil {
			return keyID, "", fail("signature does not verify and refetching key failed: %v", err)
		}
		if !verifies(k) {
			return keyID, "", fail("signature does not verify with key %s", keyID)
		}
	}
	return keyID, k.owner, nil
}

// contentTypeOK applies the flavor's inbox content-type rules.
func (i *Instance) contentTypeOK(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	if i.flavor == GoToSocial {
		switch mt {
		case "application/activity+json":
			cs, hasCS := params["charset"]
			return len(params) == 0 || (len(params) == 1 && hasCS && strings.EqualFold(cs, "utf-8"))
		case "application/ld+json":
			return params["profile"] == asContext
		}
		return false
	}
	return mt == "application/activity+json" || mt == "application/ld+json"
}

type job func(ctx context.Context)

// serveInbox handles a POST to an inbox. owner is the inbox's actor (nil for the shared inbox).
func (i *Instance) serveInbox(w http.ResponseWriter, r *http.Request, owner *localActor) {
	limit := i.maxBody()
	if r.ContentLength > limit {
		i.refuse(w, r, nil, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes exceeds the limit of %d", r.ContentLength, limit), "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			i.refuse(w, r, nil, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds the limit of %d bytes", limit), "")
			return
		}
		i.refuse(w, r, body, http.StatusBadRequest, "reading body: "+err.Error(), "")
		return
	}
	if ct := r.Header.Get("Content-Type"); !i.contentTypeOK(ct) {
		status := http.StatusUnsupportedMediaType
		if i.flavor == GoToSocial {
			status = http.StatusNotAcceptable
		}
		i.refuse(w, r, body, status, fmt.Sprintf("unsupported content type %q", ct), "")
		return
	}
	keyID, signer, verr := i.verifyRequest(r.Context(), r, body)
	act, perr := parseJSONObject(body)
	rec := &Received{Inbox: r.URL.Path, KeyID: keyID, Signer: signer, Body: body, Header: r.Header.Clone(), At: time.Now()}
	if perr == nil {
		fillRecord(rec, act)
	}
	if verr != nil {
		if verr.gone && i.flavor == Mastodon && perr == nil && (rec.Type == "Delete" || rec.Type == "Update") && rec.Actor == rec.ObjectID {
			// Mastodon answers 202 to deletions of actors it cannot fetch any more.
			rec.Dropped, rec.Reason = true, "account Delete/Update of an unknown (gone) actor: accepted without verification"
			i.accept(w, rec, nil)
			return
		}
		i.refuse(w, r, body, http.StatusUnauthorized, verr.reason, keyID)
		return
	}
	if perr != nil {
		i.refuse(w, r, body, http.StatusBadRequest, perr.Error(), keyID)
		return
	}
	if rec.Type == "" {
		i.refuse(w, r, body, http.StatusBadRequest, "activity without type", keyID)
		return
	}
	var (
		status int
		reason string
		jobs   []job
	)
	switch i.flavor {
	case Mastodon:
		jobs = i.processMastodon(r.Context(), rec, act)
	case Misskey:
		jobs = i.processMisskey(r.Context(), rec, act)
	case Pleroma:
		status, reason, jobs = i.processPleroma(rec, act)
	case GoToSocial:
		status, reason, jobs = i.processGoToSocial(rec, act)
	case Friendica:
		jobs = i.processFriendica(r.Context(), rec, act)
	}
	if status != 0 {
		i.refuse(w, r, body, status, reason, keyID)
		return
	}
	i.accept(w, rec, jobs)
}

// accept records rec, starts its jobs and answers 202.
func (i *Instance) accept(w http.ResponseWriter, rec *Received, jobs []job) {
	i.mu.Lock()
	i.received = append(i.received, rec)
	i.mu.Unlock()
	for _, j := range jobs {
		i.goBackground(j)
	}
	w.WriteHeader(http.StatusAccepted)
}

func fillRecord(rec *Received, act map[string]any) {
	rec.Type = typeOf(act)
	rec.ID, _ = act["id"].(string)
	rec.Actor = idOf(act["actor"])
	rec.ObjectID = idOf(act["object"])
	if m, ok := act["object"].(map[string]any); ok {
		rec.ObjectType = typeOf(m)
	}
	_, rec.LDSigned = act["signature"].(map[string]any)
}

// idOf returns an IRI, the id of an embedded object, or the first of an array.
func idOf(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case map[string]any:
		id, _ := x["id"].(string)
		return id
	case []any:
		if len(x) > 0 {
			return idOf(x[0])
		}
	}
	return ""
}

func typeOf(m map[string]any) string {
	switch t := m["type"].(type) {
	case string:
		return t
	case []any:
		if len(t) > 0 {
			s, _ := t[0].(string)
			return s
		}
	}
	return ""
}

func hostOf(iri string) string {
	u, err := url.Parse(iri)
	if err != nil {
		return ""
	}
	return strings.ToLower(u.Host)
}

func drop(rec *Received, format string, args ...any) {
	rec.Dropped = true
	rec.Reason = fmt.Sprintf(format, args...)
}

// ldKeyLookup resolves LD signature creators through the instance's key cache.
func (i *Instance) ldKeyLookup(ctx context.Context) func(string) (*rsa.PublicKey, string, error) {
	return func(keyID string) (*rsa.PublicKey, string, error) {
		k, _, err := i.remoteKeyFor(ctx, keyID, false)
		if err != nil {
			return nil, "", err
		}
		return k.pub, k.owner, nil
	}
}

// checkLD verifies the LD signature of a relayed activity; it returns false (and marks rec
// dropped) if the activity cannot be attributed to its actor.
func (i *Instance) checkLD(ctx context.Context, rec *Received, act map[string]any) bool {
	if !rec.LDSigned {
		drop(rec, "%s by %s was signed by %s and carries no LD signature", rec.Type, rec.Actor, rec.Signer)
		return false
	}
	owner, err := ldVerify(act, i.ldKeyLookup(ctx))
	if err != nil {
		drop(rec, "%s by %s (HTTP-signed by %s): %v", rec.Type, rec.Actor, rec.Signer, err)
		return false
	}
	if owner != rec.Actor {
		drop(rec, "LD signature by %s, not by the actor %s", owner, rec.Actor)
		return false
	}
	rec.LDVerified = true
	return true
}

// isEnabledRelay is Mastodon's Relay.find_by(inbox_url: actor.inbox_url)&.enabled?.
func (i *Instance) isEnabledRelay(ctx context.Context, actorID string) bool {
	ra, err := i.remoteActorFor(ctx, actorID)
	if err != nil {
		return false
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, s := range i.subs {
		if s.state == StateAccepted && s.inbox == ra.inbox {
			return true
		}
	}
	return false
}

// fetchJob fetches objectURL in the background, keeps it as a status the instance holds, and
// records the outcome in rec.
func (i *Instance) fetchJob(rec *Received, objectURL string) job {
	return i.fetchJobThen(rec, objectURL, nil)
}

// fetchJobThen is fetchJob with what the flavor does with the fetched object: then (if not
// nil) runs after a successful fetch and returns why the activity is dropped after all ("" if
// it is applied); the object is kept as a status unless it is dropped.
func (i *Instance) fetchJobThen(rec *Received, objectURL string, then func(doc map[string]any, body []byte) string) job {
	rec.FetchURL = objectURL
	return func(ctx context.Context) {
		status, doc, body, err := i.fetchJSON(ctx, objectURL)
		if err == nil {
			if id, _ := doc["id"].(string); id != objectURL {
				err = fmt.Errorf("fetched object has id %q, not %q", id, objectURL)
			}
		}
		dropReason := ""
		if err == nil && then != nil {
			dropReason = then(doc, body)
		}
		if err == nil && dropReason == "" {
			i.keepStatus(objectURL, body)
		}
		i.mu.Lock()
		defer i.mu.Unlock()
		rec.FetchDone, rec.FetchStatus, rec.FetchBody = true, status, body
		switch {
		case err != nil:
			rec.FetchErr = err.Error()
			dropReason = "object fetch failed: " + err.Error()
		case dropReason == "":
			return
		}
		rec.Dropped = true
		if rec.Reason != "" {
			rec.Reason += "; "
		}
		rec.Reason += dropReason
	}
}

// boostJob fetches an Announce's object like announcedObjectFetch and then applies the boost
// (check, if not nil, may refuse it first with a reason).
func (i *Instance) boostJob(rec *Received, act map[string]any, check func(doc map[string]any) string) []job {
	apply := func(doc map[string]any, _ []byte) string {
		if check != nil {
			if why := check(doc); why != "" {
				return why
			}
		}
		if !i.addBoost(rec.ID, rec.Actor, rec.ObjectID) {
			return "Announce " + rec.ID + " was applied already"
		}
		return ""
	}
	if m, ok := act["object"].(map[string]any); ok && idOf(m["attributedTo"]) == rec.Actor {
		apply(m, nil)
		return nil
	}
	if rec.ObjectID == "" {
		drop(rec, "Announce without object")
		return nil
	}
	return []job{i.fetchJobThen(rec, rec.ObjectID, apply)}
}

// keepEmbedded keeps the object embedded in act (a Create or an Update) as a status.
func (i *Instance) keepEmbedded(rec *Received, act map[string]any) {
	if m, ok := act["object"].(map[string]any); ok {
		if b, err := canonicalJSON(m); err == nil {
			i.keepStatus(rec.ObjectID, b)
		}
	}
}

// deleteStatus applies a Delete of a status: the status is forgotten.
func (i *Instance) deleteStatus(rec *Received) {
	if !i.forgetStatus(rec.ObjectID) {
		drop(rec, "Delete of %s, which the instance does not have", rec.ObjectID)
		return
	}
	rec.Reason = strings.TrimPrefix(rec.Reason+"; status deleted", "; ")
}

func (i *Instance) processMastodon(ctx context.Context, rec *Received, act map[string]any) []job {
	if !contextHasAS(act) {
		drop(rec, "@context does not include %s", asContext)
		return nil
	}
	relayedThrough := ""
	if rec.Signer != rec.Actor {
		if !i.checkLD(ctx, rec, act) {
			return nil
		}
		relayedThrough = rec.Signer
	}
	switch rec.Type {
	case "Accept", "Reject":
		i.subscriptionReply(rec, act)
	case "Create":
		if relayedThrough != "" && !i.isEnabledRelay(ctx, relayedThrough) {
			drop(rec, "Create relayed through %s, whose inbox is not an accepted relay subscription", relayedThrough)
			return nil
		}
		if hostOf(rec.ObjectID) != hostOf(rec.Actor) {
			drop(rec, "object %s is not on the actor's host", rec.ObjectID)
			return nil
		}
		rec.Reason = "Create accepted"
		if relayedThrough != "" {
			rec.Reason += " (LD signature, relayed through " + relayedThrough + ")"
		}
		i.keepEmbedded(rec, act)
	case "Announce":
		viaRelay := (relayedThrough != "" && i.isEnabledRelay(ctx, relayedThrough)) || i.isEnabledRelay(ctx, rec.Actor)
		if !viaRelay && !i.followedByLocal(rec.Actor) {
			drop(rec, "Announce by %s: neither followed nor an accepted relay (its inbox must equal a subscribed relay inbox)", rec.Actor)
			return nil
		}
		rec.Reason = "Announce from relay: fetching object"
		return i.boostJob(rec, act, nil)
	case "Follow":
		drop(rec, "Follow of a Mastodon relay client actor is not processed")
	default:
		if relayedThrough != "" {
			rec.Reason = rec.Type + " accepted (LD signature)"
		}
		switch rec.Type {
		case "Update":
			// ProcessStatusUpdateService applies the embedded version.
			i.keepEmbedded(rec, act)
		case "Delete":
			i.deleteStatus(rec)
		case "Undo":
			i.undoAnnounce(rec, act)
		}
	}
	return nil
}

func (i *Instance) processMisskey(ctx context.Context, rec *Received, act map[string]any) []job {
	effective := rec.Signer
	if rec.Signer != rec.Actor {
		if !i.checkLD(ctx, rec, act) {
			return nil
		}
		effective = rec.Actor
	}
	if hostOf(rec.ID) != hostOf(effective) {
		drop(rec, "activity id %q is not on the host of its signer %s", rec.ID, effective)
		return nil
	}
	switch rec.Type {
	case "Accept", "Reject":
		i.subscriptionReply(rec, act)
	case "Create":
		i.keepEmbedded(rec, act)
	case "Announce":
		rec.Reason = "Announce: resolving note"
		return i.boostJob(rec, act, func(note map[string]any) string {
			// ApInboxService.announceNote: an Announce dated before the note's creation (the
			// date of its id, at millisecond precision) is skipped.
			created, ok := publishedOf(note)
			announced, hasPublished := publishedOf(act)
			if ok && hasPublished && announced.Before(created.Truncate(time.Millisecond)) {
				return fmt.Sprintf("skip: malformed createdAt (Announce published %s, before the note's %s)",
					act["published"], note["published"])
			}
			return ""
		})
	case "Update":
		// Misskey applies Updates of actors and polls (Question) only.
		if t := rec.ObjectType; t != "Question" && !isActorType(t) {
			drop(rec, "skip: Unknown type: %s (Misskey does not apply edits of notes)", t)
		}
	case "Delete":
		i.deleteStatus(rec)
	case "Undo":
		if _, embedded := act["object"].(map[string]any); !embedded {
			// The resolver fetches an object given by IRI.
			rec.Reason = "Undo: resolving object"
			return []job{i.fetchJobThen(rec, rec.ObjectID, func(doc map[string]any, _ []byte) string {
				if typeOf(doc) != "Announce" || idOf(doc["actor"]) != rec.Actor {
					return "skip: not an Announce by the actor"
				}
				if ok, why := i.removeBoost(rec.ObjectID, rec.Actor); !ok {
					return "skip: " + why
				}
				return ""
			})}
		}
		i.undoAnnounce(rec, act)
	case "Follow":
		drop(rec, "Follow of a Misskey system user is not processed")
	}
	return nil
}

// isActorType reports an ActivityStreams actor type.
func isActorType(t string) bool {
	switch t {
	case "Person", "Service", "Application", "Group", "Organization":
		return true
	}
	return false
}

// pleromaSigner maps a keyId to an actor like Pleroma: strip the fragment, or a trailing
// "/publickey".
func pleromaSigner(keyID string) string {
	if k, _, ok := strings.Cut(keyID, "#"); ok {
		return k
	}
	return strings.TrimSuffix(keyID, "/publickey")
}

func (i *Instance) processPleroma(rec *Received, act map[string]any) (int, string, []job) {
	if s := pleromaSigner(rec.KeyID); s != rec.Actor {
		if rec.Type != "Create" {
			return http.StatusBadRequest, fmt.Sprintf("Invalid HTTP Signature: keyId %s maps to %s, not to the actor %s (Pleroma only refetches relayed Creates)", rec.KeyID, s, rec.Actor), nil
		}
		if rec.ObjectID == "" {
			return http.StatusBadRequest, "relayed Create without object id", nil
		}
		if i.hasStatus(rec.ObjectID) {
			// Fetcher.fetch_object_from_id returns the copy it has.
			drop(rec, "relayed Create of %s, which Pleroma already has: not refetched", rec.ObjectID)
			return 0, "", nil
		}
		rec.Reason = "relayed Create: fetching object from source"
		return 0, "", []job{i.fetchJob(rec, rec.ObjectID)}
	}
	switch rec.Type {
	case "Follow":
		return 0, "", i.followSystemActor(rec, act, "relay actor")
	case "Undo":
		if i.unfollowSystemActor(rec, act, "relay actor") {
			return 0, "", nil
		}
		i.undoAnnounce(rec, act)
	case "Accept", "Reject":
		i.subscriptionReply(rec, act)
	case "Create", "Update":
		i.keepEmbedded(rec, act)
	case "Delete":
		i.deleteStatus(rec)
	case "Announce":
		// AnnounceValidator refuses a second Announce of an object by the same actor, and the
		// fetcher returns the copy it has of a known object.
		if i.hasBoostBy(rec.Actor, rec.ObjectID) {
			drop(rec, "%s already announced %s", rec.Actor, rec.ObjectID)
			return 0, "", nil
		}
		if i.hasStatus(rec.ObjectID) {
			i.addBoost(rec.ID, rec.Actor, rec.ObjectID)
			rec.Reason = "Announce of a known object: applied without refetching it"
			return 0, "", nil
		}
		rec.Reason = "Announce: fetching object"
		return 0, "", i.boostJob(rec, act, nil)
	}
	return 0, "", nil
}

// followSystemActor records the Follow act of the instance's system actor
// (named what in rec.Reason) and returns the job that accepts it; it drops
// a Follow of anything else and returns no job.
func (i *Instance) followSystemActor(rec *Received, act map[string]any, what string) []job {
	if rec.ObjectID != i.system.id {
		drop(rec, "Follow of %s is not processed", rec.ObjectID)
		return nil
	}
	followMap, _ := copyAny(act).(map[string]any)
	i.mu.Lock()
	i.followers[rec.Actor] = rec.ID
	i.mu.Unlock()
	rec.Reason = "follow of the " + what + ": accepting"
	return []job{i.acceptBackJob(rec.Actor, followMap)}
}

// unfollowSystemActor applies the Undo act when it undoes a Follow of the
// instance's system actor (named what in rec.Reason), and reports whether
// it did.
func (i *Instance) unfollowSystemActor(rec *Received, act map[string]any, what string) bool {
	m, ok := act["object"].(map[string]any)
	if !ok || typeOf(m) != "Follow" || idOf(m["object"]) != i.system.id {
		return false
	}
	i.mu.Lock()
	delete(i.followers, rec.Actor)
	i.mu.Unlock()
	rec.Reason = "unfollowed the " + what
	return true
}

// acceptBackJob answers a Follow of Pleroma's relay actor with a signed Accept embedding it.
func (i *Instance) acceptBackJob(follower string, follow map[string]any) job {
	return func(ctx context.Context) {
		inbox := ""
		// Pleroma delivers non-public activities (the Accept is addressed to the follower
		// only) to the actor's own inbox.
		if ra, err := i.remoteActorFor(ctx, follower); err == nil {
			inbox = ra.inbox
		}
		if inbox == "" {
			i.mu.Lock()
			for _, s := range i.subs {
				if hostOf(s.inbox) == hostOf(follower) {
					inbox = s.inbox
				}
			}
			i.mu.Unlock()
		}
		if inbox == "" {
			i.log("cannot find an inbox to Accept the Follow of %s", follower)
			return
		}
		delete(follow, "@context")
		accept := map[string]any{
			"@context": i.activityContext(), "id": i.base + "/activities/" + newUUID(), "type": "Accept",
			"actor": i.system.id, "object": follow, "to": []any{follower}, "cc": []any{},
		}
		if err := i.deliver(ctx, inbox, i.system, accept); err != nil && ctx.Err() == nil {
			i.log("delivering Accept of the Follow of %s: %v", follower, err)
		}
	}
}

func copyAny(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = copyAny(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for k, e := range x {
			s[k] = copyAny(e)
		}
		return s
	}
	return v
}

func (i *Instance) processGoToSocial(rec *Received, act map[string]any) (int, string, []job) {
	_, hasTo := act["to"]
	_, hasCC := act["cc"]
	if rec.Type == "Announce" && !hasTo && !hasCC {
		return http.StatusBadRequest, "Announce without to or cc", nil
	}
	direct := rec.Signer == rec.Actor || hostOf(rec.Signer) == hostOf(rec.Actor)
	switch rec.Type {
	case "Follow":
		if rec.ObjectID == i.system.id {
			drop(rec, "GoToSocial ignores a relay's follow-back (never accepts it)")
		} else {
			drop(rec, "Follow of %s is not processed", rec.ObjectID)
		}
	case "Accept", "Reject":
		if !direct {
			drop(rec, "%s by %s was signed by %s", rec.Type, rec.Actor, rec.Signer)
			return 0, "", nil
		}
		i.subscriptionReply(rec, act)
	case "Create", "Update":
		if !direct {
			// Forwarded (the signer did not create the status): the embedded copy is dropped
			// and the status fetched again from its origin; an Update of an unknown status is
			// handled as a Create.
			if rec.ObjectID == "" {
				drop(rec, "relayed %s without object id", rec.Type)
				return 0, "", nil
			}
			rec.Reason = "forwarded " + rec.Type + ": refetching the status from its origin"
			return 0, "", []job{i.fetchJob(rec, rec.ObjectID)}
		}
		i.keepEmbedded(rec, act)
	case "Announce":
		if i.hasStatus(rec.ObjectID) {
			drop(rec, "Announce of %s, a status GoToSocial already has: nothing to do (not refetched)", rec.ObjectID)
			return 0, "", nil
		}
		rec.Reason = "Announce: fetching object"
		return 0, "", i.boostJob(rec, act, nil)
	case "Delete":
		if !direct {
			drop(rec, "relayed Delete (signed by %s, not by the author) is ignored", rec.Signer)
			return 0, "", nil
		}
		i.deleteStatus(rec)
	case "Undo":
		// Only an embedded Announce is undone (an IRI is skipped), and only when the signer
		// is the announcer.
		if _, embedded := act["object"].(map[string]any); !embedded {
			drop(rec, "Undo of an object given by IRI is skipped")
			return 0, "", nil
		}
		if rec.Signer != rec.Actor {
			drop(rec, "Undo signed by %s, not by the announcer %s", rec.Signer, rec.Actor)
			return 0, "", nil
		}
		i.undoAnnounce(rec, act)
	}
	return 0, "", nil
}

// friendicaContentTypes are the object types Friendica takes as posts (Receiver::CONTENT_TYPES).
var friendicaContentTypes = map[string]bool{
	"Note": true, "Article": true, "Question": true, "Page": true, "Event": true, "Audio": true, "Video": true, "Image": true,
}

// isFriendicaRelayActor is APContact::isRelay for the relays a fake meets: an Application named
// relay at /actor or /relay.
func (i *Instance) isFriendicaRelayActor(ctx context.Context, id string) bool {
	if id == "" {
		return false
	}
	ra, err := i.remoteActorFor(ctx, id)
	if err != nil {
		return false
	}
	u, err := url.Parse(id)
	return err == nil && ra.typ == "Application" && ra.username == "relay" && (u.Path == "/actor" || u.Path == "/relay")
}

func (i *Instance) processFriendica(ctx context.Context, rec *Received, act map[string]any) []job {
	relayPost := rec.ObjectID != "" && (rec.Type == "Announce" ||
		(rec.Type == "Create" || rec.Type == "Update") && friendicaContentTypes[rec.ObjectType])
	if relayPost && (i.isFriendicaRelayActor(ctx, rec.Actor) || i.isFriendicaRelayActor(ctx, rec.Signer)) {
		// Receiver::processRelayPost: the object is fetched from its id, unless Friendica has it.
		if i.hasStatus(rec.ObjectID) {
			drop(rec, "Relayed message already exists: %s", rec.ObjectID)
			return nil
		}
		rec.Reason = "post from a relay: fetching the object from its origin"
		return []job{i.fetchJob(rec, rec.ObjectID)}
	}
	trusted := rec.Signer == rec.Actor
	if !trusted && rec.LDSigned {
		if owner, err := ldVerify(act, i.ldKeyLookup(ctx)); err == nil && owner == rec.Actor {
			trusted, rec.LDVerified = true, true
		}
	}
	if !trusted && rec.Type == "Delete" {
		// Processor::isActivityGone: a Delete of an object that answers 410 is applied.
		rec.Reason = "untrusted Delete: checking whether the object is gone"
		return []job{i.goneJob(rec)}
	}
	if !trusted {
		drop(rec, "%s by %s signed by %s without a valid LD signature: not trusted", rec.Type, rec.Actor, rec.Signer)
		return nil
	}
	switch rec.Type {
	case "Follow":
		return i.followSystemActor(rec, act, "system actor")
	case "Accept", "Reject":
		i.subscriptionReply(rec, act)
	case "Create", "Update":
		i.keepEmbedded(rec, act)
	case "Delete":
		i.deleteStatus(rec)
	case "Undo":
		if i.unfollowSystemActor(rec, act, "system actor") {
			return nil
		}
		i.undoAnnounce(rec, act)
	}
	return nil
}

// goneJob applies a Delete whose object answers 410 Gone, and drops it otherwise.
func (i *Instance) goneJob(rec *Received) job {
	rec.FetchURL = rec.ObjectID
	return func(ctx context.Context) {
		status, _, _, err := i.fetchJSON(ctx, rec.ObjectID)
		gone := status == http.StatusGone
		if gone {
			i.forgetStatus(rec.ObjectID)
		}
		i.mu.Lock()
		defer i.mu.Unlock()
		rec.FetchDone, rec.FetchStatus = true, status
		if err != nil && !gone {
			rec.FetchErr = err.Error()
		}
		if gone {
			rec.Reason += "; the object is gone: deleted"
			return
		}
		rec.Dropped = true
		rec.Reason += fmt.Sprintf("; the object answers %d: not deleted", status)
	}
}

var followRelayRE = regexp.MustCompile(`follow-relay/(\w+)`)

// subscriptionReply applies an Accept or Reject to the matching subscription per the flavor's
// matching rules, or marks rec dropped.
func (i *Instance) subscriptionReply(rec *Received, act map[string]any) {
	if i.personFollowReply(rec) {
		return
	}
	objMap, embedded := act["object"].(map[string]any)
	objID := rec.ObjectID
	i.mu.Lock()
	defer i.mu.Unlock()
	var match *subscription
	switch i.flavor {
	case Mastodon:
		for _, s := range i.subs {
			if s.followID == objID {
				match = s
			}
		}
	case Misskey:
		if !embedded {
			drop(rec, "%s object is the IRI %q: Misskey cannot resolve follow-relay ids, the Follow must be embedded", rec.Type, objID)
			return
		}
		m := followRelayRE.FindStringSubmatch(objID)
		if m == nil {
			drop(rec, "%s object id %q does not match follow-relay/(\\w+)", rec.Type, objID)
			return
		}
		if a := idOf(objMap["actor"]); a != i.system.id {
			drop(rec, "embedded Follow's actor %q is not the local relay actor", a)
			return
		}
		for _, s := range i.subs {
			if s.misskeyID == m[1] {
				match = s
			}
		}
	case Pleroma, GoToSocial, Friendica:
		if i.flavor == GoToSocial && rec.ID == "" {
			drop(rec, "%s without id", rec.Type)
			return
		}
		for _, s := range i.subs {
			if s.followID == objID {
				match = s
			}
		}
		if match != nil && rec.Actor != match.relayActor {
			drop(rec, "%s actor %s is not the followed relay actor %s", rec.Type, rec.Actor, match.relayActor)
			return
		}
	}
	if match == nil {
		drop(rec, "%s of %q matches no relay subscription", rec.Type, objID)
		return
	}
	if rec.Type == "Accept" {
		match.state = StateAccepted
	} else {
		match.state = StateRejected
	}
	rec.Reason = fmt.Sprintf("relay subscription %s %s", match.inbox, match.state)
}
