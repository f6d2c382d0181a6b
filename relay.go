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
// begin delivering, and Close to stop:
//
//	r, err := relay.New(relay.Config{BaseURL: "https://relay.example.org"})
//	if err != nil { ... }
//	mux.Handle("/", r.Handler())
//	r.Start()
//	defer r.Close(context.Background())
//
// State (subscribers, the relay key, the delivery queue) lives in a
// store.Store; the default is in memory and lost on restart.
package relay

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

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
}

// FollowPolicy decides what happens to a subscription request. It returns
// a decision and, for a rejection, a reason kept in the subscriber's Note.
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
	// connection reuse, HTTP/2 and timeouts is used.
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
	// fetched again (a failing signature always triggers one refetch).
	// Default 1 hour.
	KeyCacheTTL time.Duration

	// Workers is the number of deliveries in flight at once; they wait on
	// the network concurrently while signing uses every core. Default
	// 16 × GOMAXPROCS. PerHostWorkers caps the deliveries in flight to one
	// host so a slow host cannot take them all. Default 4.
	Workers        int
	PerHostWorkers int

	// RequestTimeout bounds each outbound request, from dialling to the end
	// of the response. Default 30 seconds.
	RequestTimeout time.Duration

	// RetryBackoff is the delay before the first retry of a failed
	// delivery; it doubles on every attempt, with jitter, up to 6 hours.
	// MaxAttempts is how many attempts a delivery gets before it is dropped.
	// Defaults 30 seconds and 12 (about two days of retries).
	RetryBackoff time.Duration
	MaxAttempts  int

	// UserAgent is sent with every outbound request. Default
	// "fedirelay/<Version> (+<BaseURL>)".
	UserAgent string
}

// Relay is a fediverse relay. Create it with New; its methods are safe for
// concurrent use.
type Relay struct {
	cfg       Config
	store     store.Store
	ownsStore bool
	transport Transport
	log       *slog.Logger
	policy    FollowPolicy
	now       func() time.Time

	base     *url.URL
	prefix   string // BaseURL path without trailing slash
	actorID  string
	inboxURL string
	keyID    string
	signer   *Signer
	pubPEM   string
	keys     *keyCache
	handler  http.Handler
	queue    *deliveryQueue
	closed   chan struct{}
	closeMu  sync.Mutex
	inflight sync.WaitGroup // inbox requests being handled
}

// Store key under which the relay's private key is kept (PKCS#8 PEM).
const keyValueName = "relay/private-key.pem"

// New validates cfg, loads the relay key from the store (generating and
// storing one on first use) and returns a Relay ready to serve. Deliveries
// start only after Start.
func New(cfg Config) (*Relay, error) {
	base, err := url.Parse(strings.TrimSpace(cfg.BaseURL))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("relay: BaseURL must be an absolute http(s) URL, got %q", cfg.BaseURL)
	}
	if base.RawQuery != "" || base.Fragment != "" || base.User != nil {
		return nil, fmt.Errorf("relay: BaseURL %q must not have a query, fragment or user info", cfg.BaseURL)
	}
	base.Host = strings.ToLower(base.Host)
	base.Path = strings.TrimSuffix(base.Path, "/")
	base.RawPath = ""
	setDefaults(&cfg, base)

	r := &Relay{
		cfg:       cfg,
		store:     cfg.Store,
		transport: cfg.Transport,
		log:       cfg.Logger,
		policy:    cfg.FollowPolicy,
		now:       time.Now,
		base:      base,
		prefix:    base.Path,
		closed:    make(chan struct{}),
	}
	if r.store == nil {
		r.store = memstore.New()
		r.ownsStore = true
	}
	if r.transport == nil {
		r.transport = defaultTransport()
	}
	r.actorID = base.String() + "/actor"
	r.inboxURL = base.String() + "/inbox"
	r.keyID = r.actorID + "#main-key"

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key, err := r.loadKey(ctx)
	if err != nil {
		return nil, err
	}
	r.signer = &Signer{KeyID: r.keyID, Key: key}
	if r.pubPEM, err = MarshalPublicKeyPEM(&key.PublicKey); err != nil {
		return nil, err
	}
	r.keys = newKeyCache(r)
	r.queue = newDeliveryQueue(r)
	r.handler = r.routes()
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
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.SignatureMaxAge <= 0 {
		cfg.SignatureMaxAge = DefaultMaxSignatureAge
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultMaxClockSkew
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 48 * time.Hour
	}
	if cfg.KeyCacheTTL <= 0 {
		cfg.KeyCacheTTL = time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16 * runtime.GOMAXPROCS(0)
	}
	if cfg.PerHostWorkers <= 0 {
		cfg.PerHostWorkers = 4
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 30 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 12
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "fedirelay/" + Version + " (+" + base.String() + ")"
	}
}

// defaultTransport is an http.Transport tuned for fan-out: connection reuse
// with several idle connections per host, HTTP/2 when the peer offers it,
// and connect, TLS and response-header timeouts.
func defaultTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// loadKey returns the relay's RSA key from the store, generating and
// storing one if there is none. Concurrent processes sharing a store end up
// with the same key because CreateValue keeps the first one stored.
func (r *Relay) loadKey(ctx context.Context) (*rsa.PrivateKey, error) {
	pemBytes, err := r.store.GetValue(ctx, keyValueName)
	if errors.Is(err, store.ErrNotFound) {
		key, err := GenerateKey()
		if err != nil {
			return nil, fmt.Errorf("relay: generating key: %w", err)
		}
		fresh, err := MarshalPrivateKeyPEM(key)
		if err != nil {
			return nil, err
		}
		if pemBytes, err = r.store.CreateValue(ctx, keyValueName, fresh); err != nil {
			return nil, fmt.Errorf("relay: storing key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("relay: loading key: %w", err)
	}
	key, err := ParsePrivateKeyPEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("relay: stored key %q: %w", keyValueName, err)
	}
	return key, nil
}

// ActorID returns the relay actor's id, BaseURL + "/actor".
func (r *Relay) ActorID() string { return r.actorID }

// InboxURL returns the relay's inbox, BaseURL + "/inbox": the URL that
// Mastodon and Misskey admins enter to subscribe.
func (r *Relay) InboxURL() string { return r.inboxURL }

// Store returns the store the relay uses.
func (r *Relay) Store() store.Store { return r.store }

// Start starts delivering queued activities in the background. It returns
// an error if the relay is closed or already started.
func (r *Relay) Start() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	select {
	case <-r.closed:
		return ErrClosed
	default:
	}
	return r.queue.start()
}

// Close stops the relay: the inbox answers 503 from then on, requests being
// handled finish, and in-flight deliveries complete. Queued deliveries that
// were not attempted stay in the store for the next Start (with a durable
// store). If ctx ends first, in-flight deliveries are cancelled (they stay
// queued and are retried later) and Close returns ctx.Err(). Closing a
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
