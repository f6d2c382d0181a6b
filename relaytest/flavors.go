package relaytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"strings"
	"time"
)

// Per-flavor actor documents, activity shapes and the high-level operations (Subscribe, Post,
// ...). See protocol.md §2, §3, §5.1-5.4 and fixtures 01-09.

const (
	asContext       = "https://www.w3.org/ns/activitystreams"
	securityContext = "https://w3id.org/security/v1"
	publicIRI       = "https://www.w3.org/ns/activitystreams#Public"
)

// ErrUnsupported is returned by operations a flavor does not perform (e.g. Boost for Pleroma,
// GoToSocial and Friendica, which do not push boosts to relays).
var ErrUnsupported = errors.New("relaytest: operation not supported by this flavor")

func (i *Instance) setup() {
	hn := i.hostname()
	switch i.flavor {
	case Mastodon:
		// Account.representative: username = the local domain, type Application, at /actor.
		i.system = &localActor{id: i.base + "/actor", path: "/actor", username: hn, typ: "Application", system: true}
	case Misskey:
		rid := randomAID()
		i.system = &localActor{id: i.base + "/users/" + rid, path: "/users/" + rid, username: "relay.actor", typ: "Application", system: true}
	case Pleroma:
		i.system = &localActor{id: i.base + "/relay", path: "/relay", username: "relay", typ: "Application", system: true}
	case GoToSocial:
		i.system = &localActor{id: i.base + "/users/" + hn, path: "/users/" + hn, username: hn, typ: "Application", system: true}
	case Friendica:
		i.system = &localActor{id: i.base + "/friendica", path: "/friendica", username: "friendica", typ: "Application", system: true}
	}
	i.actors[i.system.id] = i.system
}

func (i *Instance) litepubContext() []any {
	return []any{asContext, i.base + "/schemas/litepub-0.1.jsonld", map[string]any{"@language": "und"}}
}

func misskeyContext() []any {
	return []any{asContext, securityContext, map[string]any{
		"Key":                       "sec:Key",
		"manuallyApprovesFollowers": "as:manuallyApprovesFollowers",
		"sensitive":                 "as:sensitive",
		"Hashtag":                   "as:Hashtag",
		"misskey":                   "https://misskey-hub.net/ns#",
		"_misskey_content":          "misskey:_misskey_content",
		"isCat":                     "misskey:isCat",
	}}
}

func mastodonContext() []any {
	return []any{asContext, map[string]any{
		"ostatus":          "http://ostatus.org#",
		"atomUri":          "ostatus:atomUri",
		"inReplyToAtomUri": "ostatus:inReplyToAtomUri",
		"conversation":     "ostatus:conversation",
		"sensitive":        "as:sensitive",
		"toot":             "http://joinmastodon.org/ns#",
		"votersCount":      "toot:votersCount",
	}, securityContext}
}

// activityContext is the @context of the flavor's activities.
func (i *Instance) activityContext() any {
	switch i.flavor {
	case Mastodon:
		return mastodonContext()
	case Misskey:
		return misskeyContext()
	case Pleroma:
		return i.litepubContext()
	case Friendica:
		return []any{asContext, securityContext}
	default:
		return asContext
	}
}

// renderActor returns the actor document of a.
func (i *Instance) renderActor(a *localActor) map[string]any {
	doc := map[string]any{
		"@context":                  []any{asContext, securityContext},
		"id":                        a.id,
		"type":                      a.typ,
		"preferredUsername":         a.username,
		"name":                      a.username,
		"inbox":                     a.id + "/inbox",
		"outbox":                    a.id + "/outbox",
		"followers":                 a.id + "/followers",
		"following":                 a.id + "/following",
		"url":                       a.id,
		"manuallyApprovesFollowers": false,
		"publicKey": map[string]any{
			"id":           i.keyID(a),
			"owner":        a.id,
			"publicKeyPem": publicKeyPEM(&i.keyOf(a).PublicKey),
		},
	}
	if i.flavor != GoToSocial {
		doc["endpoints"] = map[string]any{"sharedInbox": i.base + "/inbox"}
	}
	for k, v := range a.profile {
		doc[k] = v
	}
	switch i.flavor {
	case Mastodon:
		if a.system {
			doc["url"] = i.base + "/about/more?instance_actor=true"
			doc["manuallyApprovesFollowers"] = true
		} else {
			doc["url"] = i.base + "/@" + a.username
		}
	case Pleroma:
		if a.system {
			doc["name"] = "Pleroma"
		}
	case GoToSocial:
		if !a.system {
			doc["url"] = i.base + "/@" + a.username
		}
	}
	return doc
}

// renderKeyStub is GoToSocial's unauthenticated document at <actor>/main-key.
func (i *Instance) renderKeyStub(a *localActor) map[string]any {
	return map[string]any{
		"@context": []any{asContext, securityContext},
		"id":       a.id,
		"type":     a.typ,
		"publicKey": map[string]any{
			"id":           i.keyID(a),
			"owner":        a.id,
			"publicKeyPem": publicKeyPEM(&i.keyOf(a).PublicKey),
		},
	}
}

func (i *Instance) software() (name, version string) {
	switch i.flavor {
	case Mastodon:
		return "mastodon", "4.5.0"
	case Misskey:
		return "misskey", "2025.4.0"
	case Pleroma:
		return "pleroma", "2.9.1"
	case Friendica:
		return "friendica", "2024.12"
	default:
		return "gotosocial", "0.22.0"
	}
}

// --- ids ---------------------------------------------------------------------------------------

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// randomAID imitates a Misskey aid (10 base36 characters).
func randomAID() string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	for k := range b {
		b[k] = alphabet[int(b[k])%len(alphabet)]
	}
	return string(b)
}

// randomULID imitates a GoToSocial ULID (26 Crockford base32 characters).
func randomULID() string {
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	for k := range b {
		b[k] = alphabet[int(b[k])%len(alphabet)]
	}
	return "01" + string(b)
}

// --- subscription -------------------------------------------------------------------------------

// Subscribe makes the instance subscribe to the relay whose inbox is relayInbox, the way its
// flavor does, and returns the id of the Follow it sent. relayActor is the relay actor's id; it
// is the Follow's object for the LitePub flavors (Pleroma, GoToSocial, Friendica) and may be "" for
// Mastodon and Misskey, which follow as:Public. The subscription is pending until a matching
// Accept arrives (see Subscribed). Subscribing again to the same inbox replaces the previous
// subscription.
func (i *Instance) Subscribe(ctx context.Context, relayInbox, relayActor string) (string, error) {
	if i.flavor.LitePub() && relayActor == "" {
		return "", fmt.Errorf("relaytest: %s subscribes by following the relay actor: relayActor is required", i.flavor)
	}
	sys := i.system
	sub := &subscription{inbox: relayInbox, relayActor: relayActor, state: StatePending}
	var follow map[string]any
	switch i.flavor {
	case Mastodon:
		sub.followID = i.base + "/" + newUUID()
		follow = map[string]any{"@context": asContext, "id": sub.followID, "type": "Follow", "actor": sys.id, "object": publicIRI}
	case Misskey:
		sub.misskeyID = randomAID()
		sub.followID = i.base + "/activities/follow-relay/" + sub.misskeyID
		follow = map[string]any{"@context": misskeyContext(), "id": sub.followID, "type": "Follow", "actor": sys.id, "object": publicIRI}
	case Pleroma:
		sub.followID = i.base + "/activities/" + newUUID()
		follow = map[string]any{
			"@context": i.litepubContext(), "id": sub.followID, "type": "Follow", "actor": sys.id,
			"object": relayActor, "state": "pending", "to": []any{relayActor},
			"cc": []any{}, "bcc": []any{}, "bto": []any{},
		}
	case GoToSocial:
		sub.followID = sys.id + "/follow/" + randomULID()
		follow = map[string]any{"@context": asContext, "id": sub.followID, "type": "Follow", "actor": sys.id, "object": relayActor, "to": relayActor}
	case Friendica:
		sub.followID = i.base + "/activity/" + newUUID()
		follow = map[string]any{"@context": i.activityContext(), "id": sub.followID, "type": "Follow", "actor": sys.id, "object": relayActor, "to": []any{relayActor}}
	}
	sub.follow = follow
	i.mu.Lock()
	i.subs[relayInbox] = sub
	i.mu.Unlock()
	if err := i.deliver(ctx, relayInbox, sys, follow); err != nil {
		i.mu.Lock()
		if i.subs[relayInbox] == sub {
			delete(i.subs, relayInbox)
		}
		i.mu.Unlock()
		return "", err
	}
	return sub.followID, nil
}

// Unsubscribe ends the subscription to relayInbox: Mastodon sends an Undo embedding the Follow
// (without @context), Misskey an Undo of its rendered Follow, Pleroma an Undo with the Follow
// embedded and state "cancelled". GoToSocial sends nothing at all (as the real one does), it only
// forgets the subscription.
func (i *Instance) Unsubscribe(ctx context.Context, relayInbox string) error {
	i.mu.Lock()
	sub, ok := i.subs[relayInbox]
	if ok {
		delete(i.subs, relayInbox)
	}
	i.mu.Unlock()
	if !ok {
		return fmt.Errorf("relaytest: not subscribed to %s", relayInbox)
	}
	sys := i.system
	var undo map[string]any
	switch i.flavor {
	case Mastodon:
		undo = map[string]any{
			"@context": asContext, "id": i.base + "/" + newUUID(), "type": "Undo", "actor": sys.id,
			"object": map[string]any{"id": sub.followID, "type": "Follow", "actor": sys.id, "object": publicIRI},
		}
	case Misskey:
		embedded := copyMap(sub.follow)
		delete(embedded, "@context")
		undo = map[string]any{"@context": misskeyContext(), "id": i.base + "/" + newUUID(), "type": "Undo", "actor": sys.id, "object": embedded, "published": nowISO()}
	case Pleroma:
		embedded := copyMap(sub.follow)
		delete(embedded, "@context")
		embedded["state"] = "cancelled"
		undo = map[string]any{
			"@context": i.litepubContext(), "id": i.base + "/activities/" + newUUID(), "type": "Undo", "actor": sys.id,
			"object": embedded, "to": []any{sub.relayActor}, "cc": []any{}, "published": nowISO(),
			"context": i.base + "/contexts/" + newUUID(),
		}
	case GoToSocial:
		return nil
	case Friendica:
		embedded := copyMap(sub.follow)
		delete(embedded, "@context")
		undo = map[string]any{
			"@context": i.activityContext(), "id": i.base + "/activity/" + newUUID(), "type": "Undo", "actor": sys.id,
			"object": embedded, "to": []any{sub.relayActor},
		}
	}
	return i.deliver(ctx, relayInbox, sys, undo)
}

// --- publishing ---------------------------------------------------------------------------------

func nowISO() string { return time.Now().UTC().Format("2006-01-02T15:04:05Z") }

func copyMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// noteDoc renders the Note object of n.
func (i *Instance) noteDoc(n *Note, author *localActor, updated string) map[string]any {
	doc := map[string]any{
		"id":           n.ID,
		"type":         "Note",
		"attributedTo": author.id,
		"content":      n.Content,
		"published":    i.formatTime(n.Published),
		"sensitive":    false,
		"summary":      nil,
		"inReplyTo":    nil,
		"attachment":   []any{},
		"tag":          []any{},
	}
	to, cc := n.Visibility.addressing(author.id)
	doc["to"], doc["cc"] = to, cc
	if updated != "" {
		doc["updated"] = updated
	}
	switch i.flavor {
	case Mastodon:
		num := n.ID[strings.LastIndexByte(n.ID, '/')+1:]
		doc["url"] = i.base + "/@" + author.username + "/" + num
		doc["atomUri"] = n.ID
		doc["inReplyToAtomUri"] = nil
		doc["conversation"] = fmt.Sprintf("tag:%s,%s:objectId=%s:objectType=Conversation", i.hostname(), n.Published.UTC().Format("2006-01-02"), num)
		doc["contentMap"] = map[string]any{"en": n.Content}
	case Misskey:
		doc["_misskey_content"] = html.UnescapeString(stripP(n.Content))
		doc["url"] = n.ID
	case Pleroma:
		doc["context"] = i.base + "/contexts/" + newUUID()
		doc["actor"] = author.id
	case GoToSocial:
		// go-fed serialises single-valued properties as plain values.
		doc["to"], doc["cc"] = singleValued(to), singleValued(cc)
		doc["url"] = i.base + "/@" + author.username + "/statuses/" + n.ID[strings.LastIndexByte(n.ID, '/')+1:]
		delete(doc, "summary")
		delete(doc, "inReplyTo")
	}
	return doc
}

// singleValued returns the only element of l, or l.
func singleValued(l []any) any {
	if len(l) == 1 {
		return l[0]
	}
	return l
}

// formatTime writes a time as the flavor does: Misskey with milliseconds (toISOString), the
// others in whole seconds.
func (i *Instance) formatTime(t time.Time) string {
	if i.flavor == Misskey {
		return t.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	return t.UTC().Format("2006-01-02T15:04:05Z")
}

func stripP(s string) string {
	s = strings.TrimPrefix(s, "<p>")
	return strings.TrimSuffix(s, "</p>")
}

// pushSigner returns the actor whose key HTTP-signs the pushes of author's activities.
func (i *Instance) pushSigner(author *localActor) *localActor {
	switch i.flavor {
	case GoToSocial:
		return i.system
	default:
		return author
	}
}

// ldSignIfFlavor attaches an LD signature for the flavors that do (Mastodon, Misskey).
func (i *Instance) ldSignIfFlavor(doc map[string]any, author *localActor) error {
	switch i.flavor {
	case Mastodon:
		return ldSign(doc, i.keyOf(author), i.keyID(author), time.Now(), "")
	case Misskey:
		return ldSign(doc, i.keyOf(author), i.keyID(author), time.Now(), randomHex(32))
	case Friendica:
		return ldSign(doc, i.keyOf(author), i.keyID(author), time.Now(), "")
	}
	return nil
}

// storeDoc marshals doc and makes it retrievable at its id.
func (i *Instance) storeDoc(doc map[string]any) {
	id, _ := doc["id"].(string)
	if b, err := canonicalJSON(doc); err == nil {
		i.storeObject(id, b)
	}
}

// Post publishes a public note by user (created on demand) with the given text and sends it to
// relayInbox the way the flavor publishes to relays:
//   - Mastodon: Create{Note} (to Public, cc followers), LD-signed and HTTP-signed by the author;
//     ids <base>/users/<user>/statuses/<n>[/activity].
//   - Misskey: Create{Note} (ids <base>/notes/<aid>[/activity]), LD-signed with a nonce,
//     HTTP-signed by the author.
//   - Pleroma: the note (<base>/objects/<uuid>) is stored locally and the relay actor sends
//     Announce{actor: <base>/relay, object: <note id>, to: [<base>/relay/followers]}.
//   - GoToSocial: Create{Note} by the author with single-valued to/cc, HTTP-signed by the
//     instance actor (hs2019), no LD signature.
//   - Friendica: Create{Note} (ids <base>/objects/<uuid>[/Create]), LD-signed, HTTP-signed by
//     the author.
//
// The note stays retrievable at its id until deleted. Misskey writes times with milliseconds,
// the others in whole seconds.
func (i *Instance) Post(ctx context.Context, relayInbox, user, text string) (*Note, error) {
	return i.PostVisible(ctx, relayInbox, user, text, Public)
}

// PostVisible is Post with the given visibility: the note and its Create (or Pleroma's
// Announce) are addressed as v says (see Visibility). It sends the post to the relay whatever v
// is, where the real servers send only public posts (Pleroma public and unlisted ones, and
// GoToSocial unlisted ones when the relay push allows them), so a relay's filtering can be
// tested.
func (i *Instance) PostVisible(ctx context.Context, relayInbox, user, text string, v Visibility) (*Note, error) {
	return i.publish(ctx, relayInbox, user, text, v, PostOptions{})
}

// publish is PostVisible with the extras of PostWith.
func (i *Instance) publish(ctx context.Context, relayInbox, user, text string, v Visibility, opts PostOptions) (*Note, error) {
	author, err := i.user(user)
	if err != nil {
		return nil, err
	}
	precision := time.Second
	if i.flavor == Misskey {
		precision = time.Millisecond
	}
	n := &Note{Author: author.id, Content: "<p>" + html.EscapeString(text) + "</p>", Published: time.Now().UTC().Truncate(precision), Visibility: v, user: user}
	var act map[string]any
	switch i.flavor {
	case Mastodon:
		n.ID = fmt.Sprintf("%s/statuses/%d", author.id, 110000000000000000+i.next())
		n.ActivityID = n.ID + "/activity"
	case Misskey:
		n.ID = i.base + "/notes/" + randomAID()
		n.ActivityID = n.ID + "/activity"
	case Pleroma:
		n.ID = i.base + "/objects/" + newUUID()
		n.ActivityID = i.base + "/activities/" + newUUID()
	case GoToSocial:
		n.ID = author.id + "/statuses/" + randomULID()
		n.ActivityID = n.ID + "/activity"
	case Friendica:
		n.ID = i.base + "/objects/" + newUUID()
		n.ActivityID = n.ID + "/Create"
	}
	note := i.noteDoc(n, author, "")
	opts.apply(i, note)
	stored := copyMap(note)
	stored["@context"] = i.activityContext()
	i.storeDoc(stored)

	switch i.flavor {
	case Pleroma:
		createID := i.base + "/activities/" + newUUID()
		i.storeDoc(map[string]any{
			"@context": i.litepubContext(), "id": createID, "type": "Create", "actor": author.id,
			"object": note, "to": note["to"], "cc": note["cc"], "published": note["published"],
		})
		act = map[string]any{
			"@context": i.litepubContext(), "id": n.ActivityID, "type": "Announce", "actor": i.system.id,
			"object": n.ID, "to": []any{i.system.id + "/followers"}, "cc": []any{}, "bto": []any{}, "bcc": []any{},
			"published": nowISO(), "context": note["context"],
		}
		i.storeDoc(act)
		return n, i.deliver(ctx, relayInbox, i.system, act)
	case GoToSocial:
		act = map[string]any{
			"@context": asContext, "id": n.ActivityID, "type": "Create", "actor": author.id,
			"published": note["published"], "to": note["to"], "cc": note["cc"], "object": note,
		}
	default:
		act = map[string]any{
			"@context": i.activityContext(), "id": n.ActivityID, "type": "Create", "actor": author.id,
			"published": note["published"], "to": note["to"], "cc": note["cc"], "object": note,
		}
	}
	i.storeDoc(act)
	if err := i.ldSignIfFlavor(act, author); err != nil {
		return nil, err
	}
	return n, i.deliver(ctx, relayInbox, i.pushSigner(author), act)
}

// noteAuthor returns the local author of n.
func (i *Instance) noteAuthor(n *Note) (*localActor, error) {
	if n == nil {
		return nil, errors.New("relaytest: nil note")
	}
	if n.user != "" {
		return i.user(n.user)
	}
	a, err := i.actorFor(n.Author)
	if err != nil {
		return nil, fmt.Errorf("relaytest: note %s has no local author: %w", n.ID, err)
	}
	return a, nil
}

// Edit changes n's text and sends an Update{Note} to relayInbox (LD-signed for Mastodon and
// Misskey; by the author for Pleroma; signed with the instance key for GoToSocial). Each edit has
// a new activity id.
func (i *Instance) Edit(ctx context.Context, relayInbox string, n *Note, text string) error {
	author, err := i.noteAuthor(n)
	if err != nil {
		return err
	}
	n.Content = "<p>" + html.EscapeString(text) + "</p>"
	updated := nowISO()
	note := i.noteDoc(n, author, updated)
	stored := copyMap(note)
	stored["@context"] = i.activityContext()
	i.storeDoc(stored)
	seq := i.next()
	var id string
	switch i.flavor {
	case Mastodon:
		id = fmt.Sprintf("%s#updates/%d%d", n.ID, time.Now().Unix(), seq)
	case Misskey:
		id = fmt.Sprintf("%s#updates/%d%d", author.id, time.Now().UnixMilli(), seq)
	case Pleroma:
		id = i.base + "/activities/" + newUUID()
	case GoToSocial:
		id = n.ID + "/updates/" + randomULID()
	case Friendica:
		id = i.base + "/activity/" + newUUID()
	}
	act := map[string]any{
		"@context": i.activityContext(), "id": id, "type": "Update", "actor": author.id,
		"published": updated, "to": note["to"], "cc": note["cc"], "object": note,
	}
	if err := i.ldSignIfFlavor(act, author); err != nil {
		return err
	}
	return i.deliver(ctx, relayInbox, i.pushSigner(author), act)
}

// Delete deletes n (GET of its id answers 410 from now on) and sends a Delete to relayInbox:
// Mastodon Delete{Tombstone} with id <status>#delete, LD-signed; Misskey Delete{Tombstone},
// LD-signed; both addressed to the public whatever the note's visibility. Pleroma and
// GoToSocial a Delete whose object is the note's id, by the author, addressed as the note.
func (i *Instance) Delete(ctx context.Context, relayInbox string, n *Note) error {
	author, err := i.noteAuthor(n)
	if err != nil {
		return err
	}
	i.markGone(n.ID)
	var act map[string]any
	switch i.flavor {
	case Mastodon:
		act = map[string]any{
			"@context": []any{asContext, map[string]any{"ostatus": "http://ostatus.org#", "atomUri": "ostatus:atomUri"}, securityContext},
			"id":       n.ID + "#delete", "type": "Delete", "actor": author.id, "to": []any{publicIRI},
			"object": map[string]any{"id": n.ID, "type": "Tombstone", "atomUri": n.ID},
		}
	case Misskey:
		act = map[string]any{
			"@context": misskeyContext(), "id": i.base + "/" + newUUID(), "type": "Delete", "actor": author.id,
			"object": map[string]any{"id": n.ID, "type": "Tombstone"}, "published": nowISO(), "to": []any{publicIRI},
		}
	case Pleroma:
		to, cc := n.Visibility.addressing(author.id)
		act = map[string]any{
			"@context": i.litepubContext(), "id": i.base + "/activities/" + newUUID(), "type": "Delete", "actor": author.id,
			"object": n.ID, "to": append(to, cc...), "cc": []any{}, "bto": []any{}, "bcc": []any{},
		}
	case GoToSocial:
		to, cc := n.Visibility.addressing(author.id)
		act = map[string]any{
			"@context": asContext, "id": n.ID + "/delete/" + randomULID(), "type": "Delete", "actor": author.id,
			"object": n.ID, "to": singleValued(to), "cc": singleValued(cc),
		}
	case Friendica:
		act = map[string]any{
			"@context": i.activityContext(), "id": n.ID + "/Delete", "type": "Delete", "actor": author.id,
			"object": map[string]any{"id": n.ID, "type": "Tombstone"}, "to": []any{publicIRI},
		}
	}
	if err := i.ldSignIfFlavor(act, author); err != nil {
		return err
	}
	return i.deliver(ctx, relayInbox, i.pushSigner(author), act)
}

// Boost sends an Announce of objectID by user to relayInbox and returns the Announce's id:
// Mastodon <base>/users/<user>/statuses/<n>/activity, Misskey <base>/notes/<aid>/activity, both
// with the object as an IRI, to Public, LD-signed. Pleroma, GoToSocial and Friendica do not push
// boosts to relays and return ErrUnsupported.
func (i *Instance) Boost(ctx context.Context, relayInbox, user, objectID string) (string, error) {
	if i.flavor.LitePub() {
		return "", ErrUnsupported
	}
	author, err := i.user(user)
	if err != nil {
		return "", err
	}
	var id string
	if i.flavor == Mastodon {
		id = fmt.Sprintf("%s/statuses/%d/activity", author.id, 110000000000000000+i.next())
	} else {
		id = i.base + "/notes/" + randomAID() + "/activity"
	}
	act := map[string]any{
		"@context": []any{asContext, securityContext}, "id": id, "type": "Announce", "actor": author.id,
		"published": nowISO(), "to": []any{publicIRI}, "cc": []any{author.id + "/followers"}, "object": objectID,
	}
	if i.flavor == Misskey {
		act["@context"] = misskeyContext()
	}
	i.storeDoc(act)
	i.mu.Lock()
	i.sentBoosts[id] = copyMap(act)
	i.mu.Unlock()
	if err := i.ldSignIfFlavor(act, author); err != nil {
		return "", err
	}
	return id, i.deliver(ctx, relayInbox, author, act)
}

// Unboost withdraws the boost boostID (made by Boost) and sends an Undo of it to relayInbox, as
// Mastodon and Misskey send un-boosts of public posts to relays: Mastodon an Undo with id
// <actor>#announces/<n>/undo, Misskey one with an id on its host; both embed the Announce, are
// addressed to Public and LD-signed, and are HTTP-signed by the booster. The LitePub flavors
// return ErrUnsupported, as for Boost.
func (i *Instance) Unboost(ctx context.Context, relayInbox, boostID string) error {
	if i.flavor.LitePub() {
		return ErrUnsupported
	}
	i.mu.Lock()
	announce, ok := i.sentBoosts[boostID]
	delete(i.sentBoosts, boostID)
	i.mu.Unlock()
	if !ok {
		return fmt.Errorf("relaytest: %s is not a boost sent by this instance", boostID)
	}
	author, err := i.actorFor(idOf(announce["actor"]))
	if err != nil {
		return err
	}
	embedded := copyMap(announce)
	delete(embedded, "@context")
	i.markGone(boostID)
	var id string
	if i.flavor == Mastodon {
		id = fmt.Sprintf("%s#announces/%d/undo", author.id, 110000000000000000+i.next())
	} else {
		id = i.base + "/" + newUUID()
	}
	undo := map[string]any{
		"@context": announce["@context"], "id": id, "type": "Undo", "actor": author.id,
		"to": []any{publicIRI}, "object": embedded,
	}
	if err := i.ldSignIfFlavor(undo, author); err != nil {
		return err
	}
	return i.deliver(ctx, relayInbox, author, undo)
}
