package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrOutboundRefused is wrapped by the error of every outbound request the
// outbound guard refuses: a URL that is not https (unless Config.AllowHTTP),
// has user info or is on a blocked domain, or an address that is private,
// loopback, link-local, multicast or otherwise reserved (unless listed in
// Config.AllowPrivate).
var ErrOutboundRefused = errors.New("relay: outbound request refused")

// reservedV4 are the IPv4 ranges the relay never connects to by default:
// "this network", private, CGNAT, loopback, link-local, IETF protocol
// assignments, documentation, 6to4 relay anycast, benchmarking, multicast
// and reserved (including broadcast).
var reservedV4 = mustPrefixes(
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
	"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)

// globalV6 is the IPv6 global unicast range; everything outside it
// (loopback, unspecified, IPv4-mapped and NAT64, unique local, link-local,
// multicast, discard) is refused, and so are the reservedV6 ranges inside it.
var globalV6 = netip.MustParsePrefix("2000::/3")

// reservedV6 are the non-global ranges inside 2000::/3: IETF protocol
// assignments (Teredo, benchmarking, ORCHID), documentation and 6to4.
var reservedV6 = mustPrefixes("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// guard is the relay's outbound policy: which URLs it may request and
// which addresses it may connect to.
type guard struct {
	allow     []netip.Prefix
	allowHTTP bool
	blocked   *blockList
}

func newGuard(cfg *Config) *guard {
	return &guard{allow: cfg.AllowPrivate, allowHTTP: cfg.AllowHTTP, blocked: newBlockList(cfg.BlockedDomains)}
}

// allowedAddr reports whether the relay may connect to ip.
func (g *guard) allowedAddr(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return false
	}
	for _, p := range g.allow {
		if p.Contains(ip) {
			return true
		}
	}
	if ip.Is4() {
		for _, p := range reservedV4 {
			if p.Contains(ip) {
				return false
			}
		}
		return true
	}
	if !globalV6.Contains(ip) {
		return false
	}
	for _, p := range reservedV6 {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// checkURL is the check every outbound request (fetch, redirect hop,
// delivery) passes before it is sent: https (or http if allowed), a host,
// no user info, no blocked domain, and no refused IP literal.
func (g *guard) checkURL(u *url.URL) error { return g.checkURLExcept(u, "") }

// checkURLExcept is checkURL, except that the URL allowedBlocked, exactly,
// may be on a blocked domain (see withBlockedException). Every other check
// still applies.
func (g *guard) checkURLExcept(u *url.URL, allowedBlocked string) error {
	if u == nil {
		return fmt.Errorf("%w: no URL", ErrOutboundRefused)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && g.allowHTTP:
	default:
		return fmt.Errorf("%w: %s: scheme %q is not allowed", ErrOutboundRefused, u.Redacted(), u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: %s: URL has user info", ErrOutboundRefused, u.Redacted())
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%w: %s: URL has no host", ErrOutboundRefused, u.Redacted())
	}
	if _, err := canonicalHost(u.Scheme, u.Host); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrOutboundRefused, u.Redacted(), err)
	}
	if g.blocked.contains(host) && (allowedBlocked == "" || u.String() != allowedBlocked) {
		return fmt.Errorf("%w: %s is on a blocked domain", ErrOutboundRefused, host)
	}
	if ip, err := netip.ParseAddr(host); err == nil && !g.allowedAddr(ip) {
		return fmt.Errorf("%w: %s is a private or reserved address", ErrOutboundRefused, host)
	}
	return nil
}

// internalSuffixes are names that only mean something inside a network:
// special-use and private-use domains (RFC 6761, RFC 6762, RFC 8375) and
// the names cloud platforms give their metadata services
// (metadata.google.internal).
var internalSuffixes = []string{"localhost", "local", "internal", "home.arpa", "lan", "intranet"}

// checkObjectIRI is the check every object IRI the relay passes on to its
// subscribers (the object of a relayed activity, which receivers fetch)
// must pass: an absolute http(s) URL that checkIRI accepts (a canonical
// host, no user info), no longer than maxIDLength, that the outbound guard
// would request (https unless Config.AllowHTTP, no blocked domain, no IP
// literal in a private or reserved range unless Config.AllowPrivate allows
// it), and whose host is not a single label (resolved through search
// domains) or an internal name (internalSuffixes). So no javascript: or
// data: IRI, and no cloud metadata address, is ever announced.
func (g *guard) checkObjectIRI(s string) error {
	if len(s) > maxIDLength {
		return fmt.Errorf("object IRI is %d bytes long, over the %d-byte limit for ids", len(s), maxIDLength)
	}
	if err := checkIRI(s); err != nil {
		return err
	}
	u, _ := url.Parse(s) // checkIRI parsed it
	if err := g.checkURL(u); err != nil {
		return err
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if _, err := netip.ParseAddr(host); err == nil {
		return nil // checked by checkURL
	}
	if !strings.Contains(host, ".") {
		return fmt.Errorf("%q: a host name of one label is not public", s)
	}
	for _, suffix := range internalSuffixes {
		if host == suffix || strings.HasSuffix(host, "."+suffix) {
			return fmt.Errorf("%q: %s is an internal name", s, host)
		}
	}
	return nil
}

// control is a net.Dialer Control function: it runs for every address a
// host name resolved to, after resolution and before connecting, so a name
// that resolves (or is rebound) to a private address is refused.
func (g *guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse address %q", ErrOutboundRefused, address)
	}
	if !g.allowedAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s is a private or reserved address", ErrOutboundRefused, ap.Addr())
	}
	return nil
}

// guardedTransport applies the guard's URL checks to every request before
// handing it to the underlying Transport.
type guardedTransport struct {
	next Transport
	g    *guard
}

// blockedExceptionKey is the context key of withBlockedException.
type blockedExceptionKey struct{}

// withBlockedException returns a context under which the outbound guard
// lets requests to exactly rawURL through although its domain is blocked.
// It exists for one purpose: answering a Follow from a blocked domain with
// a Reject (see rejectBlockedFollow). A redirect to any other URL is
// still refused.
func withBlockedException(ctx context.Context, rawURL string) context.Context {
	return context.WithValue(ctx, blockedExceptionKey{}, rawURL)
}

func (t *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	allowed, _ := req.Context().Value(blockedExceptionKey{}).(string)
	if err := t.g.checkURLExcept(req.URL, allowed); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	return t.next.RoundTrip(req)
}

// Timeouts of the default transport (Mastodon uses 5 s to connect and 10 s
// to read). Config.RequestTimeout bounds each whole request.
const (
	dialTimeout           = 5 * time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	responseHeaderTimeout = 20 * time.Second
)

// maxIdleConns bounds the idle connections the default transport keeps for
// reuse. It is well above the number of deliveries in flight
// (Config.Workers + Config.SlowHostWorkers, 160 by default), so steady
// fan-out to a few hundred hosts
// reuses its connections, while a relay with thousands of subscribed hosts
// does not keep one open to each (1,000 idle connections held ≈ 25 MB).
const maxIdleConns = 256

// defaultTransport is an http.Transport tuned for fan-out: connection reuse
// with several idle connections per host (up to maxIdleConns in all, each
// costing ≈ 25 kB of buffers and goroutine stacks), HTTP/2 when the peer offers it,
// connect, TLS and response-header timeouts, and the guard's address check
// at dial time. It uses no proxy: the guard checks the address it dials, so
// a proxy would hide the real destination from it. To use a proxy, supply
// your own Config.Transport (and your own address checks).
func defaultTransport(g *guard) *http.Transport {
	return &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   dialTimeout,
			KeepAlive: 30 * time.Second,
			Control:   g.control,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: responseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// domainSet is a set of blocked domains; a domain also covers its
// subdomains.
type domainSet map[string]bool

func newDomainSet(domains []string) domainSet {
	s := domainSet{}
	for _, d := range domains {
		if d = normalizeDomain(d); d != "" {
			s[d] = true
		}
	}
	return s
}

// normalizeDomain returns the canonical form (see canonicalHost) of the
// domain or host d without its port, after dropping surrounding space and
// a leading "*." or ".": block-list entries and the hosts they are matched
// against are compared in that form. IPv6 literals lose their brackets. A
// d with no canonical form is only lower-cased.
func normalizeDomain(d string) string {
	d = strings.ToLower(strings.TrimSpace(d))
	d = strings.TrimPrefix(strings.TrimPrefix(d, "*."), ".")
	host, _, err := splitHostPort(d)
	if err != nil {
		return d
	}
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return ip.WithZone("").String()
	}
	if h, err := canonicalName(host); err == nil {
		return h
	}
	return strings.TrimSuffix(host, ".")
}

// contains reports whether host (with or without a port) is a blocked
// domain or a subdomain of one.
func (s domainSet) contains(host string) bool {
	if len(s) == 0 {
		return false
	}
	h := normalizeDomain(host)
	if _, err := netip.ParseAddr(h); err == nil {
		return s[h] // an IP address has no parent domains
	}
	for h != "" {
		if s[h] {
			return true
		}
		_, rest, ok := strings.Cut(h, ".")
		if !ok {
			return false
		}
		h = rest
	}
	return false
}

// blockedURL reports whether the host of rawURL is blocked.
func (s domainSet) blockedURL(rawURL string) bool {
	if len(s) == 0 || rawURL == "" {
		return false
	}
	u, err := url.Parse(rawURL)
	return err == nil && s.contains(u.Host)
}
