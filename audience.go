package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// isRelayable reports whether the activity goes down the relay path: a
// post, edit, deletion, move or boost, or an un-boost.
func (e *envelope) isRelayable() bool {
	switch e.Type {
	case "Create", "Update", "Delete", "Move", "Announce":
		return true
	}
	return e.isUndoAnnounce()
}

// isUndoAnnounce reports an un-boost: an Undo embedding an Announce.
func (e *envelope) isUndoAnnounce() bool {
	return e.Type == "Undo" && e.Object.Embedded && e.Object.Type == "Announce"
}
