package relay

// Selection, the content stage between admission and routing: which of
// the subscribers (and topic followers) get a post, by global filters
// (Config.Filters), subscribers' own filters and rate budgets, authors'
// opt-outs and topics. Routing (route.go) then builds the deliveries.

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"

	"github.com/fedirelay/relay/store"
)

// selection is the outcome of selectRecipients for one activity.
type selection struct {
	// skip marks, by index in the fan-out's subscriber list, those that do
	// not get the activity; nil when all do.
	skip []bool
	// topics are the topic followers that get it, in a stable order.
	topics []topicRecipient
	// charge lists the budget keys to charge once the fan-out is stored.
	charge []string
}

// skips reports whether the i-th subscriber does not get the activity.
func (s *selection) skips(i int) bool { return s != nil && s.skip != nil && s.skip[i] }

func (s *selection) skipSub(i, n int) {
	if s.skip == nil {
		s.skip = make([]bool, n)
	}
	s.skip[i] = true
}

// subscriberFilter is a subscriber's compiled FilterSpec, cached by actor
// while its stored text is the same.
type subscriberFilter struct {
	text   string
	filter Filter // nil: no filter, only a budget (or an unreadable spec)
	budget int
}

// subscriberFilters caches compiled subscriber filters by actor id.
type subscriberFilters struct{ m sync.Map }

func (c *subscriberFilters) get(r *Relay, s *store.Subscriber) *subscriberFilter {
	if v, ok := c.m.Load(s.ActorID); ok && v.(*subscriberFilter).text == s.Filter {
		return v.(*subscriberFilter)
	}
	sf := &subscriberFilter{text: s.Filter}
	var spec FilterSpec
	if err := json.Unmarshal([]byte(s.Filter), &spec); err != nil {
		r.log.Warn("relay: unreadable subscriber filter: ignored", "actor", s.ActorID, "err", err)
	} else if f, err := spec.Compile(); err != nil {
		r.log.Warn("relay: invalid subscriber filter: ignored", "actor", s.ActorID, "err", err)
	} else {
		sf.budget = spec.MaxPostsPerHour
		spec.MaxPostsPerHour = 0
		if !spec.IsZero() {
			sf.filter = f
		}
	}
	c.m.Store(s.ActorID, sf)
	return sf
}

// selectRecipients decides who gets env among subs (the accepted
// subscribers of the relay actor, as fanOut lists them) and the topic
// followers. Deletes and Moves go to everyone, topic followers included;
// un-boosts to every subscriber and to the followers of the topics of the
// boosted post.
// Creates, Announces and Updates pass the global filters (else the
// activity is accepted and relayed to nobody), then each subscriber's own
// filter, and Creates and Announces each recipient's budget; they go to
// the followers of every topic they match. The post's object is read from
// the activity, or fetched when something needs it and the activity names
// it by id (at most KeyFetchTimeout, with the author's document); if it
// cannot be fetched, filters that need it refuse, so the post goes to the
// unfiltered subscribers only.
func (r *Relay) selectRecipients(ctx context.Context, env *envelope, body []byte, objectID string, subs []store.Subscriber) (*selection, error) {
	sel := &selection{}
	view := r.topics.current()
	topicsOn := !r.cfg.Topics.Disabled && len(view.all) > 0
	switch env.Type {
	case "Undo":
		if !topicsOn || !env.isUndoAnnounce() || env.Object.Object == "" {
			return sel, nil
		}
		// An un-boost goes to every subscriber, and to the followers of the
		// topics its boost went to: those of the boosted post, read again
		// (cached, as a rule, since the boost), as for the boost.
		boost, err := r.selectRecipients(ctx, &envelope{Type: "Announce", Actor: env.Actor}, nil, env.Object.Object, subs)
		if err != nil {
			return nil, err
		}
		sel.topics = boost.topics
		return sel, nil
	case "Delete", "Move":
		if topicsOn {
			for _, f := range view.all {
				if r.topicExists(f.Topic) {
					sel.topics = append(sel.topics, topicRecipient{f: f, actor: r.topicActorID(f.Topic)})
				}
			}
		}
		return sel, nil
	case "Create", "Announce", "Update":
	default:
		return sel, nil
	}
	needs := r.cfg.Filters.Needs()
	if r.cfg.OptOuts.Main {
		needs |= NeedsAuthor | NeedsObject
	}
	filtered := false
	for i := range subs {
		if subs[i].Filter != "" {
			filtered = true
			if f := r.subFilters.get(r, &subs[i]).filter; f != nil {
				needs |= needsOf(f)
			}
		}
	}
	if topicsOn && view.contentTopics {
		needs |= NeedsObject
	}
	if needs == 0 && !filtered && !topicsOn {
		return sel, nil // the fast path: nothing to decide
	}

	ctx, cancel := context.WithTimeout(ctx, r.cfg.KeyFetchTimeout)
	defer cancel()
	p := r.readPost(ctx, env, body, objectID, needs&NeedsObject != 0)
	var who *author
	readAuthor := func() *author {
		if who == nil {
			if p.Author == "" && !p.ObjectKnown && objectID != "" {
				// A boost or a relay's Announce names its author in the
				// object only.
				p = r.readPost(ctx, env, body, objectID, true)
			}
			who = &author{}
			if a, ok := r.readAuthor(ctx, p); ok {
				*who = a
			} else {
				who.OptedOut = true // unknown: honoured as an opt-out
			}
		}
		return who
	}
	if needs&NeedsAuthor != 0 {
		readAuthor()
	}
	if len(r.cfg.Filters) > 0 && !r.cfg.Filters.Allow(p) {
		return nil, accepted("refused by a content filter")
	}
	if r.cfg.OptOuts.Main && readAuthor().OptedOut {
		return nil, accepted("the author opted out of relays")
	}

	now := r.now()
	isPost := env.isPost()
	for i := range subs {
		s := &subs[i]
		if s.Filter == "" {
			continue
		}
		sf := r.subFilters.get(r, s)
		switch {
		case sf.filter != nil && !allowedBy(sf.filter, p):
			sel.skipSub(i, len(subs))
		case sf.budget > 0 && isPost:
			if r.budgets.allows(s.ActorID, sf.budget, now) {
				sel.charge = append(sel.charge, s.ActorID)
			} else {
				sel.skipSub(i, len(subs))
			}
		}
	}

	if topicsOn {
		r.selectTopics(sel, view, p, objectID, isPost, readAuthor)
	}
	return sel, nil
}

// selectTopics adds the followers of the topics p matches to sel: its
// hashtags, its languages (and their primary language) and its object's
// instance, among the topics that exist and have enough followers, unless
// the author opted out (see optout.go).
func (r *Relay) selectTopics(sel *selection, view *topicView, p *Post, objectID string, isPost bool, readAuthor func() *author) {
	var keys []string
	if h, err := canonicalHost("https", hostOf(objectID)); err == nil {
		keys = append(keys, topicInstance+"/"+h)
	}
	for _, t := range p.Tags {
		keys = append(keys, topicTag+"/"+t)
	}
	for _, l := range p.Languages {
		keys = append(keys, topicLanguage+"/"+l)
		if primary, _, ok := strings.Cut(l, "-"); ok {
			keys = append(keys, topicLanguage+"/"+primary)
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	min := r.cfg.Topics.MinFollowers
	var matched []string
	for _, k := range keys {
		if fs := view.byTopic[k]; len(fs) > 0 && len(fs) >= min && r.topicExists(k) {
			matched = append(matched, k)
		}
	}
	if len(matched) == 0 {
		return
	}
	if !r.cfg.OptOuts.IgnoreForTopics && readAuthor().OptedOut {
		r.log.Debug("relay: not relayed to topics: the author opted out or is unknown", "object", objectID, "author", p.Author)
		return
	}
	budget := r.cfg.Topics.MaxPostsPerHour
	now := r.now()
	for _, k := range matched {
		actor := r.topicActorID(k)
		for _, f := range view.byTopic[k] {
			if budget > 0 && isPost {
				key := "topic " + f.deliveryInbox()
				if !r.budgets.allows(key, budget, now) {
					continue
				}
				sel.charge = append(sel.charge, key)
			}
			sel.topics = append(sel.topics, topicRecipient{f: f, actor: actor})
		}
	}
}

// readPost builds the Post of env: the object's fields read from the
// activity when it embeds an object of the actor's origin, else fetched
// when fetch is set (a failure leaves ObjectKnown false, logged at debug).
func (r *Relay) readPost(ctx context.Context, env *envelope, body []byte, objectID string, fetch bool) *Post {
	p := &Post{
		Type: env.Type, ActivityID: env.ID, ObjectID: objectID, Actor: env.Actor,
		Size: len(body), Received: r.now(),
	}
	if env.Type != "Announce" {
		p.Author = env.Actor
	}
	if env.Object.Embedded && sameOrigin(objectID, env.Actor) {
		var a struct {
			Object json.RawMessage `json:"object"`
		}
		if err := json.Unmarshal(body, &a); err == nil && p.readObject(a.Object) == nil {
			if p.Author != "" && !sameOrigin(p.Author, objectID) {
				p.Author = "" // an author of another origin than the object is not believed
			}
			return p
		}
	}
	if !fetch || objectID == "" {
		return p
	}
	doc, err := r.fetchDoc(ctx, objectID)
	if err == nil {
		err = p.readObject(doc)
	}
	if err != nil {
		p.ObjectKnown = false
		r.log.Debug("relay: object not readable: relayed to unfiltered subscribers only", "object", objectID, "err", err)
		return p
	}
	if p.Author != "" && !sameOrigin(p.Author, objectID) {
		p.Author = "" // an author of another origin than the object is not believed
	}
	return p
}

// readAuthor fetches and reads the author of p.
func (r *Relay) readAuthor(ctx context.Context, p *Post) (author, bool) {
	if p.Author == "" {
		return author{}, false
	}
	doc, err := r.fetchDoc(ctx, p.Author)
	var a author
	if err == nil {
		a, err = parseAuthor(doc)
	}
	if err != nil {
		r.log.Debug("relay: author not readable", "author", p.Author, "err", err)
		return author{}, false
	}
	p.AuthorType, p.AuthorKnown = a.Type, true
	return a, true
}
