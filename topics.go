package relay

// Topic actors: besides the relay actor, the relay serves one actor per
// topic, created on first use: P/tag/{tag}, P/language/{code} and
// P/instance/{host}. Instances follow them as they follow the relay actor
// (Mastodon style, a Follow of as:Public sent to the topic's inbox;
// LitePub style, a Follow of the topic actor, answered with a follow-back)
// and so do persons (a Follow of the topic actor by a Person), who get an
// Announce of each matching post, one per server. Posts come from every
// subscriber of any actor into one pool; routing (select.go) gives each
// follower the posts of its topics.
//
// Every topic actor publishes the relay's public key under its own keyId
// (actor#main-key): one key pair serves all actors, so a topic costs no
// key generation and no storage until someone follows it. Deliveries of a
// topic are signed with the topic actor's keyId (store.Delivery.Signer),
// because Mastodon accepts relayed posts only from the actor whose inbox
// its admin entered.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vocab "github.com/go-ap/activitypub"

	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
)

// TopicConfig configures topic actors. Its zero value offers every topic.
type TopicConfig struct {
	// Disabled switches topic actors off: their routes answer 404 and
	// nothing is routed to topic followers.
	Disabled bool
	// Allow, if not empty, lists the only topics that exist, as
	// "tag/cats", "language/en" or "instance/example.org" (normalised like
	// the URLs: see NormalizeTag). Block lists topics that do not exist.
	Allow []string
	Block []string
	// MinFollowers is how many accepted followers a topic needs before it
	// relays anything (it can be followed before). 0 or 1: no minimum.
	MinFollowers int
	// MaxPostsPerHour caps what each topic follower (per delivery inbox)
	// receives: at most this many Creates and Announces per hour; Updates,
	// Deletes and Moves always go through. 0: no cap.
	MaxPostsPerHour int
}

// Topic kinds, the first segment of a topic key and of its actor's path.
const (
	topicTag      = "tag"
	topicLanguage = "language"
	topicInstance = "instance"
)

// canonicalTopic returns the key ("tag/cats") of the topic of kind with the
// given value, normalised, or "" if there is no such topic.
func canonicalTopic(kind, value string) string {
	var v string
	switch kind {
	case topicTag:
		v = NormalizeTag(value)
	case topicLanguage:
		v = normalizeLanguage(value)
	case topicInstance:
		v, _ = canonicalHost("https", strings.TrimSpace(value)) // "" if it is no host
	}
	if v == "" {
		return ""
	}
	return kind + "/" + v
}

// parseTopicKey normalises a key given as "kind/value", or returns "".
func parseTopicKey(key string) string {
	kind, value, ok := strings.Cut(key, "/")
	if !ok {
		return ""
	}
	return canonicalTopic(kind, value)
}

// topicExists reports whether the operator offers the topic key.
func (r *Relay) topicExists(key string) bool {
	t := &r.cfg.Topics
	if t.Disabled || key == "" || slices.Contains(t.Block, key) {
		return false
	}
	return len(t.Allow) == 0 || slices.Contains(t.Allow, key)
}

// normalizeTopicList normalises Allow and Block (New calls it).
func normalizeTopicList(keys []string) ([]string, error) {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		n := parseTopicKey(k)
		if n == "" {
			return nil, fmt.Errorf("relay: topic %q is not tag/…, language/… or instance/…", k)
		}
		out = append(out, n)
	}
	return out, nil
}

// topicActorID returns the id of the actor of the topic key.
func (r *Relay) topicActorID(key string) string {
	kind, value, _ := strings.Cut(key, "/")
	return r.base.String() + "/" + kind + "/" + url.PathEscape(value)
}

// topicOfActor returns the key of the topic whose actor id is id, or "".
func (r *Relay) topicOfActor(id string) string {
	rest, ok := strings.CutPrefix(id, r.base.String()+"/")
	if !ok {
		return ""
	}
	kind, value, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(value, "/") {
		return ""
	}
	v, err := url.PathUnescape(value)
	if err != nil {
		return ""
	}
	key := canonicalTopic(kind, v)
	if key == "" || r.topicActorID(key) != id {
		return "" // only the canonical id names the actor
	}
	return key
}

// topicOfInboxPath returns the topic whose inbox (the actor URL, or the
// actor URL + "/inbox", in any form that normalises to it) has the
// escaped request path p, or "".
func (r *Relay) topicOfInboxPath(p string) string {
	rest, ok := strings.CutPrefix(p, r.prefix+"/")
	if !ok {
		return ""
	}
	kind, value, ok := strings.Cut(strings.TrimSuffix(rest, "/inbox"), "/")
	if !ok || strings.Contains(value, "/") {
		return ""
	}
	v, err := url.PathUnescape(value)
	if err != nil {
		return ""
	}
	return canonicalTopic(kind, v)
}

// TopicFollower is a follow of a topic actor.
type TopicFollower struct {
	// Topic is the topic's key, such as "tag/cats".
	Topic string `json:"topic"`
	// Actor is the follower's actor id; Host its host.
	Actor string `json:"actor"`
	Host  string `json:"host"`
	// Kind is how it follows: "mastodon" (an instance following as:Public
	// at the topic's inbox), "litepub" (an instance actor following the
	// topic actor: the topic actor follows back) or "person".
	Kind string `json:"kind"`
	// Inbox and SharedInbox are the follower's; deliveries go to the shared
	// inbox when there is one.
	Inbox       string `json:"inbox"`
	SharedInbox string `json:"shared_inbox,omitempty"`
	// FollowID is the follower's Follow; FollowBackID the topic actor's
	// reciprocal Follow (litepub only) and FollowBackState its answer.
	FollowID        string      `json:"follow_id"`
	FollowBackID    string      `json:"follow_back_id,omitempty"`
	FollowBackState store.State `json:"follow_back_state,omitempty"`
	// State is pending, accepted or rejected.
	State     store.State `json:"state"`
	CreatedAt time.Time   `json:"created_at"`
}

// Kinds of TopicFollower.
const (
	followerMastodon = "mastodon"
	followerLitePub  = "litepub"
	followerPerson   = "person"
)

func (f *TopicFollower) deliveryInbox() string {
	if f.SharedInbox != "" {
		return f.SharedInbox
	}
	return f.Inbox
}

// topicValuePrefix prefixes the store values that hold topic followers.
const topicValuePrefix = "topics/followers/"

// topicValueKey returns the store key of the follow of topic by actor.
func topicValueKey(topic, actor string) string {
	sum := sha256.Sum256([]byte(topic + "\n" + actor))
	return topicValuePrefix + hex.EncodeToString(sum[:16])
}

// topicRegistry holds the topic followers in memory, with an index
// (topicView) that the inbox reads without locking.
type topicRegistry struct {
	mu        sync.Mutex // serialises changes (and a follow's read-modify-write)
	followers map[string]*TopicFollower
	view      atomic.Pointer[topicView]
}

// topicView indexes the accepted followers. It is never modified once
// published.
type topicView struct {
	byTopic      map[string][]*TopicFollower // accepted, by actor
	byHost       map[string][]*TopicFollower // accepted instances
	byFollowBack map[string]*TopicFollower
	all          []*TopicFollower // accepted
	// contentTopics reports an accepted follower of a tag or language
	// topic: routing then needs the post's object.
	contentTopics bool
}

func (t *topicRegistry) current() *topicView {
	if v := t.view.Load(); v != nil {
		return v
	}
	return &topicView{}
}

// rebuild publishes a new view of t.followers. t.mu is held.
func (t *topicRegistry) rebuild() {
	v := &topicView{byTopic: map[string][]*TopicFollower{}, byHost: map[string][]*TopicFollower{}, byFollowBack: map[string]*TopicFollower{}}
	for _, f := range t.followers {
		if f.FollowBackID != "" {
			v.byFollowBack[f.FollowBackID] = f
		}
		if f.State != store.StateAccepted {
			continue
		}
		v.byTopic[f.Topic] = append(v.byTopic[f.Topic], f)
		v.all = append(v.all, f)
		if f.Kind != followerPerson {
			v.byHost[f.Host] = append(v.byHost[f.Host], f)
		}
		if !strings.HasPrefix(f.Topic, topicInstance+"/") {
			v.contentTopics = true
		}
	}
	byActor := func(a, b *TopicFollower) int {
		return cmp.Or(strings.Compare(a.Actor, b.Actor), strings.Compare(a.Topic, b.Topic))
	}
	for _, l := range v.byTopic {
		slices.SortFunc(l, byActor)
	}
	for _, l := range v.byHost {
		slices.SortFunc(l, byActor)
	}
	slices.SortFunc(v.all, byActor)
	t.view.Store(v)
}

// loadTopics reads the topic followers from the store (New, and every
// policy refresh, so that processes sharing a store see each other's).
func (r *Relay) loadTopics(ctx context.Context) error {
	r.topics.mu.Lock() // no follow is saved between the read and the swap
	defer r.topics.mu.Unlock()
	vals, err := r.store.ListValues(ctx, topicValuePrefix)
	if err != nil {
		return fmt.Errorf("relay: loading topic followers: %w", err)
	}
	m := make(map[string]*TopicFollower, len(vals))
	for k, v := range vals {
		var f TopicFollower
		if err := json.Unmarshal(v, &f); err != nil {
			r.log.Warn("relay: ignoring unreadable topic follower", "key", k, "err", err)
			continue
		}
		m[k] = &f
	}
	r.topics.followers = m
	r.topics.rebuild()
	return nil
}

// saveTopicFollower stores f (nil deletes the follow of topic by actor)
// and updates the index. r.topics.mu is held.
func (r *Relay) saveTopicFollower(ctx context.Context, topic, actor string, f *TopicFollower) error {
	key := topicValueKey(topic, actor)
	if f == nil {
		if err := r.store.DeleteValue(ctx, key); err != nil {
			return err
		}
		delete(r.topics.followers, key)
	} else {
		b, err := json.Marshal(f)
		if err != nil {
			return err
		}
		if err := r.store.PutValue(ctx, key, b); err != nil {
			return err
		}
		if r.topics.followers == nil {
			r.topics.followers = map[string]*TopicFollower{}
		}
		r.topics.followers[key] = f
	}
	r.topics.rebuild()
	return nil
}

// TopicFollowers returns the follows of topic actors, of every state,
// ordered by topic and actor. It reads the relay's index, not the store.
func (r *Relay) TopicFollowers() []TopicFollower {
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	out := make([]TopicFollower, 0, len(r.topics.followers))
	for _, f := range r.topics.followers {
		out = append(out, *f)
	}
	slices.SortFunc(out, func(a, b TopicFollower) int { return strings.Compare(a.Topic+" "+a.Actor, b.Topic+" "+b.Actor) })
	return out
}

// topicSenders returns the accepted instance follows of topics on host as
// subscriptions, so that admission (admitSender) lets an instance that
// follows only topics publish all its public posts. subs are the host's
// subscriptions of the relay actor: an actor refused there is left out.
func (r *Relay) topicSenders(host string, subs []store.Subscriber) []store.Subscriber {
	if r.cfg.Topics.Disabled {
		return nil
	}
	fs := r.topics.current().byHost[host]
	out := make([]store.Subscriber, 0, len(fs))
	for _, f := range fs {
		if s := subscriberWithActor(subs, f.Actor); s != nil && s.State == store.StateRejected {
			continue
		}
		proto := store.ProtocolLitePub
		if f.Kind == followerMastodon {
			proto = store.ProtocolMastodon
		}
		out = append(out, store.Subscriber{
			ActorID: f.Actor, Host: f.Host, Protocol: proto, State: store.StateAccepted,
			Inbox: f.Inbox, SharedInbox: f.SharedInbox, SignatureScheme: store.SignatureCavage,
		})
	}
	return out
}

// signerFor returns the signer of deliveries by actor: the relay actor's
// for "", else the topic actor's keyId with the shared key.
func (r *Relay) signerFor(actor string) *httpsig.Signer {
	if actor == "" || actor == r.actorID {
		return r.signer
	}
	return &httpsig.Signer{KeyID: actor + "#main-key", Key: r.signer.Key}
}

// topicInboxGone ends the follows of topics delivered to inbox, which
// answered 410 Gone to a topic actor's delivery.
func (r *Relay) topicInboxGone(ctx context.Context, inbox string) {
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	var gone []*TopicFollower
	for _, f := range r.topics.followers {
		if f.deliveryInbox() == inbox {
			gone = append(gone, f)
		}
	}
	for _, f := range gone {
		r.log.Info("relay: topic follower gone, removing it", "topic", f.Topic, "actor", f.Actor, "inbox", inbox)
		if err := r.saveTopicFollower(ctx, f.Topic, f.Actor, nil); err != nil {
			r.log.Error("relay: removing gone topic follower", "actor", f.Actor, "err", err)
			return
		}
	}
}

// --- routes and documents ------------------------------------------------

// topicRoutes registers the topic actors' routes on mux.
func (r *Relay) topicRoutes(mux *http.ServeMux) {
	p := r.prefix
	for _, kind := range []string{topicTag, topicLanguage, topicInstance} {
		base := p + "/" + kind + "/{value}"
		mux.HandleFunc("GET "+base, r.serveTopicActor)
		mux.HandleFunc("POST "+base, r.serveTopicInbox)
		mux.HandleFunc("POST "+base+"/inbox", r.serveTopicInbox)
		for _, c := range []string{"followers", "following", "outbox"} {
			mux.HandleFunc("GET "+base+"/"+c, r.serveTopicCollection)
		}
	}
}

// requestTopic returns the topic a request's path names, and whether the
// path names it in its canonical form.
func (r *Relay) requestTopic(req *http.Request) (key string, canonical bool) {
	kind := strings.TrimPrefix(req.URL.Path, r.prefix+"/")
	kind, _, _ = strings.Cut(kind, "/")
	key = canonicalTopic(kind, req.PathValue("value"))
	if !r.topicExists(key) {
		return "", false
	}
	want := r.prefix + strings.TrimPrefix(r.topicActorID(key), r.base.String())
	return key, strings.HasPrefix(req.URL.EscapedPath(), want) &&
		(len(req.URL.EscapedPath()) == len(want) || req.URL.EscapedPath()[len(want)] == '/')
}

func (r *Relay) serveTopicActor(w http.ResponseWriter, req *http.Request) {
	key, canonical := r.requestTopic(req)
	switch {
	case key == "":
		http.NotFound(w, req)
		return
	case !canonical:
		http.Redirect(w, req, r.topicActorID(key), http.StatusPermanentRedirect)
		return
	}
	b, err := marshalDoc(r.topicActorDocument(key), true)
	writeDoc(w, r, activityJSON, b, err)
}

func (r *Relay) serveTopicCollection(w http.ResponseWriter, req *http.Request) {
	if key, _ := r.requestTopic(req); key == "" {
		http.NotFound(w, req)
		return
	}
	r.serveEmptyCollection(w, req)
}

// serveTopicInbox takes POSTs to a topic actor (its URL is its inbox, as
// buzzrelay's are) or to actor + "/inbox": the relay's inbox, which reads
// the topic from the path (receive).
func (r *Relay) serveTopicInbox(w http.ResponseWriter, req *http.Request) {
	if key, _ := r.requestTopic(req); key == "" {
		http.NotFound(w, req)
		return
	}
	r.serveInbox(w, req)
}

// topicUsername is the preferredUsername (and WebFinger name) of a topic
// actor: "tag.cats", "language.en", "instance.example.org". A value
// outside ASCII is written "x-" and its UTF-8 in hex ("tag.x-e78cab" for
// #猫), since Misskey refuses actors whose names are not ASCII word
// characters.
func topicUsername(key string) string {
	kind, value, _ := strings.Cut(key, "/")
	for _, c := range value {
		if c > 0x7f {
			return kind + ".x-" + hex.EncodeToString([]byte(value))
		}
	}
	return kind + "." + value
}

// topicOfUsername returns the topic key of a topic actor's username, or "".
func topicOfUsername(user string) string {
	kind, value, _ := strings.Cut(user, ".")
	if h, ok := strings.CutPrefix(value, "x-"); ok {
		if b, err := hex.DecodeString(h); err == nil {
			value = string(b)
		}
	}
	return canonicalTopic(strings.ToLower(kind), value)
}

// topicActorDocument builds the actor of a topic.
func (r *Relay) topicActorDocument(key string) vocab.Item {
	id := r.topicActorID(key)
	kind, value, _ := strings.Cut(key, "/")
	a := vocab.ActorNew(vocab.IRI(id), vocab.ApplicationType)
	a.PreferredUsername = vocab.DefaultNaturalLanguageValue(topicUsername(key))
	var name string
	switch kind {
	case topicTag:
		name = "#" + value
	case topicLanguage:
		name = "Posts in " + value
	case topicInstance:
		name = "Posts from " + value
	}
	a.Name = vocab.DefaultNaturalLanguageValue(name)
	a.Summary = vocab.DefaultNaturalLanguageValue(name + ", relayed by " + r.cfg.Name + ". Instances follow it as a relay (the actor URL is its inbox); anyone may follow it to get an Announce of each post.")
	a.URL = vocab.IRI(id)
	a.Inbox = vocab.IRI(id)
	// Mastodon accepts relayed posts from the relay whose inbox its admin
	// entered, Misskey from one whose inbox or shared inbox it is: both
	// forms work for Misskey, the actor URL for Mastodon.
	a.Endpoints = &vocab.Endpoints{SharedInbox: vocab.IRI(id + "/inbox")}
	a.Outbox = vocab.IRI(id + "/outbox")
	a.Followers = vocab.IRI(id + "/followers")
	a.Following = vocab.IRI(id + "/following")
	a.PublicKey = vocab.PublicKey{ID: vocab.ID(id + "#main-key"), Owner: vocab.IRI(id), PublicKeyPem: r.pubPEM}
	return a
}

// topicWebFinger answers WebFinger for acct:tag.cats@host and topic actor
// URLs.
func (r *Relay) topicWebFinger(resource string) (JRD, bool) {
	key := r.topicOfActor(resource)
	if key == "" {
		acct := strings.TrimPrefix(resource, "acct:")
		user, host, ok := strings.Cut(acct, "@")
		if !ok || (!strings.EqualFold(host, r.base.Hostname()) && !strings.EqualFold(host, r.base.Host)) {
			return JRD{}, false
		}
		key = topicOfUsername(user)
	}
	if !r.topicExists(key) {
		return JRD{}, false
	}
	id := r.topicActorID(key)
	return JRD{
		Subject: "acct:" + topicUsername(key) + "@" + r.acctHost(),
		Aliases: []string{id},
		Links:   []JRDLink{{Rel: "self", Type: activityJSON, Href: id}},
	}, true
}

// addTopicsNodeInfo adds the topics to NodeInfo metadata: whether topic
// actors are offered and the topics that have followers.
func (r *Relay) addTopicsNodeInfo(meta map[string]any) {
	followed := []string{}
	if !r.cfg.Topics.Disabled {
		for k := range r.topics.current().byTopic {
			if r.topicExists(k) {
				followed = append(followed, k)
			}
		}
	}
	slices.Sort(followed)
	meta["topics"] = map[string]any{"enabled": !r.cfg.Topics.Disabled, "followed": followed}
}

// topicsIndexText is what the relay's index page says of topics.
func (r *Relay) topicsIndexText() string {
	if r.cfg.Topics.Disabled {
		return ""
	}
	b := r.base.String()
	return "\nTopic relays: subscribe with, or follow, " + b + "/tag/{hashtag}, " + b + "/language/{code} or " +
		b + "/instance/{host}\n(for Mastodon, the actor URL itself: " + b + "/tag/cats).\n"
}

// --- following -------------------------------------------------------------

// followedTopic returns the topic a Follow is for: its object is a topic
// actor, or it follows as:Public at a topic's inbox. "" for the relay actor.
func (r *Relay) followedTopic(env *envelope) string {
	if key := r.topicOfActor(env.Object.ID); key != "" {
		return key
	}
	if isPublic(env.Object.ID) {
		return env.inboxTopic
	}
	return ""
}

// handleTopicFollow processes a Follow of a topic: stored first, then
// answered by the topic actor (Accept, Reject, or nothing while pending),
// with a follow-back for an instance following LitePub style. Instances
// are decided by the FollowPolicy (FollowRequest.Topic set), and refused
// if the relay actor refused them; persons only receive, and are accepted.
// A repeated Follow is answered again; a refused follower stays refused.
func (r *Relay) handleTopicFollow(ctx context.Context, env *envelope, signer *remoteActor, topic string) error {
	if !r.topicExists(topic) {
		return refuse(http.StatusNotFound, "no topic %s here", topic)
	}
	if signer.Inbox == "" {
		return refuse(http.StatusBadRequest, "actor %s has no inbox", env.Actor)
	}
	if foreign := signer.foreignInbox(); foreign != "" {
		// Nothing is sent off the actor's origin (see rejectForeignInbox).
		return refuse(http.StatusForbidden, "inbox %s is not on the actor's origin", foreign)
	}
	if r.guard.blocked.blockedURL(env.Actor) {
		return refuse(http.StatusForbidden, "%s is on a blocked domain", hostOf(env.Actor))
	}
	kind := followerLitePub
	switch {
	case isPublic(env.Object.ID):
		kind = followerMastodon
	case signer.Type == "Person":
		kind = followerPerson
	}
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	old := r.topics.followers[topicValueKey(topic, env.Actor)]
	f := &TopicFollower{
		Topic: topic, Actor: env.Actor, Host: hostOf(env.Actor), Kind: kind,
		Inbox: signer.Inbox, SharedInbox: signer.SharedInbox, FollowID: env.ID,
		State: store.StateAccepted, CreatedAt: r.now().UTC(),
	}
	if old != nil {
		f.CreatedAt, f.FollowBackID, f.FollowBackState = old.CreatedAt, old.FollowBackID, old.FollowBackState
	}
	mainSub, err := r.store.GetSubscriber(ctx, env.Actor)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	switch {
	case old != nil && old.State == store.StateRejected:
		f.State = store.StateRejected
	case err == nil && mainSub.State == store.StateRejected && kind != followerPerson:
		// Refused by the relay actor, refused by its topics: an instance
		// following a topic may publish.
		f.State = store.StateRejected
	case old != nil && old.State == store.StateAccepted, kind == followerPerson:
	default:
		proto := store.ProtocolLitePub
		if kind == followerMastodon {
			proto = store.ProtocolMastodon
		}
		decision, _ := r.policy(ctx, FollowRequest{
			Actor: env.Actor, ActorType: signer.Type, Host: f.Host, Protocol: proto, FollowID: env.ID, Topic: topic,
		})
		switch decision {
		case DecisionReject:
			f.State = store.StateRejected
		case DecisionPending:
			f.State = store.StatePending
		}
	}
	var followBack []byte
	if kind == followerLitePub && f.State == store.StateAccepted && f.FollowBackID == "" {
		var err error
		if followBack, f.FollowBackID, err = r.topicFollowBack(topic, env.Actor); err != nil {
			return err
		}
		f.FollowBackState = store.StatePending
	}
	if err := r.saveTopicFollower(ctx, topic, env.Actor, f); err != nil {
		return err
	}
	r.log.Info("relay: topic follow", "topic", topic, "actor", f.Actor, "kind", f.Kind, "state", f.State)
	return r.sendTopicDecision(ctx, f, followBack)
}

// sendTopicDecision queues the topic actor's answer to f's Follow.
func (r *Relay) sendTopicDecision(ctx context.Context, f *TopicFollower, followBack []byte) error {
	typ := vocab.AcceptType
	switch f.State {
	case store.StateAccepted:
	case store.StateRejected:
		typ = vocab.RejectType
	default:
		return nil
	}
	actor := r.topicActorID(f.Topic)
	followed := actor
	if f.Kind == followerMastodon {
		followed = PublicCollection
	}
	reply, err := r.actorFollowReply(actor, typ, f.FollowID, f.Actor, followed, "")
	if err != nil {
		return err
	}
	b := newBatch(r)
	b.addAs(store.Payload{ID: payloadID(reply), Body: reply}, f.deliveryInbox(), actor, string(typ))
	if followBack != nil {
		b.addAs(store.Payload{ID: payloadID(followBack), Body: followBack}, f.deliveryInbox(), actor, "Follow")
	}
	return b.enqueue(ctx)
}

// ApproveTopicFollower accepts a pending (or refused) follow of topic by
// actorID, and RefuseTopicFollower refuses one: the follower gets an
// Accept (with a follow-back for a LitePub instance) or a Reject. They
// return ErrNotSubscribed if there is no such follow.
func (r *Relay) ApproveTopicFollower(ctx context.Context, topic, actorID string) error {
	return r.decideTopicFollower(ctx, topic, actorID, store.StateAccepted)
}

// RefuseTopicFollower: see ApproveTopicFollower.
func (r *Relay) RefuseTopicFollower(ctx context.Context, topic, actorID string) error {
	return r.decideTopicFollower(ctx, topic, actorID, store.StateRejected)
}

func (r *Relay) decideTopicFollower(ctx context.Context, topic, actorID string, state store.State) error {
	topic = parseTopicKey(topic)
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	old := r.topics.followers[topicValueKey(topic, actorID)]
	if old == nil {
		return ErrNotSubscribed
	}
	f := *old
	f.State = state
	var followBack []byte
	if state == store.StateAccepted && f.Kind == followerLitePub && f.FollowBackID == "" {
		var err error
		if followBack, f.FollowBackID, err = r.topicFollowBack(topic, actorID); err != nil {
			return err
		}
		f.FollowBackState = store.StatePending
	}
	if err := r.saveTopicFollower(ctx, topic, actorID, &f); err != nil {
		return err
	}
	return r.sendTopicDecision(ctx, &f, followBack)
}

// handleTopicUndo ends a follow of a topic when the follower undoes its
// Follow (embedded, or by id). It reports false when the Undo is not about
// a topic follow, for handleUndo to process.
func (r *Relay) handleTopicUndo(ctx context.Context, env *envelope) (bool, error) {
	o := env.Object
	if o.Embedded && o.Type != "Follow" {
		return false, nil
	}
	topic := ""
	if o.Embedded {
		topic = r.topicOfActor(o.Object)
		if topic == "" && isPublic(o.Object) {
			topic = env.inboxTopic
		}
	}
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	var f *TopicFollower
	if topic != "" {
		f = r.topics.followers[topicValueKey(topic, env.Actor)]
	} else if o.ID != "" {
		for _, c := range r.topics.followers {
			if c.Actor == env.Actor && c.FollowID == o.ID {
				f = c
			}
		}
	}
	if f == nil {
		if topic != "" || env.inboxTopic != "" {
			return true, accepted("undo of an unknown topic follow")
		}
		return false, nil
	}
	if o.ID != f.FollowID && (o.ID != "" || !o.Embedded || o.Actor != env.Actor) {
		return true, accepted("undo of follow " + o.ID + ", which is not the current topic follow")
	}
	if f.State == store.StateRejected {
		return true, accepted("undo from a refused topic follower")
	}
	if err := r.saveTopicFollower(ctx, f.Topic, f.Actor, nil); err != nil {
		return true, err
	}
	r.log.Info("relay: topic unfollowed", "topic", f.Topic, "actor", f.Actor)
	if f.FollowBackID == "" || f.FollowBackState == store.StateRejected {
		return true, nil
	}
	actor := r.topicActorID(f.Topic)
	undo, err := r.actorUndoFollow(actor, f.FollowBackID, f.Actor)
	if err != nil {
		return true, err
	}
	b := newBatch(r)
	b.addAs(store.Payload{ID: payloadID(undo), Body: undo}, f.deliveryInbox(), actor, "Undo")
	return true, b.enqueue(ctx)
}

// handleTopicFollowBackReply records an instance's answer to a topic
// actor's follow-back. It reports false when the object is no topic
// actor's Follow.
func (r *Relay) handleTopicFollowBackReply(ctx context.Context, env *envelope) (bool, error) {
	f := r.topics.current().byFollowBack[env.Object.ID]
	if f == nil || env.Object.ID == "" {
		return false, nil
	}
	if f.Actor != env.Actor {
		return true, accepted(env.Type + " of another actor's follow")
	}
	r.topics.mu.Lock()
	defer r.topics.mu.Unlock()
	cur := r.topics.followers[topicValueKey(f.Topic, f.Actor)]
	if cur == nil || cur.FollowBackID != env.Object.ID {
		return true, accepted(env.Type + " of an unknown follow")
	}
	next := *cur
	next.FollowBackState = store.StateAccepted
	if env.Type == "Reject" {
		next.FollowBackState = store.StateRejected
	}
	return true, r.saveTopicFollower(ctx, f.Topic, f.Actor, &next)
}

// --- activities by topic actors -----------------------------------------------

// actorFollowReply builds the Accept or Reject by actor of a Follow, the
// Follow embedded with its id byte-identical (see followReply).
func (r *Relay) actorFollowReply(actor string, typ vocab.ActivityVocabularyType, followID, follower, followed, reason string) ([]byte, error) {
	follow := vocab.FollowNew(vocab.ID(followID), vocab.IRI(followed))
	follow.Actor = vocab.IRI(follower)
	reply := vocab.ActivityNew(vocab.ID(r.newID()), typ, follow)
	reply.Actor = vocab.IRI(actor)
	reply.To = vocab.ItemCollection{vocab.IRI(follower)}
	if reason != "" {
		reply.Summary = vocab.DefaultNaturalLanguageValue(reason)
	}
	return marshalDoc(reply, false)
}

// topicFollowBack builds a topic actor's reciprocal Follow of a LitePub
// instance actor.
func (r *Relay) topicFollowBack(topic, follower string) ([]byte, string, error) {
	id := r.newID()
	f := vocab.FollowNew(vocab.ID(id), vocab.IRI(follower))
	f.Actor = vocab.IRI(r.topicActorID(topic))
	f.To = vocab.ItemCollection{vocab.IRI(follower)}
	b, err := marshalDoc(f, false)
	return b, id, err
}

// actorUndoFollow builds the Undo by actor of its Follow followID.
func (r *Relay) actorUndoFollow(actor, followID, followed string) ([]byte, error) {
	f := vocab.FollowNew(vocab.ID(followID), vocab.IRI(followed))
	f.Actor = vocab.IRI(actor)
	u := vocab.UndoNew(vocab.ID(r.newID()), f)
	u.Actor = vocab.IRI(actor)
	u.To = vocab.ItemCollection{vocab.IRI(followed)}
	return marshalDoc(u, false)
}

// topicRecipient is one follower a post goes to, and the topic actor it
// goes out as.
type topicRecipient struct {
	f     *TopicFollower
	actor string
}
