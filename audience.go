package relay

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// visibility is the audience an author chose for a post, as read from its
// addressing.
type visibility int

const (
	// visibilityPrivate: as:Public in neither to nor cc (followers-only,
	// direct, or addressed to a list of actors).
	visibilityPrivate visibility = iota
	// visibilityUnlisted: as:Public in cc only ("unlisted", "quiet public",
	// Misskey's "home"): anyone may see it, but the author asked to keep
	// it out of public timelines.
	visibilityUnlisted
	// visibilityPublic: as:Public in to.
	visibilityPublic
)

// String returns the name Mastodon gives the visibility.
func (v visibility) String() string {
	switch v {
	case visibilityPublic:
		return "public"
	case visibilityUnlisted:
		return "unlisted"
	}
	return "private"
}

// visibilityOf classifies addressing: public when a spelling of as:Public
// is in to, unlisted when it is in cc only, private otherwise.
func visibilityOf(to, cc []string) visibility {
	for _, a := range to {
		if isPublic(a) {
			return visibilityPublic
		}
	}
	for _, a := range cc {
		if isPublic(a) {
			return visibilityUnlisted
		}
	}
	return visibilityPrivate
}

// embeddedObject is what the relay reads of an activity's embedded object
// beyond objectRef: its addressing and publication time.
type embeddedObject struct {
	To, Cc    []string
	Published time.Time
	// Embedded is false when the activity's object is an IRI (or absent):
	// then nothing else is set.
	Embedded bool
}

// visibility returns the visibility of the embedded object's addressing.
func (o embeddedObject) visibility() visibility { return visibilityOf(o.To, o.Cc) }

// parseEmbeddedObject decodes the addressing and published time of the
// object embedded in an activity document. An object given as an IRI gives
// the zero embeddedObject. Malformed addressing is an error wrapping
// errMalformed; an unparseable published time is ignored (left zero).
func parseEmbeddedObject(body []byte) (embeddedObject, error) {
	var raw struct {
		Object json.RawMessage `json:"object"`
	}
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return embeddedObject{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&raw); err != nil {
		return embeddedObject{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if len(raw.Object) == 0 || raw.Object[0] != '{' {
		return embeddedObject{}, nil
	}
	var o struct {
		To        json.RawMessage `json:"to"`
		Cc        json.RawMessage `json:"cc"`
		Published json.RawMessage `json:"published"`
	}
	if err := json.Unmarshal(raw.Object, &o); err != nil {
		return embeddedObject{}, fmt.Errorf("%w: object: %v", errMalformed, err)
	}
	obj := embeddedObject{Embedded: true, Published: parseTime(o.Published)}
	var err error
	if obj.To, err = idList(o.To); err != nil {
		return embeddedObject{}, fmt.Errorf("%w: object to: %v", errMalformed, err)
	}
	if obj.Cc, err = idList(o.Cc); err != nil {
		return embeddedObject{}, fmt.Errorf("%w: object cc: %v", errMalformed, err)
	}
	return obj, nil
}

// parseTime decodes an RFC 3339 time string (fractional seconds allowed),
// or returns the zero time.
func parseTime(m json.RawMessage) time.Time {
	var s string
	if len(m) == 0 || json.Unmarshal(m, &s) != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// relayable reports whether a post of visibility v may be relayed: public
// ones, and unlisted ones when the operator opted in (Config.RelayUnlisted).
func (r *Relay) relayable(v visibility) bool {
	return v == visibilityPublic || v == visibilityUnlisted && r.cfg.RelayUnlisted
}

// checkAudience decides by its audience whether env (whose bytes are body)
// may be relayed, and returns the announced object's published time when
// it learnt one (for the date of the relay's Announce). The audience is
// the narrower of the activity's and its embedded object's (a public
// Create around a followers-only note is the note's); a Tombstone or an
// object without addressing leaves the activity's. For a LitePub relay
// actor's Announce (litePubAnnounce), whose addressing says nothing about
// the post, only the object's audience counts: the embedded one, or the
// one fetched from its origin (see fetchedAudience). An activity whose
// audience is too narrow is accepted without effect (the sender did
// nothing wrong, and must not retry); a malformed object is refused (400).
func (r *Relay) checkAudience(ctx context.Context, env *envelope, body []byte, litePubAnnounce bool) (time.Time, error) {
	obj, err := parseEmbeddedObject(body)
	if err != nil {
		return time.Time{}, refuse(http.StatusBadRequest, "%v", err)
	}
	addressed := obj.Embedded && env.Object.Type != "Tombstone" && len(obj.To)+len(obj.Cc) > 0
	v := visibilityOf(env.To, env.Cc)
	switch {
	case litePubAnnounce && addressed:
		v = obj.visibility()
	case litePubAnnounce:
		if v, obj.Published, err = r.fetchedAudience(ctx, env.Object.ID); err != nil {
			return time.Time{}, err
		}
	case addressed:
		v = min(v, obj.visibility())
	}
	if !r.relayable(v) {
		return time.Time{}, accepted(fmt.Sprintf("%s %s is %s: not relayed", env.Type, cmp.Or(env.ID, env.Object.ID), v))
	}
	return obj.Published, nil
}

// fetchedAudience fetches the object objectID from its origin with the
// relay's signed, guarded fetch, and returns the visibility and published
// time its addressing gives. The fetched document must have objectID as
// its id. A failure that may pass is a 503 for the sender to retry; any
// other is an acceptance without effect: the relay never announces what it
// cannot see.
func (r *Relay) fetchedAudience(ctx context.Context, objectID string) (visibility, time.Time, error) {
	b, err := r.fetch(ctx, objectID)
	if err != nil {
		if transientFetchError(err) {
			return 0, time.Time{}, refuseRetry(http.StatusServiceUnavailable, time.Minute, "fetching the announced object: %v", err)
		}
		return 0, time.Time{}, accepted("announced object cannot be fetched: " + err.Error())
	}
	var doc struct {
		ID        json.RawMessage `json:"id"`
		To        json.RawMessage `json:"to"`
		Cc        json.RawMessage `json:"cc"`
		Published json.RawMessage `json:"published"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, time.Time{}, accepted("announced object " + objectID + " is malformed: " + err.Error())
	}
	id, err := idOf(doc.ID)
	if err != nil || id != objectID {
		return 0, time.Time{}, accepted(fmt.Sprintf("fetched %s, whose id is %q", objectID, id))
	}
	to, errTo := idList(doc.To)
	cc, errCc := idList(doc.Cc)
	if errTo != nil || errCc != nil {
		return 0, time.Time{}, accepted("announced object " + objectID + " has malformed addressing")
	}
	return visibilityOf(to, cc), parseTime(doc.Published), nil
}
