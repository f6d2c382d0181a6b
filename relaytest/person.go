package relaytest

import (
	"context"
	"fmt"
	"strings"
)

// Posts with content, follows by persons and profiles: what topic relays
// and content filters look at.

// PostOptions adds content to a note published with PostWith.
type PostOptions struct {
	// Tags are hashtags (with or without '#'): Hashtag entries in the
	// note's tag property (name "#tag", href <base>/tags/<tag>), and links
	// in its content.
	Tags []string
	// Language is the note's language: the contentMap key (Mastodon,
	// Pleroma, GoToSocial) or, for Misskey, which sends no contentMap, a
	// "language" property. Empty: Mastodon's "en", no language for the others.
	Language string
	// Sensitive marks the note sensitive; Summary is its content warning.
	Sensitive bool
	Summary   string
	// Media attaches one image.
	Media bool
	// InReplyTo makes the note a reply to that object id.
	InReplyTo string
}

// apply adds o to a rendered note.
func (o PostOptions) apply(i *Instance, note map[string]any) {
	if len(o.Tags) > 0 {
		var tags []any
		content, _ := note["content"].(string)
		content = strings.TrimSuffix(content, "</p>")
		for _, t := range o.Tags {
			name := strings.TrimPrefix(t, "#")
			href := i.base + "/tags/" + strings.ToLower(name)
			tags = append(tags, map[string]any{"type": "Hashtag", "name": "#" + name, "href": href})
			content += ` <a href="` + href + `" class="mention hashtag" rel="tag">#<span>` + name + `</span></a>`
		}
		note["tag"] = tags
		note["content"] = content + "</p>"
	}
	if o.Language != "" {
		if i.flavor == Misskey {
			note["language"] = o.Language
		} else {
			note["contentMap"] = map[string]any{o.Language: note["content"]}
		}
	}
	if o.Sensitive {
		note["sensitive"] = true
	}
	if o.Summary != "" {
		note["summary"] = o.Summary
	}
	if o.Media {
		note["attachment"] = []any{map[string]any{
			"type": "Document", "mediaType": "image/png", "url": i.base + "/media/" + newUUID() + ".png", "name": "a picture",
		}}
	}
	if o.InReplyTo != "" {
		note["inReplyTo"] = o.InReplyTo
	}
}

// PostWith publishes a note like Post, with the content o describes.
func (i *Instance) PostWith(ctx context.Context, relayInbox, user, text string, o PostOptions) (*Note, error) {
	return i.publish(ctx, relayInbox, user, text, Public, o)
}

// SetProfile sets extra properties of the actor document of user (created
// on demand), such as "summary" or "indexable"; a nil value removes one.
func (i *Instance) SetProfile(user string, props map[string]any) error {
	a, err := i.user(user)
	if err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if a.profile == nil {
		a.profile = map[string]any{}
	}
	for k, v := range props {
		if v == nil {
			delete(a.profile, k)
		} else {
			a.profile[k] = v
		}
	}
	return nil
}

// personFollow is a follow of a remote actor by a local user.
type personFollow struct {
	user, target, followID string
	accepted               bool
}

// Follow makes the local user (created on demand) follow the remote actor
// target, as a person does: a Follow signed by the user, sent to target's
// inbox. It returns the Follow's id. The follow is accepted when an Accept
// of it arrives (see Follows); from then on Mastodon takes Announces by
// target, as it takes those of actors its users follow.
func (i *Instance) Follow(ctx context.Context, user, target string) (string, error) {
	a, err := i.user(user)
	if err != nil {
		return "", err
	}
	ra, err := i.remoteActorFor(ctx, target)
	if err != nil {
		return "", err
	}
	f := &personFollow{user: a.id, target: target, followID: fmt.Sprintf("%s#follows/%d", a.id, i.next())}
	i.mu.Lock()
	i.follows = append(i.follows, f)
	i.mu.Unlock()
	follow := map[string]any{"@context": asContext, "id": f.followID, "type": "Follow", "actor": a.id, "object": target}
	return f.followID, i.deliver(ctx, ra.inbox, a, follow)
}

// Follows reports whether the local user's follow of target was accepted.
func (i *Instance) Follows(user, target string) bool {
	id := i.ActorID(user)
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, f := range i.follows {
		if f.user == id && f.target == target && f.accepted {
			return true
		}
	}
	return false
}

// followedByLocal reports whether a local user follows actor (accepted).
func (i *Instance) followedByLocal(actor string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, f := range i.follows {
		if f.target == actor && f.accepted {
			return true
		}
	}
	return false
}

// personFollowReply applies an Accept or Reject by the followed actor of
// a local user's follow, and reports whether rec was one.
func (i *Instance) personFollowReply(rec *Received) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, f := range i.follows {
		if f.followID == rec.ObjectID && f.target == rec.Actor {
			f.accepted = rec.Type == "Accept"
			rec.Reason = "follow of " + f.target + " by " + f.user + ": " + rec.Type
			return true
		}
	}
	return false
}

// Unfollow undoes the local user's follow of target: an Undo embedding the
// Follow, signed by the user, sent to target's inbox.
func (i *Instance) Unfollow(ctx context.Context, user, target string) error {
	a, err := i.user(user)
	if err != nil {
		return err
	}
	var f *personFollow
	i.mu.Lock()
	for k, c := range i.follows {
		if c.user == a.id && c.target == target {
			f = c
			i.follows = append(i.follows[:k], i.follows[k+1:]...)
			break
		}
	}
	i.mu.Unlock()
	if f == nil {
		return fmt.Errorf("relaytest: %s does not follow %s", user, target)
	}
	ra, err := i.remoteActorFor(ctx, target)
	if err != nil {
		return err
	}
	undo := map[string]any{
		"@context": asContext, "id": fmt.Sprintf("%s#follows/%d/undo", a.id, i.next()), "type": "Undo", "actor": a.id,
		"object": map[string]any{"id": f.followID, "type": "Follow", "actor": a.id, "object": target},
	}
	return i.deliver(ctx, ra.inbox, a, undo)
}
