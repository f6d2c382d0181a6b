package relay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"net/http"
	"strings"
	"time"

	vocab "github.com/go-ap/activitypub"
	"github.com/go-ap/jsonld"

	"github.com/fedirelay/relay/store"
)

// Content types the relay serves.
const (
	activityJSON = "application/activity+json"
	jrdJSON      = "application/jrd+json"
)

// Handler returns the http.Handler that serves every route of the relay.
// With P the path of Config.BaseURL ("" at the root), the routes are:
//
//	GET  P/actor                  the relay actor (see Config.Username, ActorType)
//	POST P/inbox                  the inbox (also the actor's sharedInbox)
//	GET  P/actor/followers        empty collections: subscribers are not listed
//	GET  P/actor/following
//	GET  P/actor/outbox
//	GET  P/nodeinfo/2.0           NodeInfo documents
//	GET  P/nodeinfo/2.1
//	GET  P/{$}                    the status page: HTML for browsers, JSON
//	                              with ?format=json or Accept: application/json,
//	                              plain text otherwise (see PublicStatus)
//	GET  P/status.css             the status page's style sheet and icon
//	GET  P/favicon.svg
//	GET  /.well-known/webfinger   acct:Username@host and the actor URL
//	GET  /.well-known/nodeinfo    links to P/nodeinfo/2.1 and 2.0
//	GET  /.well-known/host-meta   the WebFinger template
//
// Mount it at the root, or route P/ and the three /.well-known/ paths to it
// from your own mux. A server that answers /.well-known/ itself, or runs
// several relays on one host, answers for the relay with Relay.WebFinger,
// Relay.NodeInfoLinks and Relay.HostMeta instead. The handler never
// registers anything globally and serves all GETs without requiring a
// signature.
func (r *Relay) Handler() http.Handler { return r.handler }

func (r *Relay) routes() http.Handler {
	mux := http.NewServeMux()
	p := r.prefix
	mux.HandleFunc("GET "+p+"/actor", r.serveActor)
	mux.HandleFunc("POST "+p+"/inbox", r.serveInbox)
	for _, c := range []string{"followers", "following", "outbox"} {
		mux.HandleFunc("GET "+p+"/actor/"+c, r.serveEmptyCollection)
	}
	mux.HandleFunc("GET "+p+"/nodeinfo/{version}", r.serveNodeInfo)
	mux.HandleFunc("GET "+p+"/{$}", r.serveIndex)
	mux.HandleFunc("GET "+p+"/status.css", serveCSS)
	mux.HandleFunc("GET "+p+"/favicon.svg", serveIcon)
	mux.HandleFunc("GET /.well-known/webfinger", r.serveWebFinger)
	mux.HandleFunc("GET /.well-known/nodeinfo", r.serveNodeInfoLinks)
	mux.HandleFunc("GET /.well-known/host-meta", r.serveHostMeta)
	r.topicRoutes(mux)
	return mux
}

// marshalDoc serialises one of the relay's own documents with the
// ActivityStreams (and, when security is set, security/v1) context.
func marshalDoc(it vocab.Item, security bool) ([]byte, error) {
	ctx := []jsonld.Collapsible{jsonld.IRI(vocab.ActivityBaseURI)}
	if security {
		ctx = append(ctx, jsonld.IRI(vocab.SecurityContextURI))
	}
	return jsonld.WithContext(ctx...).Marshal(it)
}

// actorDocument builds the relay actor.
func (r *Relay) actorDocument() vocab.Item {
	a := vocab.ActorNew(vocab.IRI(r.actorID), vocab.ActivityVocabularyType(r.cfg.ActorType))
	a.PreferredUsername = vocab.DefaultNaturalLanguageValue(r.cfg.Username)
	a.Name = vocab.DefaultNaturalLanguageValue(r.cfg.Name)
	if r.cfg.Summary != "" {
		a.Summary = vocab.DefaultNaturalLanguageValue(r.cfg.Summary)
	}
	a.URL = vocab.IRI(r.base.String() + "/")
	a.Inbox = vocab.IRI(r.inboxURL)
	a.Outbox = vocab.IRI(r.actorID + "/outbox")
	a.Followers = vocab.IRI(r.actorID + "/followers")
	a.Following = vocab.IRI(r.actorID + "/following")
	a.Endpoints = &vocab.Endpoints{SharedInbox: vocab.IRI(r.inboxURL)}
	a.PublicKey = vocab.PublicKey{
		ID:           vocab.ID(r.keyID),
		Owner:        vocab.IRI(r.actorID),
		PublicKeyPem: r.pubPEM,
	}
	return a
}

func (r *Relay) serveActor(w http.ResponseWriter, _ *http.Request) {
	b, err := marshalDoc(r.actorDocument(), true)
	writeDoc(w, r, activityJSON, b, err)
}

// serveEmptyCollection answers followers, following and outbox with an
// empty OrderedCollection: Pleroma and Misskey expect them to exist, and
// listing subscribers would expose them.
func (r *Relay) serveEmptyCollection(w http.ResponseWriter, req *http.Request) {
	c := vocab.OrderedCollectionNew(vocab.ID(r.base.Scheme + "://" + r.base.Host + req.URL.Path))
	b, err := marshalDoc(c, false)
	writeDoc(w, r, activityJSON, b, err)
}

// JRD is a JSON Resource Descriptor, the WebFinger response format.
type JRD struct {
	Subject string    `json:"subject"`
	Aliases []string  `json:"aliases,omitempty"`
	Links   []JRDLink `json:"links"`
}

// JRDLink is one link of a JRD, or of an XRD (host-meta) in XML.
type JRDLink struct {
	Rel      string `json:"rel" xml:"rel,attr"`
	Type     string `json:"type,omitempty" xml:"type,attr,omitempty"`
	Href     string `json:"href,omitempty" xml:"href,attr,omitempty"`
	Template string `json:"template,omitempty" xml:"template,attr,omitempty"`
}

// WebFinger answers a WebFinger query for the relay actor: resource may be
// acct:<Username>@<host> (with or without the port of BaseURL; the user
// part in any case) or the actor URL. The subject is
// acct:<Username>@<host>, with the port when BaseURL has one other than
// its scheme's default (as Mastodon names accounts of a server on a port),
// so a client that queries the subject again reaches this relay. It
// answers for topic actors too (acct:tag.cats@<host>, or the actor URL;
// see topics.go), and reports false for any other resource. Servers that
// run their own WebFinger endpoint, or several relays on one host, call it
// to answer for each relay.
func (r *Relay) WebFinger(resource string) (JRD, bool) {
	hostname, user := r.base.Hostname(), strings.ToLower(r.cfg.Username)
	switch strings.ToLower(resource) {
	case "acct:" + user + "@" + hostname, "acct:" + user + "@" + r.base.Host,
		user + "@" + hostname, user + "@" + r.base.Host, strings.ToLower(r.actorID):
	default:
		return r.topicWebFinger(resource)
	}
	return JRD{
		Subject: "acct:" + r.cfg.Username + "@" + r.acctHost(),
		Aliases: []string{r.actorID},
		Links: []JRDLink{
			{Rel: "self", Type: activityJSON, Href: r.actorID},
			{Rel: "http://webfinger.net/rel/profile-page", Type: "text/html", Href: r.base.String() + "/"},
		},
	}, true
}

func (r *Relay) serveWebFinger(w http.ResponseWriter, req *http.Request) {
	resource := req.URL.Query().Get("resource")
	if resource == "" {
		http.Error(w, "relay: missing resource parameter", http.StatusBadRequest)
		return
	}
	jrd, ok := r.WebFinger(resource)
	if !ok {
		http.Error(w, "relay: unknown resource", http.StatusNotFound)
		return
	}
	b, err := json.Marshal(jrd)
	writeDoc(w, r, jrdJSON, b, err)
}

// HostMeta is a host-meta document (RFC 6415): an XRD in XML, its
// Links marshalled as Link elements, or a JRD in JSON (host-meta.json).
type HostMeta struct {
	XMLName xml.Name  `json:"-" xml:"http://docs.oasis-open.org/ns/xri/xrd-1.0 XRD"`
	Links   []JRDLink `json:"links" xml:"Link"`
}

// XML returns m as the XML document served at /.well-known/host-meta.
func (m HostMeta) XML() ([]byte, error) {
	b, err := xml.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append([]byte(xml.Header), append(b, '\n')...), nil
}

// HostMeta returns the relay's host-meta document: one lrdd link with the
// template of the host's WebFinger endpoint, which old clients use to
// find it. A server that serves host-meta itself adds the relay's links
// it does not have yet (a server with WebFinger usually has this one).
func (r *Relay) HostMeta() HostMeta {
	root := r.base.Scheme + "://" + r.base.Host
	return HostMeta{Links: []JRDLink{
		{Rel: "lrdd", Type: "application/xrd+xml", Template: root + "/.well-known/webfinger?resource={uri}"},
	}}
}

func (r *Relay) serveHostMeta(w http.ResponseWriter, _ *http.Request) {
	b, err := r.HostMeta().XML()
	writeDoc(w, r, "application/xrd+xml; charset=utf-8", b, err)
}

const nodeInfoSchema = "http://nodeinfo.diaspora.software/ns/schema/"

// NodeInfoLinks returns the links /.well-known/nodeinfo lists for the
// relay: its NodeInfo 2.1 and 2.0 documents (served by Relay.Handler at
// BaseURL + "/nodeinfo/2.1" and "/2.0") and its actor. A server that
// answers /.well-known/nodeinfo itself appends them to its own links, as
// {"links": [...]}: clients take the first link of the schema they want,
// so the server's own documents, listed first, keep describing the host,
// and the relay's stay reachable at their URLs.
func (r *Relay) NodeInfoLinks() []JRDLink {
	return []JRDLink{
		{Rel: nodeInfoSchema + "2.1", Href: r.base.String() + "/nodeinfo/2.1"},
		{Rel: nodeInfoSchema + "2.0", Href: r.base.String() + "/nodeinfo/2.0"},
		{Rel: "https://www.w3.org/ns/activitystreams#" + r.cfg.ActorType, Href: r.actorID},
	}
}

func (r *Relay) serveNodeInfoLinks(w http.ResponseWriter, _ *http.Request) {
	b, err := json.Marshal(struct {
		Links []JRDLink `json:"links"`
	}{r.NodeInfoLinks()})
	writeDoc(w, r, "application/json", b, err)
}

// NodeInfoDocument is a NodeInfo 2.0 or 2.1 document. Software.Repository
// and Homepage exist only in 2.1 (2.0 forbids additional properties);
// Metadata is free-form.
type NodeInfoDocument struct {
	Version  string `json:"version"`
	Software struct {
		Name       string `json:"name"`
		Version    string `json:"version"`
		Repository string `json:"repository,omitempty"`
		Homepage   string `json:"homepage,omitempty"`
	} `json:"software"`
	Protocols []string `json:"protocols"`
	Services  struct {
		Inbound  []string `json:"inbound"`
		Outbound []string `json:"outbound"`
	} `json:"services"`
	OpenRegistrations bool `json:"openRegistrations"`
	Usage             struct {
		Users struct {
			Total          int `json:"total"`
			ActiveMonth    int `json:"activeMonth"`
			ActiveHalfyear int `json:"activeHalfyear"`
		} `json:"users"`
	} `json:"usage"`
	Metadata map[string]any `json:"metadata"`
}

// ErrNodeInfoVersion is returned by Relay.NodeInfo for a version other
// than "2.0" and "2.1".
var ErrNodeInfoVersion = errors.New("relay: unknown NodeInfo version")

// NodeInfo returns the relay's NodeInfo document of version "2.0" or
// "2.1", as Relay.Handler serves it: software fedirelay, the accepted
// subscribers as users, openRegistrations false when
// Config.ApprovalRequired, Name and Summary as metadata nodeName and
// nodeDescription, the policy metadata (see nodeInfoPolicies) and the
// topics. It reads the subscribers from the store: an error
// reading them is returned with the document, whose user counts are then
// 0. A server that describes the host in its own NodeInfo can take
// fields from it (marshal it with encoding/json; Metadata may be changed,
// the map is the caller's).
func (r *Relay) NodeInfo(ctx context.Context, version string) (NodeInfoDocument, error) {
	if version != "2.0" && version != "2.1" {
		return NodeInfoDocument{}, ErrNodeInfoVersion
	}
	n := NodeInfoDocument{Version: version, Protocols: []string{"activitypub"}, OpenRegistrations: !r.cfg.ApprovalRequired}
	n.Software.Name = "fedirelay"
	n.Software.Version = Version
	if version == "2.1" {
		n.Software.Repository = "https://github.com/fedirelay/relay"
	}
	n.Services.Inbound, n.Services.Outbound = []string{}, []string{}
	n.Metadata = map[string]any{"nodeName": r.cfg.Name}
	if r.cfg.Summary != "" {
		n.Metadata["nodeDescription"] = r.cfg.Summary
	}
	r.nodeInfoPolicies(ctx, n.Metadata)
	r.addTopicsNodeInfo(n.Metadata)
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
	if err != nil {
		return n, wrapf(err, "nodeinfo: listing subscribers")
	}
	u := &n.Usage.Users
	u.Total, u.ActiveMonth, u.ActiveHalfyear = len(subs), len(subs), len(subs)
	return n, nil
}

func (r *Relay) serveNodeInfo(w http.ResponseWriter, req *http.Request) {
	version := req.PathValue("version")
	n, err := r.NodeInfo(req.Context(), version)
	if errors.Is(err, ErrNodeInfoVersion) {
		http.NotFound(w, req)
		return
	}
	if err != nil {
		r.log.Error("relay: nodeinfo", "err", err)
	}
	b, err := json.Marshal(n)
	writeDoc(w, r, `application/json; profile="`+nodeInfoSchema+version+`#"`, b, err)
}

// writeDoc writes a document, or a 500 if building it failed.
func writeDoc(w http.ResponseWriter, r *Relay, contentType string, body []byte, err error) {
	if err != nil {
		r.log.Error("relay: building document", "err", err)
		http.Error(w, "relay: internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "max-age=300")
	_, _ = w.Write(body)
}

// relayedAnnounce builds the Announce of rel.objectID by the relay actor
// that LitePub subscribers (and Mastodon-style ones, for activities without
// an LD signature) receive for the incoming activity env (see announceID).
// It is addressed as the post is: to as:Public and cc the relay's
// followers, or, for an unlisted post relayed on the operator's opt-in,
// the other way round, so that receivers keep it out of public timelines
// too (GoToSocial refuses an Announce without to/cc). Its published time
// is announceTime(r.now(), env.Published, rel.objectPublished); a time
// more than Config.ClockSkew ahead of the relay's clock is not believed.
func (r *Relay) relayedAnnounce(env *envelope, rel relayable) ([]byte, string, error) {
	id := r.announceID(env, rel.objectID)
	b, err := r.announceBy(r.actorID, id, env, rel)
	return b, id, err
}

// announceBy builds the Announce with id id of rel.objectID by actor
// (the relay actor or a topic actor), addressed and dated as
// relayedAnnounce says.
func (r *Relay) announceBy(actor, id string, env *envelope, rel relayable) ([]byte, error) {
	a := vocab.AnnounceNew(vocab.ID(id), vocab.IRI(rel.objectID))
	a.Actor = vocab.IRI(actor)
	public, followers := vocab.ItemCollection{vocab.IRI(PublicCollection)}, vocab.ItemCollection{vocab.IRI(actor + "/followers")}
	a.To, a.CC = public, followers
	if rel.visibility == visibilityUnlisted {
		a.To, a.CC = followers, public
	}
	b, err := marshalDoc(a, false)
	if err != nil {
		return nil, err
	}
	now := r.now()
	var believed []time.Time
	for _, t := range []time.Time{env.Published, rel.objectPublished} {
		if t.Sub(now) <= r.cfg.ClockSkew {
			believed = append(believed, t)
		}
	}
	return withPublished(b, announceTime(now, believed...)), nil
}

// announceTime returns the published time of a relay Announce: now, or
// the latest of notBefore if that is later (the origin's clock may be
// ahead of the relay's), rounded up to the millisecond. Misskey drops an
// Announce dated before the note it announces ("skip: malformed
// createdAt"), comparing at millisecond precision, so the time is never
// earlier than any of notBefore.
func announceTime(now time.Time, notBefore ...time.Time) time.Time {
	t := now
	for _, nb := range notBefore {
		if nb.After(t) {
			t = nb
		}
	}
	t = t.UTC().Round(0)
	if ms := t.Truncate(time.Millisecond); !ms.Equal(t) {
		t = ms.Add(time.Millisecond)
	}
	return t
}

// announceTimeLayout is RFC 3339 with exactly three fractional digits, as
// Mastodon and Misskey write times.
const announceTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// withPublished adds "published": t (announceTimeLayout) to the JSON
// object doc, which must not have one: go-ap writes times in whole seconds
// only.
func withPublished(doc []byte, t time.Time) []byte {
	end := bytes.LastIndexByte(doc, '}')
	if end < 0 {
		return doc
	}
	out := make([]byte, 0, len(doc)+48)
	out = append(out, doc[:end]...)
	out = append(out, `,"published":"`...)
	out = t.AppendFormat(out, announceTimeLayout)
	out = append(out, `"}`...)
	return append(out, doc[end+1:]...)
}

// followReply builds the Accept or Reject of a Follow, embedding the whole
// Follow with its id byte-identical (Misskey and old Mastodon require the
// embedded form; Pleroma requires the actor to be the followed actor). A
// reason, if not empty, is sent as the reply's summary.
func (r *Relay) followReply(typ vocab.ActivityVocabularyType, followID, follower, followed, reason string) ([]byte, string, error) {
	follow := vocab.FollowNew(vocab.ID(followID), vocab.IRI(followed))
	follow.Actor = vocab.IRI(follower)
	id := r.newID()
	reply := vocab.ActivityNew(vocab.ID(id), typ, follow)
	reply.Actor = vocab.IRI(r.actorID)
	reply.To = vocab.ItemCollection{vocab.IRI(follower)}
	if reason != "" {
		reply.Summary = vocab.DefaultNaturalLanguageValue(reason)
	}
	b, err := marshalDoc(reply, false)
	return b, id, err
}

// followBack builds the relay's reciprocal Follow of a LitePub subscriber.
func (r *Relay) followBack(subscriber string) ([]byte, string, error) {
	id := r.newID()
	f := vocab.FollowNew(vocab.ID(id), vocab.IRI(subscriber))
	f.Actor = vocab.IRI(r.actorID)
	f.To = vocab.ItemCollection{vocab.IRI(subscriber)}
	b, err := marshalDoc(f, false)
	return b, id, err
}

// undoFollowBack builds the Undo of the relay's reciprocal Follow.
func (r *Relay) undoFollowBack(followID, subscriber string) ([]byte, string, error) {
	f := vocab.FollowNew(vocab.ID(followID), vocab.IRI(subscriber))
	f.Actor = vocab.IRI(r.actorID)
	id := r.newID()
	u := vocab.UndoNew(vocab.ID(id), f)
	u.Actor = vocab.IRI(r.actorID)
	u.To = vocab.ItemCollection{vocab.IRI(subscriber)}
	b, err := marshalDoc(u, false)
	return b, id, err
}

// acctHost is the host part of the relay's acct: URI: BaseURL's host in
// canonical form (see canonicalHost), so without the scheme's default port;
// BaseURL's host as given if it has no canonical form.
func (r *Relay) acctHost() string {
	if h, err := canonicalHost(r.base.Scheme, r.base.Host); err == nil {
		return h
	}
	return r.base.Host
}

// undoRelayedAnnounce builds the relay's Undo of its own Announce of
// objectID (the Announce relayedAnnounce made for a post, whose id derives
// from objectID alone), for the incoming un-boost undo. The Announce is
// embedded: Misskey resolves an Undo's object given by IRI by fetching it,
// and GoToSocial skips such an Undo. The Undo's id derives from undo's, so
// a retried fan-out makes the same deliveries.
func (r *Relay) undoRelayedAnnounce(undo *envelope, objectID string) ([]byte, string, error) {
	id := r.derivedID("undo", "undo "+undo.ID)
	b, err := r.undoAnnounceBy(r.actorID, id, r.postAnnounceID(objectID), objectID)
	return b, id, err
}

// undoTopicAnnounce is undoRelayedAnnounce for the topic actor actor: its
// Undo of its own Announce of objectID (see topicAnnounce).
func (r *Relay) undoTopicAnnounce(actor string, undo *envelope, objectID string) (store.Payload, error) {
	id := r.derivedID("undo", "undo "+actor+" "+undo.ID)
	b, err := r.undoAnnounceBy(actor, id, r.topicAnnounceID(actor, r.postAnnounceID(objectID)), objectID)
	return store.Payload{ID: payloadID([]byte(id)), Body: b}, err
}

// undoAnnounceBy builds the Undo with id id, by actor, of actor's Announce
// announceID of objectID, embedded.
func (r *Relay) undoAnnounceBy(actor, id, announceID, objectID string) ([]byte, error) {
	a := vocab.AnnounceNew(vocab.ID(announceID), vocab.IRI(objectID))
	a.Actor = vocab.IRI(actor)
	a.To = vocab.ItemCollection{vocab.IRI(PublicCollection)}
	a.CC = vocab.ItemCollection{vocab.IRI(actor + "/followers")}
	u := vocab.UndoNew(vocab.ID(id), a)
	u.Actor = vocab.IRI(actor)
	u.To = vocab.ItemCollection{vocab.IRI(PublicCollection)}
	u.CC = vocab.ItemCollection{vocab.IRI(actor + "/followers")}
	return marshalDoc(u, false)
}

// postAnnounceID is the id of the relay's Announce of the post objectID
// (see announceID).
func (r *Relay) postAnnounceID(objectID string) string {
	return r.announceID(&envelope{Type: "Announce"}, objectID)
}

// nodeInfoPolicies adds to NodeInfo metadata what the relay publishes of
// its policies: "approval_required" (as ActivityRelay names it) unless
// Config.HideApprovalRequired, and unless Config.HideBlocks the domains
// the run-time block list blocks or silences, "blocks" (as AodeRelay
// names it), with their public reasons in "block_reasons" (domain to
// reason, for those that have one). Config.BlockedDomains are not
// published.
func (r *Relay) nodeInfoPolicies(ctx context.Context, meta map[string]any) {
	if !r.cfg.HideApprovalRequired {
		meta["approval_required"] = r.approvalRequired()
	}
	if r.cfg.HideBlocks {
		return
	}
	blocks, err := r.readBlocked(ctx)
	if err != nil {
		r.log.Error("relay: nodeinfo: reading the block list", "err", err)
		return
	}
	domains, reasons := []string{}, map[string]string{}
	for _, b := range blocks {
		if b.Severity == SeverityNoop {
			continue
		}
		domains = append(domains, b.Domain)
		if b.Reason != "" {
			reasons[b.Domain] = b.Reason
		}
	}
	meta["blocks"], meta["block_reasons"] = domains, reasons
}

// announceID returns the id of the relay's Announce of objectID made for
// the incoming activity env, derived from the object for a post (the relay
// announces an object once), else from env's type and id (the object's,
// for a Delete without an id). So a fan-out repeated after a failure, or
// another post of the same object, sends the same Announce, which
// receivers recognise by its id.
func (r *Relay) announceID(env *envelope, objectID string) string {
	source := env.Type + " " + cmp.Or(env.ID, objectID)
	if env.isPost() {
		source = "post " + objectID
	}
	return r.derivedID("announce", source)
}

// derivedID returns the id of one of the relay's activities of kind
// ("announce", "undo") derived from source, a text naming what it is made
// for: the same source gives the same id, so a retried fan-out sends the
// same activities.
func (r *Relay) derivedID(kind, source string) string {
	sum := sha256.Sum256([]byte(source))
	return r.base.String() + "/activities/" + kind + "-" + hex.EncodeToString(sum[:16])
}
