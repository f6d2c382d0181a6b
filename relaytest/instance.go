package relaytest

import (
	"context"
	"crypto/rsa"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedirelay/relay/memnet"
)

// Flavor selects which server software an Instance imitates.
type Flavor int

const (
	// Mastodon subscribes Mastodon-style: its instance actor (https://host/actor, type
	// Application) follows as:Public by POSTing a Follow to the relay inbox. It publishes
	// LD-signed activities HTTP-signed by the author, has a shared inbox (/inbox), requires a
	// Date within ±1 h, and processes relayed activities like Mastodon: an activity whose actor
	// is not the HTTP signer needs a valid LD signature, relayed content is only taken from an
	// actor whose inbox equals the inbox of an accepted relay subscription, and Announced objects
	// are fetched from their origin. It applies what it accepts: an Announce (a reblog, undone
	// by an Undo of it by the same actor), an Update (the embedded version), a Delete.
	Mastodon Flavor = iota
	// Misskey subscribes Mastodon-style with its system user relay.actor (/users/<id>) and a
	// Follow id .../activities/follow-relay/<id>. It only counts an Accept that embeds that Follow.
	// It publishes LD-signed activities (signature options with a nonce), accepts at most 64 KiB
	// bodies, requires Date within ±300 s and a signed host equal to its own, and requires an
	// activity's id to be on the host of its (HTTP or LD) signer. It writes times with
	// milliseconds, skips an Announce dated before the note it announces ("malformed
	// createdAt"), applies Updates of actors and polls only (never edits of notes), and undoes
	// an Announce by its actor (an Announce given by IRI is fetched first).
	Misskey
	// Pleroma subscribes LitePub-style: its relay actor (https://host/relay) follows the relay
	// actor, accepts the relay's reciprocal Follow with a signed Accept, and publishes by having
	// /relay Announce the note's URI (HTTP signatures sign content-length). It has no LD
	// signatures: a relayed activity whose signer (keyId minus fragment) is not its actor is
	// refetched from its origin if it is a Create (unless it has the object already: no
	// refetch, so no edit) and refused with 400 otherwise (relayed Update, Delete, Undo). A second
	// Announce of an object by the same actor is refused; an Undo of an Announce by its actor
	// removes it.
	Pleroma
	// GoToSocial subscribes LitePub-style from its instance actor (/users/<host>, no shared
	// inbox), never accepts the relay's reciprocal Follow and sends no Undo when unsubscribing.
	// It signs with hs2019 and keyIds of the form <actor>/main-key, signs its users' posts with
	// the instance actor's key, requires signed GETs for everything but WebFinger, NodeInfo and
	// the public key stub, answers 406 for unexpected content types and 400 for an Announce
	// without to and cc, and refetches relayed objects with signed GETs. A Create or Update whose
	// signer is not of the author's host is forwarded: the status is fetched again from its
	// origin (so a relayed Update shows the edit). It ignores an Announce of a status it already
	// has and a relayed Delete, and undoes an Announce only for an Undo embedding it and signed by
	// its actor.
	GoToSocial
	// Friendica subscribes LitePub-style from its system actor (/friendica), accepts the relay's
	// reciprocal Follow, and publishes public posts to the relay as LD-signed Creates by their
	// authors. An Announce, Create or Update that comes from a relay actor (an Application named
	// relay at /actor or /relay, as actor or as HTTP signer) is a relayed post: its object is
	// fetched from its origin unless Friendica has it already (so a relayed edit never shows).
	// Anything else relayed needs an LD signature by its actor, except a Delete of an object
	// that answers 410, which is applied. It does not push boosts to relays.
	Friendica
)

// String returns the flavor's name.
func (f Flavor) String() string {
	switch f {
	case Mastodon:
		return "Mastodon"
	case Misskey:
		return "Misskey"
	case Pleroma:
		return "Pleroma"
	case GoToSocial:
		return "GoToSocial"
	case Friendica:
		return "Friendica"
	}
	return fmt.Sprintf("Flavor(%d)", int(f))
}

// LitePub reports whether the flavor subscribes LitePub-style (following the relay actor) rather
// than Mastodon-style (following as:Public).
func (f Flavor) LitePub() bool { return f == Pleroma || f == GoToSocial || f == Friendica }

// Options configures NewInstance.
type Options struct {
	// Network, if set, puts the instance on this in-memory network under Host instead of on a
	// loopback HTTP server; its outbound requests then go through Network too, and its URLs use
	// https.
	Network *memnet.Network
	// Host is the instance's host name on Network (e.g. "mastodon.test"). When empty a name
	// like "mastodon-3.test" is chosen. Ignored without Network.
	Host string
	// Client is used for outbound requests when not on a Network. The default is an
	// http.Client with a 10 s timeout.
	Client *http.Client
	// MaxClockSkew, if positive, replaces the flavor's Date window (how far in the past and in
	// the future a signed Date or (created) may be): 1 h both ways for Mastodon, Pleroma and
	// GoToSocial, 300 s for Misskey.
	MaxClockSkew time.Duration
	// MaxBodyBytes, if positive, replaces the flavor's inbox body limit (64 KiB for Misskey,
	// 1 MiB for the others). Larger bodies get 413.
	MaxBodyBytes int64
	// SignFetches makes the instance sign all its outbound GETs (key, actor and object fetches).
	// By default only GoToSocial signs them; the others fetch unsigned, so a relay is also
	// exercised with unsigned fetches.
	SignFetches bool
	// Logf receives diagnostics (refused requests, failed background work). The default is the
	// test's Logf; use func(string, ...any) {} to silence it.
	Logf func(format string, args ...any)
}

// SubscriptionState is the state of a relay subscription as the instance sees it.
type SubscriptionState int

const (
	// StateNone means there is no subscription (never subscribed, or unsubscribed).
	StateNone SubscriptionState = iota
	// StatePending means the Follow was delivered and no matching Accept or Reject arrived yet.
	StatePending
	// StateAccepted means a matching Accept arrived.
	StateAccepted
	// StateRejected means a matching Reject arrived.
	StateRejected
)

// String returns the state's name.
func (s SubscriptionState) String() string {
	switch s {
	case StateNone:
		return "none"
	case StatePending:
		return "pending"
	case StateAccepted:
		return "accepted"
	case StateRejected:
		return "rejected"
	}
	return fmt.Sprintf("SubscriptionState(%d)", int(s))
}

// Received is one request accepted (answered 2xx) by an inbox of the instance.
type Received struct {
	// Inbox is the request path of the inbox, e.g. "/inbox" or "/users/alice/inbox".
	Inbox string
	// Type, ID and Actor are the activity's type, id and actor (the actor's id if embedded).
	Type, ID, Actor string
	// ObjectID is the activity's object: the IRI, or the id of an embedded object.
	ObjectID string
	// ObjectType is the type of an embedded object ("" if the object is an IRI).
	ObjectType string
	// KeyID is the keyId of the HTTP signature and Signer the actor owning that key.
	KeyID, Signer string
	// LDSigned reports an LD signature block; LDVerified that it was checked and valid (it is
	// only checked when the flavor needs it, i.e. the signer is not the actor).
	LDSigned, LDVerified bool
	// Body and Header are the raw request body and headers.
	Body   []byte
	Header http.Header
	// At is the arrival time.
	At time.Time

	// Dropped reports that, although the request was accepted (202), the flavor would ignore
	// the activity (e.g. Mastodon and a relayed Update without LD signature, Misskey and an
	// Accept whose Follow is not embedded). Reason says why, or for kept activities how they
	// were authenticated or handled.
	Dropped bool
	Reason  string

	// FetchURL is set when the flavor fetches the activity's object from its origin (an
	// Announce's object, a relayed Create refetched by Pleroma or GoToSocial). The fetch runs
	// in the background: FetchDone becomes true when it has finished, FetchStatus is the HTTP
	// status (0 on transport errors, see FetchErr) and FetchBody the response body. A failed
	// fetch also marks the record Dropped.
	FetchURL    string
	FetchDone   bool
	FetchStatus int
	FetchErr    string
	FetchBody   []byte
}

// FetchOK reports whether the object fetch finished with 200 and a usable object.
func (r Received) FetchOK() bool {
	return r.FetchDone && r.FetchStatus == http.StatusOK && r.FetchErr == ""
}

// Rejection is one request the instance refused.
type Rejection struct {
	// Method and Path are the request's method and path ("/inbox", "/users/alice", ...).
	Method, Path string
	// Status is the status code answered (401, 400, 406, 413, 415, ...).
	Status int
	// Reason explains the refusal.
	Reason string
	// KeyID is the keyId of the request's signature, if it had one.
	KeyID string
	// Body and Header are the raw request body and headers.
	Body   []byte
	Header http.Header
	// At is the arrival time.
	At time.Time
}

// Note is a status published by an Instance.
type Note struct {
	// ID is the object's id (the status URI), retrievable with GET until deleted (410 after).
	ID string
	// ActivityID is the id of the activity sent to the relay: the Create, or for Pleroma the
	// relay actor's Announce.
	ActivityID string
	// Author is the author's actor id.
	Author string
	// Content is the current HTML content.
	Content string
	// Published is the publication time.
	Published time.Time
	// Visibility is the audience the author chose (Public unless posted
	// with PostVisible).
	Visibility Visibility

	user string
}

// HTTPError is returned by the instance's high-level operations (Subscribe, Post, ...) when the
// remote side answers with a non-2xx status.
type HTTPError struct {
	Method, URL string
	StatusCode  int
	Body        string
}

// Error implements error.
func (e *HTTPError) Error() string {
	return fmt.Sprintf("relaytest: %s %s: status %d: %s", e.Method, e.URL, e.StatusCode, truncate(e.Body, 200))
}

// Instance is a fake fediverse instance. Create it with NewInstance. All methods are safe for
// concurrent use.
type Instance struct {
	flavor  Flavor
	opts    Options
	host    string // host[:port], as in URLs
	base    string // scheme://host
	client  *http.Client
	srv     *httptest.Server
	network *memnet.Network
	logf    func(string, ...any)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	system    *localActor            // relay / instance actor
	actors    map[string]*localActor // by id
	objects   map[string]*storedObject
	subs      map[string]*subscription // by relay inbox
	followers map[string]string        // actor id -> Follow id, for follows of the system actor
	follows   []*personFollow          // follows of remote actors by local users (Follow)
	received  []*Received
	rejected  []Rejection
	keys      map[string]*remoteKey
	remotes   map[string]*remoteActor
	fault     func(*http.Request) int
	counter   uint64

	// What the instance applied of what it received (see apply.go).
	statuses   map[string][]byte         // remote statuses held, by id: the last copy applied
	boosts     map[string]boost          // boosts (Announces) applied, by Announce id
	sentBoosts map[string]map[string]any // Announces sent by Boost, by id, for Unboost
}

type localActor struct {
	id       string
	path     string
	username string
	typ      string
	system   bool
	key      *rsa.PrivateKey
	profile  map[string]any // extra actor properties (SetProfile)
}

type storedObject struct {
	doc  []byte
	gone bool
}

type subscription struct {
	inbox      string
	relayActor string
	followID   string
	follow     map[string]any
	misskeyID  string
	state      SubscriptionState
}

var (
	loopbackNext atomic.Uint32
	hostCounter  atomic.Uint32
)

// NewInstance starts a fake instance of the given flavor and registers t.Cleanup to stop it.
//
// Without opts.Network it serves plain HTTP with httptest on a distinct loopback address
// 127.0.0.N:0 (N = 2..254, a new one per instance, wrapping; 127.0.0.1 if binding fails). With
// opts.Network it is registered on that network under opts.Host.
func NewInstance(t testing.TB, flavor Flavor, opts Options) *Instance {
	t.Helper()
	if flavor < Mastodon || flavor > Friendica {
		t.Fatalf("relaytest: unknown flavor %d", int(flavor))
	}
	warmKeys()
	i := &Instance{
		flavor:    flavor,
		opts:      opts,
		actors:    map[string]*localActor{},
		objects:   map[string]*storedObject{},
		subs:      map[string]*subscription{},
		followers: map[string]string{},
		keys:      map[string]*remoteKey{},
		remotes:   map[string]*remoteActor{},

		statuses:   map[string][]byte{},
		boosts:     map[string]boost{},
		sentBoosts: map[string]map[string]any{},
	}
	i.ctx, i.cancel = context.WithCancel(context.Background())
	i.logf = opts.Logf
	if i.logf == nil {
		i.logf = t.Logf
	}
	if opts.Network != nil {
		host := strings.ToLower(opts.Host)
		if host == "" {
			host = fmt.Sprintf("%s-%d.test", strings.ToLower(flavor.String()), hostCounter.Add(1))
		}
		for _, h := range opts.Network.Hosts() {
			if h == host {
				t.Fatalf("relaytest: host %q is already on the network", host)
			}
		}
		i.host, i.network = host, opts.Network
		i.base = "https://" + host
		i.client = opts.Network.Client()
		i.client.Timeout = 30 * time.Second
		i.setup()
		opts.Network.Handle(host, i)
	} else {
		l := listenLoopback()
		i.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: i}}
		i.srv.Start()
		u, _ := url.Parse(i.srv.URL)
		i.host, i.base = u.Host, "http://"+u.Host
		i.client = opts.Client
		if i.client == nil {
			i.client = &http.Client{Timeout: 10 * time.Second}
		}
		i.setup()
	}
	t.Cleanup(i.Close)
	return i
}

func listenLoopback() net.Listener {
	for tries := 0; tries < 4; tries++ {
		n := loopbackNext.Add(1)
		addr := fmt.Sprintf("127.0.0.%d:0", 2+(n-1)%253)
		if l, err := net.Listen("tcp4", addr); err == nil {
			return l
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("relaytest: cannot listen on loopback: " + err.Error())
	}
	return l
}

// Close stops the instance: it stops serving (on a memnet network it is removed, so requests to
// it fail like an unknown host; on loopback connections are refused), cancels its background
// work and waits for it. Close is called automatically at test cleanup; calling it earlier
// simulates an instance that went away. It is idempotent.
func (i *Instance) Close() {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return
	}
	i.closed = true
	i.mu.Unlock()
	i.cancel()
	if i.network != nil {
		i.network.Remove(i.host)
	}
	if i.srv != nil {
		i.srv.Close()
	}
	i.wg.Wait()
}

// Flavor returns the flavor the instance imitates.
func (i *Instance) Flavor() Flavor { return i.flavor }

// URL returns the base URL, e.g. "http://127.0.0.5:41234" or "https://mastodon.test".
func (i *Instance) URL() string { return i.base }

// Host returns the host (with port, if any) as used in URLs and the signed host header.
func (i *Instance) Host() string { return i.host }

// RelayActorID returns the id of the actor that subscribes to relays: the instance actor
// (Mastodon <base>/actor, GoToSocial <base>/users/<host>), Misskey's system user relay.actor,
// Pleroma's <base>/relay or Friendica's system actor <base>/friendica.
func (i *Instance) RelayActorID() string { return i.system.id }

// ActorID returns the actor id of the local user name (created on demand), or of the relay
// actor for "".
func (i *Instance) ActorID(user string) string {
	a, err := i.actorFor(user)
	if err != nil {
		return ""
	}
	return a.id
}

// Inbox returns the inbox a relay should deliver to: the shared inbox (<base>/inbox), or for
// GoToSocial, which has none, the instance actor's inbox.
func (i *Instance) Inbox() string {
	if i.flavor == GoToSocial {
		return i.system.id + "/inbox"
	}
	return i.base + "/inbox"
}

// Subscribed reports whether at least one relay subscription is accepted, i.e. an Accept that
// matches a Follow sent by Subscribe arrived (according to the flavor's matching rules).
func (i *Instance) Subscribed() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, s := range i.subs {
		if s.state == StateAccepted {
			return true
		}
	}
	return false
}

// SubscriptionState returns the state of the subscription made with Subscribe(relayInbox).
func (i *Instance) SubscriptionState(relayInbox string) SubscriptionState {
	i.mu.Lock()
	defer i.mu.Unlock()
	if s, ok := i.subs[relayInbox]; ok {
		return s.state
	}
	return StateNone
}

// Followers returns the actors currently following the instance's relay actor (e.g. a relay's
// reciprocal LitePub Follow), in no particular order.
func (i *Instance) Followers() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]string, 0, len(i.followers))
	for a := range i.followers {
		out = append(out, a)
	}
	return out
}

// Received returns copies of everything accepted into the instance's inboxes, in arrival order.
// Records of activities whose object is being fetched are updated in place, so call it again
// (or use WaitFor) to see the fetch outcome.
func (i *Instance) Received() []Received {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]Received, len(i.received))
	for k, r := range i.received {
		out[k] = *r
		out[k].Header = r.Header.Clone()
	}
	return out
}

// Rejected returns the requests the instance refused, in arrival order.
func (i *Instance) Rejected() []Rejection {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]Rejection(nil), i.rejected...)
}

// ResetRecords forgets what Received and Rejected returned so far.
func (i *Instance) ResetRecords() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.received = nil
	i.rejected = nil
}

// SetFault installs a fault injector: for every incoming request f is called first, and if it
// returns a non-zero status the request is answered with that status without further
// processing (and recorded in Rejected). nil removes the injector. Use it to simulate a down or
// overloaded instance (503), a gone actor (410), and so on.
func (i *Instance) SetFault(f func(r *http.Request) int) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.fault = f
}

// RotateKey gives the local actor user ("" for the relay actor) a new key pair from the shared
// pool. Remote parties that cached the old key will fail to verify until they refetch it.
func (i *Instance) RotateKey(user string) error {
	a, err := i.actorFor(user)
	if err != nil {
		return err
	}
	k := i.freshKey(i.keyOf(a))
	i.mu.Lock()
	defer i.mu.Unlock()
	a.key = k
	return nil
}

// WaitFor polls Received until cond returns true and returns the records it accepted. It fails
// the test (t.Fatalf) when timeout passes first; timeout only bounds a hanging test, it is not a
// performance check. Call it from the test goroutine.
func (i *Instance) WaitFor(t testing.TB, timeout time.Duration, cond func([]Received) bool) []Received {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rs := i.Received()
		if cond(rs) {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("relaytest: %s %s: condition not met within %v; received: %s; rejected: %s",
				i.flavor, i.host, timeout, summarizeReceived(rs), summarizeRejected(i.Rejected()))
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitForMatch waits (like WaitFor) until a received record satisfies match and returns the
// first such record.
func (i *Instance) WaitForMatch(t testing.TB, timeout time.Duration, match func(Received) bool) Received {
	t.Helper()
	var found Received
	i.WaitFor(t, timeout, func(rs []Received) bool {
		for _, r := range rs {
			if match(r) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// WaitSubscribed waits (like WaitFor) until Subscribed reports true.
func (i *Instance) WaitSubscribed(t testing.TB, timeout time.Duration) {
	t.Helper()
	i.WaitFor(t, timeout, func([]Received) bool { return i.Subscribed() })
}

func summarizeReceived(rs []Received) string {
	if len(rs) == 0 {
		return "nothing"
	}
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		s := r.Type + " " + r.ID
		if r.Dropped {
			s += " (dropped: " + r.Reason + ")"
		}
		if r.FetchURL != "" {
			s += fmt.Sprintf(" (fetch %s: done=%v status=%d %s)", r.FetchURL, r.FetchDone, r.FetchStatus, r.FetchErr)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func summarizeRejected(rs []Rejection) string {
	if len(rs) == 0 {
		return "nothing"
	}
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%s %s -> %d %s", r.Method, r.Path, r.Status, r.Reason))
	}
	return strings.Join(parts, "; ")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// --- local actors -------------------------------------------------------------------------------

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// hostname returns the instance's host without port.
func (i *Instance) hostname() string {
	if h, _, err := net.SplitHostPort(i.host); err == nil {
		return h
	}
	return i.host
}

// actorFor resolves "" (the relay actor), a local actor id or a user name.
func (i *Instance) actorFor(who string) (*localActor, error) {
	if who == "" {
		return i.system, nil
	}
	if strings.HasPrefix(who, i.base+"/") {
		u, err := url.Parse(who)
		if err != nil {
			return nil, err
		}
		if a, _ := i.actorByPath(u.Path, true); a != nil {
			return a, nil
		}
		return nil, fmt.Errorf("relaytest: %s is not a local actor", who)
	}
	return i.user(who)
}

// user returns (creating on demand) the local user with the given name.
func (i *Instance) user(name string) (*localActor, error) {
	if !usernameRE.MatchString(name) {
		return nil, fmt.Errorf("relaytest: invalid user name %q", name)
	}
	path := "/users/" + name
	id := i.base + path
	i.mu.Lock()
	defer i.mu.Unlock()
	if a, ok := i.actors[id]; ok {
		return a, nil
	}
	a := &localActor{id: id, path: path, username: name, typ: "Person"}
	i.actors[id] = a
	return a, nil
}

// keyOf returns the actor's key, assigning one from the pool on first use.
func (i *Instance) keyOf(a *localActor) *rsa.PrivateKey {
	i.mu.Lock()
	k := a.key
	i.mu.Unlock()
	if k != nil {
		return k
	}
	k = i.freshKey(nil)
	i.mu.Lock()
	defer i.mu.Unlock()
	if a.key == nil {
		a.key = k
	}
	return a.key
}

// freshKey takes a key from the shared pool that, as far as the pool allows, no other actor of
// this instance uses and that is not avoid.
func (i *Instance) freshKey(avoid *rsa.PrivateKey) *rsa.PrivateKey {
	i.mu.Lock()
	used := map[*rsa.PrivateKey]bool{avoid: true}
	for _, a := range i.actors {
		if a.key != nil {
			used[a.key] = true
		}
	}
	i.mu.Unlock()
	k := nextKey()
	for tries := 1; tries < keyPoolSize && used[k]; tries++ {
		k = nextKey()
	}
	return k
}

// keyID returns the keyId of a local actor in the flavor's form.
func (i *Instance) keyID(a *localActor) string {
	if i.flavor == GoToSocial {
		return a.id + "/main-key"
	}
	return a.id + "#main-key"
}

// actorByPath finds the local actor whose path is a prefix of path and returns the remaining
// suffix ("", "/inbox", "/followers", ...). Users are created on demand if create is set.
func (i *Instance) actorByPath(path string, create bool) (*localActor, string) {
	if path == i.system.path || strings.HasPrefix(path, i.system.path+"/") {
		return i.system, strings.TrimPrefix(path, i.system.path)
	}
	rest, ok := strings.CutPrefix(path, "/users/")
	if !ok {
		return nil, ""
	}
	name, suffix, _ := strings.Cut(rest, "/")
	if suffix != "" {
		suffix = "/" + suffix
	}
	if !usernameRE.MatchString(name) {
		return nil, ""
	}
	if !create {
		i.mu.Lock()
		a := i.actors[i.base+"/users/"+name]
		i.mu.Unlock()
		return a, suffix
	}
	a, err := i.user(name)
	if err != nil {
		return nil, ""
	}
	return a, suffix
}

// next returns a per-instance sequence number.
func (i *Instance) next() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.counter++
	return i.counter
}

// storeObject makes doc retrievable at id (if id is a URL on this instance without fragment).
func (i *Instance) storeObject(id string, doc []byte) {
	u, err := url.Parse(id)
	if err != nil || u.Fragment != "" || !strings.EqualFold(u.Host, i.host) {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.objects[u.Path] = &storedObject{doc: doc}
}

// markGone makes GET of id answer 410.
func (i *Instance) markGone(id string) {
	u, err := url.Parse(id)
	if err != nil {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if o, ok := i.objects[u.Path]; ok {
		o.gone = true
	} else {
		i.objects[u.Path] = &storedObject{gone: true}
	}
}

// goBackground runs f in a goroutine tracked by Close.
func (i *Instance) goBackground(f func(ctx context.Context)) {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return
	}
	i.wg.Add(1)
	i.mu.Unlock()
	go func() {
		defer i.wg.Done()
		f(i.ctx)
	}()
}

// log reports a diagnostic unless the instance is closed.
func (i *Instance) log(format string, args ...any) {
	i.mu.Lock()
	closed := i.closed
	i.mu.Unlock()
	if closed {
		return
	}
	i.logf("relaytest %s %s: "+format, append([]any{i.flavor, i.host}, args...)...)
}
