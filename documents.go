package relay

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"

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
//	GET  P/actor                  the relay actor (Application "relay")
//	POST P/inbox                  the inbox (also the actor's sharedInbox)
//	GET  P/actor/followers        empty collections: subscribers are not listed
//	GET  P/actor/following
//	GET  P/actor/outbox
//	GET  P/nodeinfo/2.0           NodeInfo documents
//	GET  P/nodeinfo/2.1
//	GET  P/{$}                    a short plain-text page for people
//	GET  /.well-known/webfinger   acct:relay@host and the actor URL
//	GET  /.well-known/nodeinfo
//	GET  /.well-known/host-meta
//
// Mount it at the root, or route P/ and the three /.well-known/ paths to it
// from your own mux (a server with its own WebFinger can answer relay
// resources with Relay.WebFinger instead). The handler never registers
// anything globally and serves all GETs without requiring a signature.
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
	mux.HandleFunc("GET /.well-known/webfinger", r.serveWebFinger)
	mux.HandleFunc("GET /.well-known/nodeinfo", r.serveNodeInfoLinks)
	mux.HandleFunc("GET /.well-known/host-meta", r.serveHostMeta)
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
	a := vocab.ActorNew(vocab.IRI(r.actorID), vocab.ApplicationType)
	a.PreferredUsername = vocab.DefaultNaturalLanguageValue("relay")
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

// JRDLink is one link of a JRD.
type JRDLink struct {
	Rel      string `json:"rel"`
	Type     string `json:"type,omitempty"`
	Href     string `json:"href,omitempty"`
	Template string `json:"template,omitempty"`
}

// WebFinger answers a WebFinger query for the relay actor: resource may be
// acct:relay@<host> (with or without the port of BaseURL) or the actor URL.
// The subject is acct:relay@<host>, with the port when BaseURL has one
// other than its scheme's default (as Mastodon names accounts of a server
// on a port), so a client that queries the subject again reaches this
// relay. It reports false for any other resource. Servers that run their
// own WebFinger endpoint call it to answer for the relay.
func (r *Relay) WebFinger(resource string) (JRD, bool) {
	hostname := r.base.Hostname()
	switch strings.ToLower(resource) {
	case "acct:relay@" + hostname, "acct:relay@" + r.base.Host, "relay@" + hostname, "relay@" + r.base.Host, strings.ToLower(r.actorID):
	default:
		return JRD{}, false
	}
	return JRD{
		Subject: "acct:relay@" + r.acctHost(),
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

func (r *Relay) serveHostMeta(w http.ResponseWriter, _ *http.Request) {
	root := r.base.Scheme + "://" + r.base.Host
	body := `<?xml version="1.0" encoding="UTF-8"?>
<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">
  <Link rel="lrdd" type="application/xrd+xml" template="` + template.HTMLEscapeString(root) + `/.well-known/webfinger?resource={uri}"/>
</XRD>
`
	writeDoc(w, r, "application/xrd+xml; charset=utf-8", []byte(body), nil)
}

const nodeInfoSchema = "http://nodeinfo.diaspora.software/ns/schema/"

func (r *Relay) serveNodeInfoLinks(w http.ResponseWriter, _ *http.Request) {
	doc := JRD{Links: []JRDLink{
		{Rel: nodeInfoSchema + "2.1", Href: r.base.String() + "/nodeinfo/2.1"},
		{Rel: nodeInfoSchema + "2.0", Href: r.base.String() + "/nodeinfo/2.0"},
		{Rel: "https://www.w3.org/ns/activitystreams#Application", Href: r.actorID},
	}}
	b, err := json.Marshal(struct {
		Links []JRDLink `json:"links"`
	}{doc.Links})
	writeDoc(w, r, "application/json", b, err)
}

// nodeInfo is a NodeInfo 2.0/2.1 document. Software.Repository and
// Homepage exist only in 2.1 (2.0 forbids additional properties).
type nodeInfo struct {
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

func (r *Relay) serveNodeInfo(w http.ResponseWriter, req *http.Request) {
	version := req.PathValue("version")
	if version != "2.0" && version != "2.1" {
		http.NotFound(w, req)
		return
	}
	n := nodeInfo{Version: version, Protocols: []string{"activitypub"}, OpenRegistrations: true}
	n.Software.Name = "fedirelay"
	n.Software.Version = Version
	if version == "2.1" {
		n.Software.Repository = "https://github.com/fedirelay/relay"
	}
	n.Services.Inbound, n.Services.Outbound = []string{}, []string{}
	subs, err := r.store.ListSubscribers(req.Context(), store.SubscriberFilter{State: store.StateAccepted})
	if err != nil {
		r.log.Error("relay: nodeinfo: listing subscribers", "err", err)
	}
	u := &n.Usage.Users
	u.Total, u.ActiveMonth, u.ActiveHalfyear = len(subs), len(subs), len(subs)
	n.Metadata = map[string]any{"nodeName": r.cfg.Name}
	if r.cfg.Summary != "" {
		n.Metadata["nodeDescription"] = r.cfg.Summary
	}
	b, err := json.Marshal(n)
	writeDoc(w, r, `application/json; profile="`+nodeInfoSchema+version+`#"`, b, err)
}

func (r *Relay) serveIndex(w http.ResponseWriter, req *http.Request) {
	n := 0
	if subs, err := r.store.ListSubscribers(req.Context(), store.SubscriberFilter{State: store.StateAccepted}); err == nil {
		n = len(subs)
	}
	body := fmt.Sprintf("%s — an ActivityPub relay (fedirelay %s)\n\n"+
		"Mastodon, Misskey: subscribe with the inbox URL  %s\n"+
		"Pleroma, Akkoma, Friendica, GoToSocial: follow the actor  %s\n\n"+
		"%d subscribed servers.\n", r.cfg.Name, Version, r.inboxURL, r.actorID, n)
	writeDoc(w, r, "text/plain; charset=utf-8", []byte(body), nil)
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

// relayedAnnounce builds the Announce of objectID by the relay actor that
// LitePub subscribers (and Mastodon-style ones, for activities without an
// LD signature) receive for the incoming activity env (see announceID).
// GoToSocial refuses an Announce without to/cc.
func (r *Relay) relayedAnnounce(env *envelope, objectID string) ([]byte, string, error) {
	id := r.announceID(env, objectID)
	a := vocab.AnnounceNew(vocab.ID(id), vocab.IRI(objectID))
	a.Actor = vocab.IRI(r.actorID)
	a.Published = r.now().UTC().Truncate(1e9)
	a.To = vocab.ItemCollection{vocab.IRI(PublicCollection)}
	a.CC = vocab.ItemCollection{vocab.IRI(r.actorID + "/followers")}
	b, err := marshalDoc(a, false)
	return b, id, err
}

// followReply builds the Accept or Reject of a Follow, embedding the whole
// Follow with its id byte-identical (Misskey and old Mastodon require the
// embedded form; Pleroma requires the actor to be the followed actor).
func (r *Relay) followReply(typ vocab.ActivityVocabularyType, followID, follower, followed string) ([]byte, string, error) {
	follow := vocab.FollowNew(vocab.ID(followID), vocab.IRI(followed))
	follow.Actor = vocab.IRI(follower)
	id := r.newID()
	reply := vocab.ActivityNew(vocab.ID(id), typ, follow)
	reply.Actor = vocab.IRI(r.actorID)
	reply.To = vocab.ItemCollection{vocab.IRI(follower)}
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

// acctHost is the host part of the relay's acct: URI: BaseURL's host, with
// its port unless that is the scheme's default.
func (r *Relay) acctHost() string {
	return withoutDefaultPort(r.base.Scheme, r.base.Host)
}

// withoutDefaultPort returns host (host[:port]) without its port when that
// is scheme's default (443 for https, 80 for http).
func withoutDefaultPort(scheme, host string) string {
	switch scheme {
	case "https":
		return strings.TrimSuffix(host, ":443")
	case "http":
		return strings.TrimSuffix(host, ":80")
	}
	return host
}
