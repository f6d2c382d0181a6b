// Package relay turns a Go HTTP server into a fediverse relay.
//
// A relay takes the public posts that subscribing ActivityPub servers send
// to it and hands them to every other subscriber. This package speaks both
// relay protocols described by FEP-ae0c:
//
//   - Mastodon style (Mastodon, Misskey): the subscriber follows as:Public;
//     LD-signed activities are forwarded byte for byte, everything else is
//     wrapped in an Announce by the relay actor.
//   - LitePub style (Pleroma, Akkoma, Friendica, GoToSocial): the subscriber
//     follows the relay actor, the relay follows back, and subscribers get an
//     Announce of each relayed object.
//
// Create a Relay with New, mount Relay.Handler on your server, call Start to
// begin delivering, and Close to stop. Mounted under /relay/ of a server
// (BaseURL "https://example.org/relay"), WebFinger, NodeInfo and host-meta
// still belong at the root of the host:
//
//	r, err := relay.New(relay.Config{BaseURL: "https://example.org/relay"})
//	if err != nil {
//		return err
//	}
//	mux.Handle("/relay/", r.Handler())
//	mux.Handle("GET /.well-known/webfinger", r.Handler())
//	mux.Handle("GET /.well-known/nodeinfo", r.Handler())
//	mux.Handle("GET /.well-known/host-meta", r.Handler())
//	if err := r.Start(); err != nil {
//		return err
//	}
//	defer r.Close(context.Background())
//
// State (subscribers, the relay key, the delivery queue) lives in a
// store.Store; the default is in memory and lost on restart, so a server
// passes a durable one, such as store/filestore, in Config.Store.
//
// Further reading, in the repository: docs/embedding.md
// (mounting, policies, the operator API), docs/operating.md (deployment,
// backups, logs), docs/protocol.md (what is relayed how, per server) and
// docs/store.md (the Store contract). Package httpsig holds the HTTP
// signature code.
package relay

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// Version is the fedirelay version reported in NodeInfo and User-Agent.
const Version = "0.1.0"

// Errors returned by the Relay.
var (
	// ErrClosed is returned by methods of a Relay that has been closed.
	ErrClosed = errors.New("relay: closed")
	// ErrNotSubscribed is returned when an actor has no subscription.
	ErrNotSubscribed = errors.New("relay: not subscribed")
)

// Transport sends the relay's outbound HTTP requests: deliveries (POST) and
// document fetches (GET). The relay signs every request before handing it
// over, so a Transport only moves bytes. Any http.RoundTripper is a
// Transport; the in-memory memnet.Network is one for tests.
//
// A Transport must be safe for concurrent use, must honour the request's
// context, and must not follow redirects (the relay follows them itself, so
// that it can sign and check every hop).
type Transport interface {
	RoundTrip(*http.Request) (*http.Response, error)
}

// Decision is a FollowPolicy's answer to a subscription request.
type Decision int

// Decisions.
const (
	// DecisionAccept accepts the subscription at once.
	DecisionAccept Decision = iota
	// DecisionReject refuses it: the follower gets a Reject.
	DecisionReject
	// DecisionPending keeps it pending until Relay.Approve or Relay.Refuse.
	DecisionPending
)

// FollowRequest describes a Follow the relay received, for a FollowPolicy.
type FollowRequest struct {
	Actor     string         // the following actor's id
	ActorType string         // its ActivityStreams type, e.g. "Application"
	Host      string         // lower-cased host[:port] of Actor
	Protocol  store.Protocol // which relay protocol it asked for
	FollowID  string         // the Follow activity's id
	Topic     string         // the followed topic ("tag/cats"), "" for the relay actor
}

// FollowPolicy decides what happens to a subscription request. It returns
// a decision and, for a rejection, a reason kept in the subscriber's Reason
// and sent with the Reject.
// It is called from the inbox handler and must return quickly.
type FollowPolicy func(ctx context.Context, req FollowRequest) (Decision, string)

// AcceptAll is the default FollowPolicy: every request is accepted.
func AcceptAll(context.Context, FollowRequest) (Decision, string) { return DecisionAccept, "" }

// ManualApproval is a FollowPolicy that keeps every request pending until
// the operator calls Relay.Approve or Relay.Refuse.
func ManualApproval(context.Context, FollowRequest) (Decision, string) { return DecisionPending, "" }

// Config configures a Relay. Only BaseURL is required; every other zero
// field gets the default its comment names. New copies the Config, so
// changing it afterwards has no effect.
type Config struct {
	// BaseURL is the public URL of the relay, such as
	// "https://relay.example.org" or "https://example.org/relay" when the
	// relay is mounted under a prefix. Every route is served below its path
	// (see Relay.Handler). It may differ from the address the server listens
	// on, as behind a reverse proxy. Required.
	BaseURL string

	// Store keeps subscribers, the relay key, deduplication marks and the
	// delivery queue. If nil, an in-memory store is used and everything is
	// lost when the process exits: use a durable store in production.
	Store store.Store

	// Transport sends outbound requests. If nil, an http.Transport with
	// connection reuse, HTTP/2, timeouts and the outbound guard's address
	// check at dial time is used (see AllowPrivate). Every request, with any
	// Transport, first passes the guard's URL checks (scheme, user info, IP
	// literals, BlockedDomains); with a custom Transport, refusing private
	// addresses after DNS resolution is that Transport's job.
	Transport Transport

	// Logger receives the relay's logs. If nil, slog.Default() is used.
	Logger *slog.Logger

	// Name and Summary describe the relay in its actor document and
	// NodeInfo. Name defaults to "fedirelay".
	Name    string
	Summary string

	// FollowPolicy decides on subscription requests. If nil, AcceptAll.
	FollowPolicy FollowPolicy

	// MaxBodyBytes bounds the size of a request body the inbox reads, and of
	// fetched documents. Larger bodies get 413. Default 1 MiB.
	MaxBodyBytes int64

	// SignatureMaxAge is how old a request's Date (or (created)) may be, and
	// ClockSkew how far in the future it may be. Defaults 1 hour and 5 minutes.
	SignatureMaxAge time.Duration
	ClockSkew       time.Duration

	// DedupWindow is how long activity and object ids are remembered to
	// relay each activity once. Default 48 hours.
	DedupWindow time.Duration

	// KeyCacheTTL is how long fetched actor keys are trusted before being
	// fetched again (a failing signature triggers one refetch, at most once
	// per key per minute counted from its last fetch, the first included).
	// An expired key of a host with an accepted (or dormant) subscriber is
	// still used, for up to another KeyCacheTTL, while it is fetched again in
	// the background, so that busy, rate-limited or failing key fetches do
	// not lock out known senders. Default 1 hour.
	KeyCacheTTL time.Duration

	// Workers bounds the deliveries in flight at once to hosts that are not
	// slow (leased, being signed, or waiting for their answer). Signing is
	// separate: at most GOMAXPROCS deliveries are signed at once, and a
	// delivery waiting on the network holds no signing capacity, so
	// Workers can be large; each costs a goroutine, a request and
	// possibly a connection. Default 128.
	//
	// PerHostWorkers caps the deliveries in flight to one host (a slow host
	// gets 1, see SlowHostWorkers), so that a small instance never gets
	// more than a few concurrent requests. Default 4.
	//
	// On a store shared by several relay processes (a store.Notifier),
	// PerHostWorkers is global: the store leases no more than
	// PerHostWorkers deliveries of one host to all the processes together
	// (store.LeaseRequest.HostCap), so processes sharing a store must use
	// the same value. A delivery holds its place from its lease until its
	// outcome is written to the store (a few milliseconds after its
	// answer), or, if its process dies, until its lease ends
	// (LeaseDuration). The lower caps of slow hosts and of hosts whose
	// circuit breaker is not closed are learnt, and kept, by each process
	// on its own. Workers and SlowHostWorkers are per process.
	Workers        int
	PerHostWorkers int

	// SlowHostWorkers bounds the deliveries in flight to slow hosts, all
	// together, in addition to Workers (so memory stays bounded by
	// Workers + SlowHostWorkers requests, and hosts that answer always
	// have Workers). A host is slow from when one of its requests times
	// out or has waited MinRequestTimeout for its answer until it answers
	// again; it gets one delivery at a time. While slow hosts hold more
	// than SlowHostWorkers deliveries, their requests waiting longer than
	// MinRequestTimeout are timed out, oldest first. Default Workers / 4
	// (at least 1).
	SlowHostWorkers int

	// RequestTimeout bounds each outbound request, from dialling to the end
	// of the response. Default 30 seconds.
	//
	// A host whose request times out gets half its previous timeout for
	// the next, down to MinRequestTimeout, until it answers (any HTTP
	// status), which gives it RequestTimeout again. Timeouts count as
	// failures for the circuit breaker (BreakerThreshold), and a half-open
	// breaker's probe always gets the whole RequestTimeout, so a host that
	// is slow but alive can recover. MinRequestTimeout defaults to 5
	// seconds, or RequestTimeout if that is shorter.
	RequestTimeout    time.Duration
	MinRequestTimeout time.Duration

	// LeaseDuration is how long a delivery this relay leased from the
	// store stays reserved for it. When a relay process dies, the others
	// sharing its store take its deliveries over once their leases end;
	// a lease that ends while its delivery is still being attempted or
	// waits for its host lets another process send it too (at least
	// once). Default 10 × RequestTimeout + 1 minute, far longer than an
	// attempt (with its wait for a signer) plus its wait behind the host's
	// other deliveries.
	LeaseDuration time.Duration

	// RetryBackoff is the delay before the first retry of a failed
	// delivery; it doubles on every attempt, with jitter, up to 6 hours.
	// MaxAttempts is how many attempts a delivery gets before it is dropped.
	// Defaults 30 seconds and 12 (about two days of retries).
	RetryBackoff time.Duration
	MaxAttempts  int

	// BreakerThreshold is how many consecutive failed attempts to one host
	// (transport errors, timeouts, 5xx, 408) open its circuit breaker:
	// nothing is sent to the host for BreakerCooloff, its queued deliveries
	// wait without using up attempts, then one probe is let through. An
	// answer closes the breaker; another failure opens it for twice as long,
	// up to 64 × BreakerCooloff. A 429 pauses the host the same way for its
	// Retry-After. Defaults 5 and 1 minute; a negative BreakerThreshold
	// disables the breaker (429 still pauses).
	BreakerThreshold int
	BreakerCooloff   time.Duration

	// DormantAfter is how long a subscriber's deliveries may keep failing
	// before it becomes dormant (store.StateDormant): its queued deliveries
	// are dropped and nothing is queued for it until it sends the relay an
	// activity, which makes it accepted again. Default 7 days; negative
	// disables dormancy.
	DormantAfter time.Duration

	// MaxHostBacklog bounds the deliveries queued for one host. Beyond it
	// the oldest queued Creates and Announces to that host are dropped;
	// Updates, Deletes, Moves and subscription messages are always kept, so
	// the backlog can exceed the bound when it holds only those. Default
	// 10,000; negative means no bound.
	MaxHostBacklog int

	// Clock is the relay's time source (see Clock), for tests. If nil, the
	// system clock.
	Clock Clock

	// UserAgent is sent with every outbound request. Default
	// "fedirelay/<Version> (+<BaseURL>)".
	UserAgent string

	// AllowPrivate lists address ranges the relay may connect to although
	// they are private, loopback, link-local, CGNAT, multicast or otherwise
	// reserved. By default every fetch and delivery to such an address is
	// refused: when dialling, after DNS resolution (so a host name that
	// resolves, or is rebound, to 127.0.0.1 is refused too), and for IP
	// literals in URLs before anything is sent. Set it only to run the relay
	// against local servers, e.g. 127.0.0.0/8 in tests. The dial-time check
	// is done by the default transport: with a custom Transport it is that
	// Transport's job (the URL checks still apply). See SECURITY.md.
	AllowPrivate []netip.Prefix

	// AllowHTTP lets the relay fetch from and deliver to plain http URLs.
	// By default only https is used. For local testing only.
	AllowHTTP bool

	// BlockedDomains lists domains the relay has nothing to do with; each
	// also covers its subdomains ("example.com" blocks "a.example.com").
	// An inbox request whose keyId, actor or object is on a blocked domain
	// is refused with 403 before anything is fetched (so Follows from them
	// are refused too), and the relay neither fetches from nor delivers to
	// them. Use the ASCII (punycode) form of internationalised names.
	BlockedDomains []string

	// KeyFetchTimeout bounds how long the inbox waits for the key of a
	// request's signer (the key document, its owner and any redirects).
	// When it passes the inbox answers 503 with Retry-After, so a key server
	// that never answers cannot hold inbox requests. A key fetch in flight
	// holds one of the 8 slots of its keyId host and, if no accepted (or
	// dormant) subscriber lives on that host, one of 64 slots shared by all
	// such hosts; a request whose key needs a fetch when they are taken gets
	// 503 with Retry-After. Fetches for subscribed hosts never wait for the
	// shared slots, and an expired key of a subscribed host keeps verifying
	// (for up to another KeyCacheTTL) while it is fetched again. Default
	// 10 seconds.
	KeyFetchTimeout time.Duration

	// KeyFetchLimit limits failed key fetches per keyId host (errors, 404s,
	// bad documents, timeouts: a fetch that succeeds gives its token back),
	// so that requests naming ever new keyIds cannot make the relay hammer a
	// host. A request needing a fetch when the budget is spent gets 429 with
	// Retry-After, except the refetch of a cached key (expired or rotated)
	// of a host with a subscriber. Concurrent requests signed with the same
	// key share one fetch. Default 5 per second, bursts of 50.
	KeyFetchLimit RateLimit

	// KeyFetchTotalLimit limits all key fetches per keyId host, successful
	// ones included, so that requests naming existing keys (with forged
	// signatures: each key is fetched at most once a minute) cannot make the
	// relay fetch without limit from a large instance and churn its key
	// cache. Hosts with an accepted (or dormant) subscriber have their own
	// buckets, ten times as large (rate and burst). Over it: 429 with
	// Retry-After, except the refetch of a cached key (expired or rotated)
	// of a host with a subscriber. Default 20 per second, bursts of 200; a
	// negative Rate disables it.
	KeyFetchTotalLimit RateLimit

	// InboxLimit limits the authenticated inbox requests accepted per
	// signer host (the host of the keyId, once the signature verified, so
	// that forged requests cannot use up another host's budget). A request
	// over the limit gets 429 with Retry-After; other hosts are unaffected.
	// Default 50 per second, bursts of 500.
	InboxLimit RateLimit

	// SignatureFailureLimit limits the signatures that fail to verify per
	// keyId host. Each failure takes a token; while the host's bucket is
	// empty, its requests get 429 with Retry-After before any signature is
	// verified, so that forged requests (with an 8,192-bit key, a
	// verification costs a few milliseconds) cannot keep the relay busy
	// verifying.
	// Hosts with an accepted (or dormant) subscriber have their own
	// buckets, ten times as large (rate and burst), and forged requests
	// naming their keys delay, but do not lose, their activities (senders
	// retry after 429). Default 10 per second, bursts of 100; a negative
	// Rate disables it.
	SignatureFailureLimit RateLimit

	// MaxActivityAge is how old a Create or Announce may be, by its
	// published time, to be relayed. Older ones are accepted (202) and
	// dropped, so that replays of old posts are not amplified and their
	// senders do not retry. Activities without published (such as
	// Mastodon's Deletes) and other types are not affected. Default 1 hour.
	MaxActivityAge time.Duration

	// RelayUnlisted relays unlisted posts too: posts with as:Public in cc
	// but not in to, which their authors keep out of public timelines. It
	// is a privacy choice of the operator, off by default: a relay puts what
	// it relays into its subscribers' federated timelines, which is what
	// unlisted means to avoid. Followers-only and direct posts are never
	// relayed. See docs/protocol.md, "Only what authors made public".
	RelayUnlisted bool

	// Filters apply to every post (Create, Announce, Update) before it is
	// routed: a post one of them refuses is accepted (202) and relayed to
	// nobody. Each subscriber may have its own filter as well (see
	// Relay.SetSubscriberFilter), and Deletes and Moves are never
	// filtered. See contentfilter.go and docs/operating.md.
	Filters FilterSet

	// Topics configures the topic actors P/tag/{tag}, P/language/{code}
	// and P/instance/{host}; the zero value offers them all. Their
	// accounts (acct:tag.cats@host, see Relay.WebFinger) are on the
	// relay's host: of the relays of one process on one host, only one may
	// offer a given topic (see New).
	Topics TopicConfig

	// OptOuts says where authors' opt-outs (indexable: false, #nobot,
	// #norelay) are honoured; the zero value: for topic actors only.
	OptOuts OptOutConfig

	// ApprovalRequired says that the operator approves every subscription
	// (Relay.Approve, Relay.Refuse): NodeInfo then reports
	// openRegistrations false, and a nil FollowPolicy defaults to
	// ManualApproval. A FollowPolicy that is set still decides on every
	// request; set ApprovalRequired with it when that policy holds them.
	ApprovalRequired bool

	// TrustedProxies lists the address ranges of the reverse proxies in
	// front of the relay. For a request whose peer address is in them, the
	// client address the relay logs (remote=) is taken from
	// X-Forwarded-For (the rightmost address not in TrustedProxies) or,
	// without it, from Forwarded's for= parameters, read the same way;
	// otherwise, and for every other request, it is the peer address.
	// Headers from peers outside these ranges are never believed. The
	// relay uses the client address only in logs.
	TrustedProxies []netip.Prefix

	// Username is the relay actor's preferredUsername and the user part
	// of its account, acct:Username@host (see Relay.WebFinger). Default
	// "relay". Letters, digits, '_', '-' and '.' (not first or last), at
	// most 64 bytes. Two relays in one process must not claim the same
	// account, nor may one's account be another's topic account
	// (tag.cats, ...): see New.
	Username string

	// ActorType is the relay actor's ActivityStreams type: "Application"
	// (the default, what Mastodon and Pleroma relays use) or "Service".
	ActorType string

	// PrivateKeyPEM is the relay's RSA private key in PEM form, PKCS#8
	// ("PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"), not encrypted, of at
	// least 2048 bits. If set, the relay signs with it and neither reads
	// nor replaces the key kept in the Store; if empty, the relay uses the
	// Store's key, generating and storing one on first use.
	PrivateKeyPEM []byte

	// Rules are the built-in rules for subscription requests (allowlist
	// mode, software and actor type policies), checked before
	// FollowPolicy. The zero value refuses nothing.
	Rules SubscriptionRules

	// HideBlocks keeps the run-time block list out of NodeInfo, which by
	// default publishes its blocking domains with their public reasons
	// (metadata "blocks" and "block_reasons"). HideApprovalRequired keeps
	// out metadata "approval_required", which says whether subscription
	// requests wait for the operator.
	HideBlocks           bool
	HideApprovalRequired bool

	// Events receives the relay's events, for metrics (see Observer and
	// package metrics/promrelay). If nil, nothing is reported.
	Events Observer
}

// Defaults of the Config fields that limit what the relay accepts.
var (
	defaultKeyFetchLimit      = RateLimit{Rate: 5, Burst: 50}
	defaultKeyFetchTotalLimit = RateLimit{Rate: 20, Burst: 200}
	defaultInboxLimit         = RateLimit{Rate: 50, Burst: 500}
	defaultSignatureFailures  = RateLimit{Rate: 10, Burst: 100}
)

const (
	defaultKeyFetchTimeout = 10 * time.Second
	defaultMaxActivityAge  = time.Hour
)

// Relay is a fediverse relay. Create it with New; its methods are safe for
// concurrent use.
type Relay struct {
	cfg       Config
	store     store.Store
	ownsStore bool
	transport Transport
	log       *slog.Logger
	policy    FollowPolicy
	clock     Clock
	now       func() time.Time
	// enqueueChunk is the most deliveries stored in one change (see
	// batch.enqueue); enqueueChunk, or smaller in tests.
	enqueueChunk int
	// markLocks serialises the fan-outs that take the same deduplication
	// marks (see batch.enqueue).
	markLocks keyedLocks

	base     *url.URL
	prefix   string // BaseURL path without trailing slash
	actorID  string
	inboxURL string
	keyID    string
	accounts *accountClaim // the accounts it answers for (see claimAccounts)
	signer   *httpsig.Signer
	pubPEM   string
	keys     *keyCache
	guard    *guard
	keyLimit *limiter // failed key fetches per keyId host
	keyAll   *limiter // all key fetches per keyId host without a subscriber
	keySub   *limiter // all key fetches per keyId host with a subscriber
	inLimit  *limiter // authenticated inbox requests per signer host
	sigFail  *limiter // failed signature verifications per keyId host without a subscriber
	sigFailS *limiter // failed signature verifications per keyId host with a subscriber
	handler  http.Handler
	queue    *deliveryQueue
	closed   chan struct{}
	closeMu  sync.Mutex
	inflight sync.WaitGroup // inbox requests being handled, and Rejects to blocked domains
	bg       sync.WaitGroup // background loops other than delivery
	policyMu sync.Mutex     // serialises changes of the run-time block list and allowlist
	rules    *followRules   // Config.Rules and the allowlist

	// when each blocked host was last sent a Reject (rejectblocked.go)
	blockedRejects blockedRejects

	topics     topicRegistry     // topic followers (topics.go)
	subFilters subscriberFilters // compiled subscriber filters (select.go)
	budgets    budgets           // rate budgets (budget.go)
	docs       docCache          // objects and authors fetched for filters (docfetch.go)

	events   Observer       // Config.Events, or a NopObserver
	software softwareBook   // software family of subscribed hosts
	schemes  signingSchemes // how subscribers take signatures (signature.go)
	activity activityLog    // counts for the status page and the log summary
	health   healthState    // what /readyz reports on
}

// Store key under which the relay's private key is kept (PKCS#8 PEM).
const keyValueName = "relay/private-key.pem"

// New validates cfg (see Config.Validate), loads the relay key (see
// Config.PrivateKeyPEM) and returns a Relay ready to serve. Deliveries
// start only after Start.
//
// Within one process, relays must be told apart by their accounts
// (acct:Username@host, host with BaseURL's port unless it is the scheme's
// default), for WebFinger could answer for only one of them: New returns
// an error wrapping ErrAccountTaken while another open relay on the same
// host claims the same account, one whose Username is one of the other's
// topic accounts (acct:tag.cats@host), or offers topics too, unless the
// two offer no topic in common (Config.Topics: Disabled, or disjoint
// Allow lists) or have the same BaseURL (then their topic actors are the
// same). The error names the account and the setting to change. Close
// releases the accounts; a Relay never closed keeps them for the life of
// the process.
func New(cfg Config) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, _ := parseBaseURL(cfg.BaseURL)
	setDefaults(&cfg, base)
	var err error
	if cfg.Topics.Allow, err = normalizeTopicList(cfg.Topics.Allow); err != nil {
		return nil, err
	}
	if cfg.Topics.Block, err = normalizeTopicList(cfg.Topics.Block); err != nil {
		return nil, err
	}

	r := &Relay{
		cfg:       cfg,
		store:     cfg.Store,
		transport: cfg.Transport,
		log:       cfg.Logger,
		policy:    cfg.FollowPolicy,
		clock:     cfg.Clock,
		now:       cfg.Clock.Now,
		base:      base,
		prefix:    base.Path,
		closed:    make(chan struct{}),
	}
	if r.store == nil {
		r.store = memstore.New()
		r.ownsStore = true
	}
	r.events = eventsOf(&cfg)
	if cfg.Events != nil {
		r.store = observedStore{Store: r.store, ev: r.events}
	}
	r.guard = newGuard(&cfg)
	if r.transport == nil {
		r.transport = defaultTransport(r.guard)
	}
	r.transport = &guardedTransport{next: r.transport, g: r.guard}
	r.keyLimit = newLimiter(cfg.KeyFetchLimit)
	r.keyAll = newLimiter(cfg.KeyFetchTotalLimit)
	r.keySub = newLimiter(RateLimit{Rate: 10 * cfg.KeyFetchTotalLimit.Rate, Burst: 10 * max(cfg.KeyFetchTotalLimit.Burst, 1)})
	r.inLimit = newLimiter(cfg.InboxLimit)
	r.sigFail = newLimiter(cfg.SignatureFailureLimit)
	r.sigFailS = newLimiter(RateLimit{Rate: 10 * cfg.SignatureFailureLimit.Rate, Burst: 10 * max(cfg.SignatureFailureLimit.Burst, 1)})
	r.actorID = base.String() + "/actor"
	r.inboxURL = base.String() + "/inbox"
	r.keyID = r.actorID + "#main-key"

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.accounts = &accountClaim{base: base.String(), host: r.acctHost(), user: strings.ToLower(cfg.Username)}
	if !cfg.Topics.Disabled {
		r.accounts.topics = &r.cfg.Topics
	}
	if err := claimAccounts(r.accounts); err != nil {
		return nil, err
	}
	claimed := true
	defer func() {
		if claimed {
			releaseAccounts(r.accounts)
		}
	}()
	key, err := r.loadKey(ctx)
	if err != nil {
		return nil, err
	}
	blocked, err := r.readBlocked(ctx)
	if err != nil {
		return nil, err
	}
	r.guard.blocked.set(blocked)
	r.rules = newFollowRules(r, cfg.Rules)
	r.policy = r.rules.policy(cfg.FollowPolicy)
	if _, err := r.reloadAllowed(ctx); err != nil {
		return nil, err
	}
	if err := r.loadTopics(ctx); err != nil {
		return nil, err
	}
	r.signer = &httpsig.Signer{KeyID: r.keyID, Key: key}
	if r.pubPEM, err = httpsig.MarshalPublicKeyPEM(&key.PublicKey); err != nil {
		return nil, err
	}
	r.keys = newKeyCache(r)
	r.enqueueChunk = enqueueChunk
	r.queue = newDeliveryQueue(r)
	r.handler = r.routes()
	claimed = false // the Relay holds the account until Close
	return r, nil
}

func setDefaults(cfg *Config, base *url.URL) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = "fedirelay"
	}
	if cfg.FollowPolicy == nil {
		cfg.FollowPolicy = AcceptAll
		if cfg.ApprovalRequired {
			cfg.FollowPolicy = ManualApproval
		}
	}
	if cfg.Username == "" {
		cfg.Username = defaultUsername
	}
	if cfg.ActorType == "" {
		cfg.ActorType = defaultActorType
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.SignatureMaxAge <= 0 {
		cfg.SignatureMaxAge = httpsig.DefaultMaxSignatureAge
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = httpsig.DefaultMaxClockSkew
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 48 * time.Hour
	}
	if cfg.KeyCacheTTL <= 0 {
		cfg.KeyCacheTTL = time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 128
	}
	if cfg.PerHostWorkers <= 0 {
		cfg.PerHostWorkers = 4
	}
	if cfg.SlowHostWorkers <= 0 {
		cfg.SlowHostWorkers = max(cfg.Workers/4, 1)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.MinRequestTimeout <= 0 {
		cfg.MinRequestTimeout = 5 * time.Second
	}
	cfg.MinRequestTimeout = min(cfg.MinRequestTimeout, cfg.RequestTimeout)
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 10*cfg.RequestTimeout + time.Minute
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 30 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 12
	}
	if cfg.BreakerThreshold == 0 {
		cfg.BreakerThreshold = 5
	}
	if cfg.BreakerCooloff <= 0 {
		cfg.BreakerCooloff = time.Minute
	}
	if cfg.DormantAfter == 0 {
		cfg.DormantAfter = 7 * 24 * time.Hour
	}
	if cfg.MaxHostBacklog == 0 {
		cfg.MaxHostBacklog = 10000
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "fedirelay/" + Version + " (+" + base.String() + ")"
	}
	if cfg.KeyFetchTimeout <= 0 {
		cfg.KeyFetchTimeout = defaultKeyFetchTimeout
	}
	if cfg.KeyFetchLimit == (RateLimit{}) {
		cfg.KeyFetchLimit = defaultKeyFetchLimit
	}
	if cfg.KeyFetchTotalLimit == (RateLimit{}) {
		cfg.KeyFetchTotalLimit = defaultKeyFetchTotalLimit
	}
	if cfg.InboxLimit == (RateLimit{}) {
		cfg.InboxLimit = defaultInboxLimit
	}
	if cfg.SignatureFailureLimit == (RateLimit{}) {
		cfg.SignatureFailureLimit = defaultSignatureFailures
	}
	if cfg.MaxActivityAge <= 0 {
		cfg.MaxActivityAge = defaultMaxActivityAge
	}
}

// loadKey returns Config.PrivateKeyPEM's key if set, else the relay's RSA
// key from the store, generating and storing one if there is none.
// Concurrent processes sharing a store end up with the same key because
// CreateValue keeps the first one stored.
func (r *Relay) loadKey(ctx context.Context) (*rsa.PrivateKey, error) {
	if len(r.cfg.PrivateKeyPEM) > 0 {
		return httpsig.ParsePrivateKeyPEM(r.cfg.PrivateKeyPEM) // checked by Validate
	}
	pemBytes, err := r.store.GetValue(ctx, keyValueName)
	if errors.Is(err, store.ErrNotFound) {
		key, err := httpsig.GenerateKey()
		if err != nil {
			return nil, err
		}
		fresh, err := httpsig.MarshalPrivateKeyPEM(key)
		if err != nil {
			return nil, err
		}
		if pemBytes, err = r.store.CreateValue(ctx, keyValueName, fresh); err != nil {
			return nil, fmt.Errorf("relay: storing key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("relay: loading key: %w", err)
	}
	key, err := httpsig.ParsePrivateKeyPEM(pemBytes)
	if err != nil {
		return nil, wrapf(err, "stored key %q", keyValueName)
	}
	return key, nil
}

// ActorID returns the relay actor's id, BaseURL + "/actor".
func (r *Relay) ActorID() string { return r.actorID }

// InboxURL returns the relay's inbox, BaseURL + "/inbox": the URL that
// Mastodon and Misskey admins enter to subscribe.
func (r *Relay) InboxURL() string { return r.inboxURL }

// Store returns the store the relay uses.
func (r *Relay) Store() store.Store { return r.baseStore() }

// untilClosed returns a context with parent's values but not its end,
// which ends when the relay closes or cancel is called: for background
// work that Close must stop.
func (r *Relay) untilClosed(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	go func() {
		select {
		case <-r.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Start starts delivering queued activities in the background, and the
// background work: reloading the block list and policies, summaries, and
// learning the software of accepted subscribers stored without it (their
// NodeInfo, read once per host after Start and again daily while it
// cannot be, with the relay's guarded fetches). It does not wait for any
// of it. It returns an error if the relay is closed or already started.
func (r *Relay) Start() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	select {
	case <-r.closed:
		return ErrClosed
	default:
	}
	if err := r.queue.start(); err != nil {
		return err
	}
	r.bg.Add(3)
	go r.refreshPolicies()
	go r.logSummaries()
	go r.learnMissingSoftware()
	return nil
}

// Close stops the relay without losing accepted work. The inbox answers
// 503 from then on, and requests being handled finish (an activity is
// accepted only once it is stored, so nothing answered 202 is lost). The
// delivery attempts in flight finish; deliveries leased but not started are
// released at once; everything not delivered stays queued in the store for
// the next Start (with a durable store, in the next process). Delivery
// statistics kept in memory and pending completions are written to the
// store. If ctx ends first, the requests in flight are cancelled (their
// deliveries are released, to be attempted again later: at-least-once, a
// receiver may see a copy twice) and Close returns ctx.Err(). Closing a
// closed relay returns nil. Close closes the store only if the relay
// created it.
func (r *Relay) Close(ctx context.Context) error {
	r.closeMu.Lock()
	select {
	case <-r.closed:
		r.closeMu.Unlock()
		return nil
	default:
	}
	close(r.closed)
	r.closeMu.Unlock()
	defer releaseAccounts(r.accounts)

	done := make(chan struct{})
	go func() { r.inflight.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if qerr := r.queue.stop(ctx); err == nil {
		err = qerr
	}
	r.bg.Wait()
	if r.ownsStore {
		if c, ok := r.store.(interface{ Close() error }); ok {
			_ = c.Close()
		}
	}
	return err
}

func (r *Relay) isClosed() bool {
	select {
	case <-r.closed:
		return true
	default:
		return false
	}
}

// newID returns a fresh id for one of the relay's own activities.
func (r *Relay) newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return r.base.String() + "/activities/" + hex.EncodeToString(b[:])
}
