package relaytest

import (
	"fmt"
	"time"
)

// What an Instance keeps of what it accepted: the remote statuses it holds (so that an edit can
// be seen to arrive, or not) and the boosts it applied (so that an un-boost can be seen to
// remove one). Each flavor fills them the way the real server does (inbox.go).

// Visibility is the audience an author chooses for a post.
type Visibility int

const (
	// Public: to as:Public, cc the author's followers. Shown in public timelines.
	Public Visibility = iota
	// Unlisted: to the author's followers, cc as:Public ("quiet public", Misskey's "home").
	// Anyone may see it, but the author asked to keep it out of public timelines.
	Unlisted
	// FollowersOnly: to the author's followers, nothing else.
	FollowersOnly
)

// String returns the visibility's name.
func (v Visibility) String() string {
	switch v {
	case Public:
		return "public"
	case Unlisted:
		return "unlisted"
	case FollowersOnly:
		return "followers-only"
	}
	return fmt.Sprintf("Visibility(%d)", int(v))
}

// addressing returns to and cc of a post by author with visibility v.
func (v Visibility) addressing(author string) (to, cc []any) {
	followers := author + "/followers"
	switch v {
	case Unlisted:
		return []any{followers}, []any{publicIRI}
	case FollowersOnly:
		return []any{followers}, []any{}
	}
	return []any{publicIRI}, []any{followers}
}

// boost is an Announce the instance applied: a reblog (Mastodon, Pleroma, GoToSocial) or a
// renote (Misskey) by actor of object.
type boost struct {
	actor, object string
}

// Status returns the copy the instance holds of the remote status id: the last version it
// fetched or accepted (a Create, an applied Update, the object of an Announce). It reports false
// for a status it never got or has deleted. Use it to check that an edit arrived.
func (i *Instance) Status(id string) ([]byte, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	b, ok := i.statuses[id]
	return b, ok
}

// HasBoost reports whether the instance applied the Announce announceID (it shows a boost, or
// for Misskey a renote, of the announced status) and has not undone it since.
func (i *Instance) HasBoost(announceID string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	_, ok := i.boosts[announceID]
	return ok
}

func (i *Instance) keepStatus(id string, doc []byte) {
	if id == "" {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.statuses[id] = doc
}

func (i *Instance) hasStatus(id string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	_, ok := i.statuses[id]
	return ok
}

func (i *Instance) forgetStatus(id string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	_, ok := i.statuses[id]
	delete(i.statuses, id)
	return ok
}

// addBoost records an applied Announce; it reports false if that Announce was applied already.
func (i *Instance) addBoost(id, actor, object string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	if _, ok := i.boosts[id]; ok {
		return false
	}
	i.boosts[id] = boost{actor: actor, object: object}
	return true
}

// hasBoostBy reports whether actor has a boost of object applied (Pleroma refuses a second
// Announce of an object by the same actor).
func (i *Instance) hasBoostBy(actor, object string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, b := range i.boosts {
		if b.actor == actor && b.object == object {
			return true
		}
	}
	return false
}

// removeBoost undoes the Announce id if actor made it, and says why not otherwise.
func (i *Instance) removeBoost(id, actor string) (bool, string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	b, ok := i.boosts[id]
	switch {
	case !ok:
		return false, "no such Announce " + id
	case b.actor != actor:
		return false, fmt.Sprintf("Announce %s was made by %s, not by %s", id, b.actor, actor)
	}
	delete(i.boosts, id)
	return true, ""
}

// undoAnnounce applies an Undo of an Announce: the Announce is the Undo's object, embedded or by
// id, and must have been applied with the Undo's actor as its actor.
func (i *Instance) undoAnnounce(rec *Received, act map[string]any) {
	announceID := rec.ObjectID
	if m, ok := act["object"].(map[string]any); ok {
		if a := idOf(m["actor"]); a != rec.Actor {
			drop(rec, "Undo by %s of an Announce by %s", rec.Actor, a)
			return
		}
	}
	if ok, why := i.removeBoost(announceID, rec.Actor); !ok {
		drop(rec, "Undo of Announce: %s", why)
		return
	}
	rec.Reason = "Undo of Announce " + announceID + ": boost removed"
}

// publishedOf parses an RFC 3339 "published" (fractional seconds allowed).
func publishedOf(doc map[string]any) (time.Time, bool) {
	s, _ := doc["published"].(string)
	t, err := time.Parse(time.RFC3339, s)
	return t, err == nil
}
