package relay

// The relay's use of package httpsig: authenticating an inbox request (its
// draft-cavage or RFC 9421 signature checked against the signer's key) and
// signing the relay's own deliveries.

import (
	"context"
	"crypto"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
)

func (r *Relay) verifyOptions() httpsig.VerifyOptions {
	return httpsig.VerifyOptions{Now: r.now(), MaxAge: r.cfg.SignatureMaxAge, MaxFuture: r.cfg.ClockSkew}
}

// authenticate returns the actor that signed m: its signature verified
// (see verifySignature), the signer's software noted from its User-Agent,
// and its host's request budget taken (429 when spent). It returns an
// error wrapping errGone when the key's document is gone.
func (r *Relay) authenticate(ctx context.Context, m *message) (*remoteActor, error) {
	key, err := r.verifySignature(ctx, m.req, m.sig)
	if errors.Is(err, errGone) {
		return nil, err
	}
	if err != nil {
		return nil, badSignature("key", err)
	}
	host := hostOf(key.ID)
	r.software.learn(host, m.req.UserAgent())
	if ok, after := r.inLimit.allow(host, r.now()); !ok {
		return nil, refuseRetry(http.StatusTooManyRequests, after, "too many requests from %s", host)
	}
	return key.Owner, nil
}

// verifySignature verifies the request's signature with the signer's key,
// fetching it (cached; fetched again if verification fails, in case the key
// was rotated, unless it was fetched less than keyRefetchInterval ago, in
// which case the failure is a 401 without any fetch). An expired key of a
// subscribed host is used while it is fetched again (see keyCache.get). It
// waits at most Config.KeyFetchTimeout for keys. It returns an error
// wrapping errGone when the key's document is gone, and an *inboxError
// otherwise.
//
// A request whose signature does not verify takes a token from the keyId
// host's budget of failures (Config.SignatureFailureLimit); while it is
// spent, the host's requests get 429 before any verification. Each key is
// tried with at most maxVerificationsPerKey signing strings (or signature
// bases), and at most two keys are tried: the cached one and, at most
// once per keyRefetchInterval, a fresh copy.
func (r *Relay) verifySignature(ctx context.Context, req *http.Request, sig inboundSignature) (*remoteKey, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.KeyFetchTimeout)
	defer cancel()
	keyID := sig.keyID()
	kh := r.keyHostOf(keyID) // asks the store at most once for the request
	if spent, after := r.signatureFailuresSpent(ctx, kh); spent {
		return nil, refuseRetry(http.StatusTooManyRequests, after, "too many signatures of %s did not verify", kh.host)
	}
	key, err := r.keys.get(ctx, keyID, nil, kh)
	if err != nil {
		return nil, r.keyError(keyID, err)
	}
	verr := sig.verify(req, key.Key)
	if verr == nil {
		key.markVerified()
		return key, nil
	}
	fresh, err := r.keys.get(ctx, keyID, key, kh)
	switch {
	case errors.Is(err, errRefetchTooSoon):
		r.countSignatureFailure(ctx, kh)
		return nil, badSignature("invalid", refuse(http.StatusUnauthorized, "%v", verr))
	case err != nil:
		return nil, r.keyError(keyID, err)
	}
	if err := sig.verify(req, fresh.Key); err != nil {
		r.countSignatureFailure(ctx, kh)
		return nil, badSignature("invalid", refuse(http.StatusUnauthorized, "%v", err))
	}
	fresh.markVerified()
	return fresh, nil
}

// keyError maps a key lookup failure to the inbox's answer: 429 when the
// keyId host's fetch budget is spent, 503 when the key server did not
// answer in time or too many keys are being fetched (the sender should
// retry), 401 otherwise. A 401 says only that the key could not be got:
// the sender chose the keyId, and the status, content type or connection
// error of the URL would make the relay a prober of any URL. The details
// are logged at debug level.
func (r *Relay) keyError(keyID string, err error) error {
	var rl *rateLimitedError
	var ne net.Error
	switch {
	case errors.Is(err, errGone):
		return err
	case errors.As(err, &rl):
		return refuseRetry(http.StatusTooManyRequests, rl.after, "cannot get key %s: %v", keyID, err)
	case errors.Is(err, errKeyFetchesBusy):
		return refuseRetry(http.StatusServiceUnavailable, keyBusyRetryAfter, "cannot get key %s: %v", keyID, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return refuseRetry(http.StatusServiceUnavailable, keyRetryAfter, "cannot get key %s: timed out", keyID)
	}
	r.log.Debug("relay: inbox: cannot get key", "keyId", keyID, "err", err)
	return refuse(http.StatusUnauthorized, "cannot get key %s", keyID)
}

// keyBusyRetryAfter is the Retry-After sent when the key fetches in flight
// are at their cap (maxKeyFetchesPerHost for the keyId host, or
// maxKeyFetches for hosts without a subscriber).
const keyBusyRetryAfter = 10 * time.Second

// keyRetryAfter is the Retry-After sent when a key fetch timed out.
const keyRetryAfter = time.Minute

// inboundSignature is an incoming request's signature: draft-cavage or
// RFC 9421.
type inboundSignature interface {
	keyID() string
	rfc9421() bool
	check(req *http.Request, body []byte, opts httpsig.VerifyOptions) error
	verify(req *http.Request, pub crypto.PublicKey) error
}

// requestSignature returns the request's RFC 9421 signature if it has a
// Signature-Input header, else its draft-cavage signature.
//
// Behind a reverse proxy that rewrites Host (nginx's default proxy_pass,
// Apache without ProxyPreserveHost) the request's Host is not the one the
// sender signed: senders address the relay by its public URL. When the two
// differ, a signature is verified against the request's Host first, then
// against BaseURL's host.
func (r *Relay) requestSignature(req *http.Request) (inboundSignature, error) {
	publicHost := ""
	if !strings.EqualFold(req.Host, r.base.Host) {
		publicHost = r.base.Host
	}
	if len(req.Header.Values("Signature-Input")) == 0 {
		p, err := httpsig.FromRequest(req)
		if err != nil {
			return nil, err
		}
		return cavageSignature{p: p, publicHost: publicHost}, nil
	}
	m, err := httpsig.MessageSignatureFromRequest(req)
	if err != nil {
		return nil, err
	}
	// @target-uri is the URL the sender used: the relay's public scheme
	// (a TLS-terminating proxy hides it) with the request's host and path.
	s := &messageSignature{m: m, req: withURL(req, r.base.Scheme, req.Host)}
	if publicHost != "" {
		s.public = withURL(req, r.base.Scheme, publicHost)
	}
	return s, nil
}

// withURL returns a shallow copy of req addressed to scheme://host with
// req's path and query, and Host set to host.
func withURL(req *http.Request, scheme, host string) *http.Request {
	abs := *req
	u := *req.URL
	u.Scheme, u.Host = scheme, host
	abs.URL = &u
	abs.Host = host
	return &abs
}

type cavageSignature struct {
	p          *httpsig.SignatureParams
	publicHost string // BaseURL's host if the request's Host differs, else ""
}

func (s cavageSignature) keyID() string { return s.p.KeyID }

func (s cavageSignature) rfc9421() bool { return false }

func (s cavageSignature) check(req *http.Request, body []byte, opts httpsig.VerifyOptions) error {
	return s.p.Check(req, body, opts)
}

func (s cavageSignature) verify(req *http.Request, pub crypto.PublicKey) error {
	msgs, err := s.candidates(req)
	if err != nil {
		return err
	}
	for _, msg := range msgs {
		if err = s.p.VerifyString(msg, pub); err == nil {
			return nil
		}
	}
	return err
}

// maxVerificationsPerKey bounds the signing strings (or signature bases) a
// request's signature is verified against with one key: the request as
// received and one fallback. A verification with an 8,192-bit RSA key
// costs a few milliseconds, and every fallback multiplies that for forged
// requests.
const maxVerificationsPerKey = 2

// candidates returns the distinct signing strings the signature is
// verified against, in order, at most maxVerificationsPerKey: the request
// as received; then, when a reverse proxy rewrote Host and host is signed,
// the request with BaseURL's host; otherwise the request target without
// its query string (GoToSocial and Pleroma sign it so). Identical strings
// count once. A signing string that cannot be built is an error.
func (s cavageSignature) candidates(req *http.Request) ([]string, error) {
	first, err := s.p.SigningString(req, true)
	if err != nil {
		return nil, err
	}
	out := []string{first}
	add := func(r *http.Request, withQuery bool) {
		if len(out) == maxVerificationsPerKey {
			return
		}
		if msg, err := s.p.SigningString(r, withQuery); err == nil && !slices.Contains(out, msg) {
			out = append(out, msg)
		}
	}
	if s.publicHost != "" && slices.Contains(s.p.Headers, "host") {
		alt := *req
		alt.Host = s.publicHost
		add(&alt, true)
	}
	add(req, false)
	return out, nil
}

// messageSignature checks and verifies against req, the request with an
// absolute URL, whatever request it is given; and if that fails, against
// public, the same request addressed to BaseURL's host, when the request's
// Host differs from it.
type messageSignature struct {
	m      *httpsig.MessageSignature
	req    *http.Request
	public *http.Request
}

func (s *messageSignature) keyID() string { return s.m.KeyID }

func (s *messageSignature) rfc9421() bool { return true }

func (s *messageSignature) check(_ *http.Request, body []byte, opts httpsig.VerifyOptions) error {
	return s.m.Check(s.req, body, opts)
}

func (s *messageSignature) verify(_ *http.Request, pub crypto.PublicKey) error {
	err := s.m.Verify(s.req, pub)
	if err != nil && s.public != nil && s.m.Verify(s.public, pub) == nil {
		return nil
	}
	return err
}

// signDelivery signs a delivery POST for subscriber (an actor id, or ""
// for messages to non-subscribers): with draft-cavage by default, with RFC
// 9421 when the subscriber's SignatureScheme says it accepts it (set by the
// operator, or learnt from the subscriber's own signatures). If the
// subscriber cannot be read, draft-cavage is used. actor is the relay's
// actor that signs (the Delivery's Signer: "" for the relay actor, or a
// topic actor, whose keyId names it; see signerFor).
func (r *Relay) signDelivery(ctx context.Context, req *http.Request, body []byte, subscriber, actor string) error {
	signer := r.signerFor(actor)
	if subscriber != "" && r.schemes.rfc9421(ctx, r, subscriber) {
		return signer.SignRequestRFC9421(req, body, r.now())
	}
	return signer.SignRequest(req, body, r.now())
}

// schemeTTL is how long signingSchemes keeps a subscriber's
// SignatureScheme before reading it from the store again: how long a
// scheme set in the store by someone else (the operator, or another relay
// process sharing the store) may take to be used.
const schemeTTL = time.Minute

// maxSchemes bounds the subscribers signingSchemes keeps; past it, it
// starts afresh.
const maxSchemes = 100_000

// signingSchemes keeps, for a while, whether each subscriber takes RFC
// 9421 signatures, so that signing a delivery costs no store read (one
// per delivery otherwise, a query on a database store). Its zero value is
// empty and ready; it is safe for concurrent use.
type signingSchemes struct {
	mu sync.Mutex
	m  map[string]schemeEntry
	// forgets counts forget calls: a read of the store that one overlapped
	// may have read the older scheme, and is not kept.
	forgets uint64
}

type schemeEntry struct {
	rfc9421 bool
	until   time.Time
}

// rfc9421 reports whether deliveries to subscriber are signed with RFC
// 9421: what the store said at most schemeTTL ago. A subscriber the store
// cannot read is signed with draft-cavage, and asked about again next
// time.
func (c *signingSchemes) rfc9421(ctx context.Context, r *Relay, subscriber string) bool {
	now := r.now()
	c.mu.Lock()
	e, ok := c.m[subscriber]
	forgets := c.forgets
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.rfc9421
	}
	s, err := r.store.GetSubscriber(ctx, subscriber)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false
	}
	e = schemeEntry{rfc9421: err == nil && s.SignatureScheme == store.SignatureRFC9421, until: now.Add(schemeTTL)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgets != forgets {
		return e.rfc9421 // a change was recorded meanwhile: read again next time
	}
	if c.m == nil || len(c.m) >= maxSchemes {
		c.m = map[string]schemeEntry{}
	}
	c.m[subscriber] = e
	return e.rfc9421
}

// forget drops what c knows of subscriber, whose scheme this process just
// changed in the store.
func (c *signingSchemes) forget(subscriber string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, subscriber)
	c.forgets++
}
