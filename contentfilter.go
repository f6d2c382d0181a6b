package relay

// Content filters: the stage between admission (admit.go, filter.go) and
// routing (route.go) that decides which subscribers get a post, by what
// the post says: hashtags, languages, content warnings, media, replies,
// bot authors, size and age. Global filters (Config.Filters) apply to
// everyone; a subscriber's own FilterSpec (Relay.SetSubscriberFilter) to
// it alone; topic actors (topics.go) route by the same Post.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fedirelay/relay/store"
)

// Post is what content filters know of a post the relay is about to
// route: the activity's fields and, when the relay could read it, its
// object's. Filters receive a *Post they must not modify.
type Post struct {
	// Type is the activity's type: "Create", "Announce" or "Update".
	Type string
	// ActivityID and ObjectID are the ids of the activity and its object.
	ActivityID, ObjectID string
	// Actor is the activity's actor; Author the object's attributedTo (the
	// actor when the object names none).
	Actor, Author string
	// AuthorType is the ActivityStreams type of the author ("Person",
	// "Service", ...), known only when the author's document was read (see
	// Needs): "" otherwise.
	AuthorType string
	// Tags are the object's hashtags, normalised (NormalizeTag), without
	// duplicates.
	Tags []string
	// Languages are the object's languages, lower-cased BCP 47 tags: the
	// keys of contentMap, or its "language".
	Languages []string
	// Sensitive is the object's sensitive flag; Summary its content warning.
	Sensitive bool
	Summary   string
	// HasMedia reports at least one attachment.
	HasMedia bool
	// InReplyTo is the id of the post this one answers, or "".
	InReplyTo string
	// Size is the size of the activity as received, in bytes.
	Size int
	// Published is the object's published time (zero if absent).
	Published time.Time
	// Received is when the relay received the activity (its clock).
	Received time.Time
	// ObjectKnown reports that the object's fields above were read: false
	// for an activity that names its object by id when the object was not
	// fetched (no filter needed it) or could not be fetched.
	ObjectKnown bool
	// AuthorKnown reports that the author's document was read.
	AuthorKnown bool
}

// Needs says what a Filter needs to know of a post beyond its activity.
type Needs uint8

// What filters need.
const (
	// NeedsObject: the object's fields (tags, languages, sensitive, media,
	// replies, published). The relay fetches an object named only by id.
	NeedsObject Needs = 1 << iota
	// NeedsAuthor: the author's document (AuthorType). The relay fetches it.
	NeedsAuthor
)

// Filter decides whether a post may go to a subscriber (as a subscriber's
// filter) or to anyone (in Config.Filters). Allow is called from the inbox
// handler for every post: it must be fast, must not block or do I/O, and
// must be safe for concurrent use.
//
// A Filter may also implement NeedsReporter; one that does not is taken
// to need the object (NeedsObject). When what a filter needs could not be
// read (the object or author could not be fetched), the relay does not
// call it and counts the post as refused by it.
type Filter interface {
	Allow(p *Post) bool
}

// NeedsReporter is implemented by filters that say what they need.
type NeedsReporter interface {
	Needs() Needs
}

// FilterFunc adapts a function to Filter. It needs the object.
type FilterFunc func(p *Post) bool

// Allow calls f.
func (f FilterFunc) Allow(p *Post) bool { return f(p) }

// FilterSet is a list of filters that a post passes when every one allows
// it. The empty set allows everything.
type FilterSet []Filter

// Allow reports whether every filter of s allows p, calling only those
// whose needs p satisfies (see Filter).
func (s FilterSet) Allow(p *Post) bool {
	for _, f := range s {
		if !allowedBy(f, p) {
			return false
		}
	}
	return true
}

// Needs returns the union of what the filters of s need.
func (s FilterSet) Needs() Needs {
	var n Needs
	for _, f := range s {
		n |= needsOf(f)
	}
	return n
}

// needsOf returns what f needs (NeedsObject if it does not say).
func needsOf(f Filter) Needs {
	if nr, ok := f.(NeedsReporter); ok {
		return nr.Needs()
	}
	return NeedsObject
}

// allowedBy reports whether f allows p; a filter whose needs p lacks
// refuses without being called.
func allowedBy(f Filter, p *Post) bool {
	if _, isSet := f.(FilterSet); !isSet {
		n := needsOf(f)
		if (n&NeedsObject != 0 && !p.ObjectKnown) || (n&NeedsAuthor != 0 && !p.AuthorKnown) {
			return false
		}
	}
	return f.Allow(p)
}

// FilterSpec describes a filter in data, so that an operator can set it in
// a configuration file or through the admin API and the relay can keep it
// with a subscription. Every zero field allows everything; the spec allows
// a post when every set field does. Tags are compared normalised
// (NormalizeTag), languages by BCP 47 prefix ("en" matches "en-GB").
type FilterSpec struct {
	// AllowTags: the post has at least one of these hashtags.
	AllowTags []string `json:"allow_tags,omitempty"`
	// DenyTags: the post has none of these hashtags.
	DenyTags []string `json:"deny_tags,omitempty"`
	// RequireTags: the post has every one of these hashtags.
	RequireTags []string `json:"require_tags,omitempty"`
	// Languages: one of the post's languages is one of these. A post that
	// states no language passes only with UnknownLanguage.
	Languages       []string `json:"languages,omitempty"`
	UnknownLanguage bool     `json:"unknown_language,omitempty"`
	// NoSensitive: the post is neither marked sensitive nor has a content
	// warning (summary).
	NoSensitive bool `json:"no_sensitive,omitempty"`
	// Media: "with" (the post has an attachment), "without" (it has none),
	// or "" (either).
	Media string `json:"media,omitempty"`
	// NoReplies: the post answers no other post.
	NoReplies bool `json:"no_replies,omitempty"`
	// NoBots: the author is not a Service or Application actor (the
	// author's document is fetched).
	NoBots bool `json:"no_bots,omitempty"`
	// MaxBytes: the activity is at most this many bytes long as received.
	MaxBytes int `json:"max_bytes,omitempty"`
	// MaxAge: the post was published at most this long ago, in seconds.
	MaxAgeSeconds int64 `json:"max_age_seconds,omitempty"`
	// MaxPostsPerHour is a rate budget, not a filter: at most this many
	// Creates and Announces per hour reach the subscriber (see budget.go).
	// It has no effect in Config.Filters.
	MaxPostsPerHour int `json:"max_posts_per_hour,omitempty"`
}

// IsZero reports whether s sets nothing.
func (s FilterSpec) IsZero() bool {
	return len(s.AllowTags) == 0 && len(s.DenyTags) == 0 && len(s.RequireTags) == 0 &&
		len(s.Languages) == 0 && !s.UnknownLanguage && !s.NoSensitive && s.Media == "" &&
		!s.NoReplies && !s.NoBots && s.MaxBytes == 0 && s.MaxAgeSeconds == 0 && s.MaxPostsPerHour == 0
}

// Errors of FilterSpec.Compile.
var errBadFilter = errors.New("relay: invalid filter")

// Compile checks s and returns the Filter it describes. It returns an
// error wrapping an invalid-filter error for an unknown Media value, a
// negative limit, or a tag or language that normalises to nothing.
func (s FilterSpec) Compile() (Filter, error) {
	f := &specFilter{spec: s}
	var err error
	if f.allow, err = normalizeTags(s.AllowTags); err != nil {
		return nil, err
	}
	if f.deny, err = normalizeTags(s.DenyTags); err != nil {
		return nil, err
	}
	if f.require, err = normalizeTags(s.RequireTags); err != nil {
		return nil, err
	}
	for _, l := range s.Languages {
		code := normalizeLanguage(l)
		if code == "" {
			return nil, fmt.Errorf("%w: language %q", errBadFilter, l)
		}
		f.languages = append(f.languages, code)
	}
	switch s.Media {
	case "", "with", "without":
	default:
		return nil, fmt.Errorf("%w: media must be \"with\", \"without\" or empty, not %q", errBadFilter, s.Media)
	}
	if s.MaxBytes < 0 || s.MaxAgeSeconds < 0 || s.MaxPostsPerHour < 0 {
		return nil, fmt.Errorf("%w: negative limit", errBadFilter)
	}
	if len(f.allow)+len(f.deny)+len(f.require)+len(f.languages) > 0 || s.NoSensitive ||
		s.Media != "" || s.NoReplies || s.MaxAgeSeconds > 0 {
		f.needs |= NeedsObject
	}
	if s.NoBots {
		f.needs |= NeedsAuthor | NeedsObject
	}
	return f, nil
}

func normalizeTags(tags []string) ([]string, error) {
	var out []string
	for _, t := range tags {
		n := NormalizeTag(t)
		if n == "" {
			return nil, fmt.Errorf("%w: tag %q", errBadFilter, t)
		}
		out = append(out, n)
	}
	return out, nil
}

// specFilter is a compiled FilterSpec.
type specFilter struct {
	spec                 FilterSpec
	allow, deny, require []string
	languages            []string
	needs                Needs
}

// Needs implements NeedsReporter.
func (f *specFilter) Needs() Needs { return f.needs }

// Allow implements Filter.
func (f *specFilter) Allow(p *Post) bool {
	s := &f.spec
	switch {
	case len(f.allow) > 0 && !slices.ContainsFunc(f.allow, func(t string) bool { return slices.Contains(p.Tags, t) }):
		return false
	case slices.ContainsFunc(f.deny, func(t string) bool { return slices.Contains(p.Tags, t) }):
		return false
	case slices.ContainsFunc(f.require, func(t string) bool { return !slices.Contains(p.Tags, t) }):
		return false
	case len(f.languages) > 0 && !f.languageMatches(p.Languages):
		return false
	case s.NoSensitive && (p.Sensitive || p.Summary != ""):
		return false
	case s.Media == "with" && !p.HasMedia, s.Media == "without" && p.HasMedia:
		return false
	case s.NoReplies && p.InReplyTo != "":
		return false
	case s.NoBots && isBotType(p.AuthorType):
		return false
	case s.MaxBytes > 0 && p.Size > s.MaxBytes:
		return false
	case s.MaxAgeSeconds > 0 && !p.Published.IsZero() && p.Received.Sub(p.Published) > time.Duration(s.MaxAgeSeconds)*time.Second:
		return false
	}
	return true
}

func (f *specFilter) languageMatches(langs []string) bool {
	if len(langs) == 0 {
		return f.spec.UnknownLanguage
	}
	for _, want := range f.languages {
		for _, l := range langs {
			if l == want || strings.HasPrefix(l, want+"-") {
				return true
			}
		}
	}
	return false
}

// isBotType reports an automated actor type.
func isBotType(t string) bool { return t == "Service" || t == "Application" }

// normalizeLanguage returns a BCP 47 language tag lower-cased with '_'
// read as '-' ("pt_BR" → "pt-br"), or "" if it is not one (2-3 letters,
// "und" excluded, then subtags of 1-8 letters or digits).
func normalizeLanguage(s string) string {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "_", "-"))
	parts := strings.Split(s, "-")
	if len(parts[0]) < 2 || len(parts[0]) > 3 || s == "und" {
		return ""
	}
	for i, p := range parts {
		if len(p) == 0 || len(p) > 8 {
			return ""
		}
		for _, c := range p {
			if !(c >= 'a' && c <= 'z') && !(i > 0 && c >= '0' && c <= '9') {
				return ""
			}
		}
	}
	return s
}

// postObject is the part of a post's object that filters read.
type postObject struct {
	ID           json.RawMessage            `json:"id"`
	Type         json.RawMessage            `json:"type"`
	AttributedTo json.RawMessage            `json:"attributedTo"`
	Tag          json.RawMessage            `json:"tag"`
	ContentMap   map[string]json.RawMessage `json:"contentMap"`
	Language     json.RawMessage            `json:"language"`
	Sensitive    json.RawMessage            `json:"sensitive"`
	Summary      json.RawMessage            `json:"summary"`
	Attachment   json.RawMessage            `json:"attachment"`
	InReplyTo    json.RawMessage            `json:"inReplyTo"`
	Published    json.RawMessage            `json:"published"`
}

// readObject fills p's object fields from the JSON object doc and sets
// ObjectKnown. Fields of unexpected shapes are left empty.
func (p *Post) readObject(doc []byte) error {
	var o postObject
	if err := json.Unmarshal(doc, &o); err != nil {
		return err
	}
	if a, err := idOf(o.AttributedTo); err == nil && a != "" {
		p.Author = a
	} else if o.AttributedTo != nil && o.AttributedTo[0] == '[' {
		if l, err := idList(o.AttributedTo); err == nil && len(l) > 0 {
			p.Author = l[0]
		}
	}
	p.Tags = readTags(o.Tag)
	p.Languages = nil
	for k := range o.ContentMap {
		if l := normalizeLanguage(k); l != "" && !slices.Contains(p.Languages, l) {
			p.Languages = append(p.Languages, l)
		}
	}
	slices.Sort(p.Languages)
	if len(p.Languages) == 0 && len(o.Language) > 0 {
		var s string
		var obj struct {
			Identifier string `json:"identifier"`
		}
		if json.Unmarshal(o.Language, &s) != nil && json.Unmarshal(o.Language, &obj) == nil {
			s = obj.Identifier
		}
		if l := normalizeLanguage(s); l != "" {
			p.Languages = []string{l}
		}
	}
	var sensitive bool
	p.Sensitive = json.Unmarshal(o.Sensitive, &sensitive) == nil && sensitive
	var summary string
	if json.Unmarshal(o.Summary, &summary) == nil {
		p.Summary = strings.TrimSpace(summary)
	}
	att := strings.TrimSpace(string(o.Attachment))
	p.HasMedia = att != "" && att != "null" && att != "[]"
	if id, err := idOf(o.InReplyTo); err == nil {
		p.InReplyTo = id
	}
	p.Published = parseTime(o.Published)
	p.ObjectKnown = true
	return nil
}

// readTags returns the normalised names of the Hashtag entries of a tag
// property (one object or an array), without duplicates, sorted.
func readTags(m json.RawMessage) []string {
	list, err := oneOrMany(m)
	if err != nil {
		return nil
	}
	var tags []string
	for _, item := range list {
		var t struct {
			Type json.RawMessage `json:"type"`
			Name string          `json:"name"`
		}
		if json.Unmarshal(item, &t) != nil {
			continue
		}
		typ, _ := typeOf(t.Type)
		if typ != "Hashtag" && !(typ == "" && strings.HasPrefix(t.Name, "#")) {
			continue
		}
		if n := NormalizeTag(t.Name); n != "" && !slices.Contains(tags, n) {
			tags = append(tags, n)
		}
	}
	slices.Sort(tags)
	return tags
}

// SetSubscriberFilter sets the content filter and rate budget of the
// subscriber actorID; a zero spec removes them. The spec is kept with the
// subscription in the store (store.Subscriber.Filter), so it survives
// restarts and is shared by processes using the store. It returns an
// error matching ErrNotSubscribed if there is no such subscriber, and an error wrapping
// the reason for an invalid spec (see FilterSpec.Compile).
func (r *Relay) SetSubscriberFilter(ctx context.Context, actorID string, spec FilterSpec) error {
	if _, err := spec.Compile(); err != nil {
		return err
	}
	text := ""
	if !spec.IsZero() {
		b, err := json.Marshal(spec)
		if err != nil {
			return err
		}
		text = string(b)
	}
	_, err := r.store.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber, found bool) error {
		if !found {
			return fmt.Errorf("%w: %s", ErrNotSubscribed, actorID)
		}
		s.Filter = text
		s.UpdatedAt = r.now().UTC()
		return nil
	})
	return err
}

// SubscriberFilter returns the filter of the subscriber actorID (zero if
// it has none), or an error matching ErrNotSubscribed.
func (r *Relay) SubscriberFilter(ctx context.Context, actorID string) (FilterSpec, error) {
	s, err := r.store.GetSubscriber(ctx, actorID)
	if errors.Is(err, store.ErrNotFound) {
		return FilterSpec{}, fmt.Errorf("%w: %s", ErrNotSubscribed, actorID)
	}
	if err != nil {
		return FilterSpec{}, err
	}
	var spec FilterSpec
	if s.Filter != "" {
		if err := json.Unmarshal([]byte(s.Filter), &spec); err != nil {
			return FilterSpec{}, fmt.Errorf("relay: stored filter of %s: %w", actorID, err)
		}
	}
	return spec, nil
}
