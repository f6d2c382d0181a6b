package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// Canonical hosts.
//
// Every per-host key the relay keeps (rate limits, key-fetch caps and
// budgets, delivery breakers and backlogs, the block list, a subscriber's
// host, deduplication of inboxes) uses one spelling of a host, so that
// spellings that reach the same server share one key:
//
//   - lower case;
//   - no trailing dot (example.org. is example.org);
//   - a numeric port without leading zeros (:07001 is :7001), and no port
//     at all when it is the scheme's default (https :443, http :80), or
//     when it is empty ("example.org:");
//   - IPv6 literals in brackets, in their shortest form ([2001:DB8:0::1] is
//     [2001:db8::1]); IPv4 literals in dotted decimal (other spellings are
//     not IP literals to Go's dialer, but names that fail to resolve);
//   - ASCII only: a host with other characters, such as a Unicode domain
//     name, is refused rather than converted. Fediverse servers publish
//     their ids with the ASCII (punycode, xn--) form of their domain, which
//     is what Mastodon and Misskey normalise to; converting would take
//     golang.org/x/net/idna (UTS 46 mapping and normalisation), which the
//     standard library does not export, and a converter that differed
//     from the dialer's would create exactly the second spelling this
//     rule removes.
//
// A host that cannot be put in this form (a port out of range or not a
// number, an empty label, a zone, characters outside letters, digits,
// '-', '_' and '.') is refused wherever it appears: in ids, keyIds,
// inboxes and fetched URLs.

// errBadHost wraps every error of canonicalHost.
var errBadHost = errors.New("relay: unusable host")

// canonicalHost returns the canonical form (see above) of hostport, the
// host[:port] of a URL with the given scheme.
func canonicalHost(scheme, hostport string) (string, error) {
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return "", err
	}
	if port, err = canonicalPort(scheme, port); err != nil {
		return "", fmt.Errorf("%w: %q: %v", errBadHost, hostport, err)
	}
	if strings.HasPrefix(host, "[") {
		ip, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", fmt.Errorf("%w: %q is not an IPv6 address", errBadHost, hostport)
		}
		host = "[" + ip.String() + "]"
	} else if host, err = canonicalName(host); err != nil {
		return "", fmt.Errorf("%w: %q: %v", errBadHost, hostport, err)
	}
	if port != "" {
		return host + ":" + port, nil
	}
	return host, nil
}

// splitHostPort splits host[:port] or [v6][:port]; the port may be empty.
func splitHostPort(hostport string) (host, port string, err error) {
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", "", fmt.Errorf("%w: %q: missing ']'", errBadHost, hostport)
		}
		host, rest := hostport[:end+1], hostport[end+1:]
		if rest != "" && rest[0] != ':' {
			return "", "", fmt.Errorf("%w: %q: junk after ']'", errBadHost, hostport)
		}
		return host, strings.TrimPrefix(rest, ":"), nil
	}
	host, port, _ = strings.Cut(hostport, ":")
	if strings.Contains(port, ":") {
		return "", "", fmt.Errorf("%w: %q: more than one ':'", errBadHost, hostport)
	}
	return host, port, nil
}

// canonicalPort returns port as a decimal number without leading zeros,
// or "" if it is empty or the default port of scheme.
func canonicalPort(scheme, port string) (string, error) {
	if port == "" {
		return "", nil
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return "", fmt.Errorf("port %q is not a number", port)
		}
	}
	trimmed := strings.TrimLeft(port, "0")
	if len(trimmed) > 5 {
		return "", fmt.Errorf("port %q is out of range", port)
	}
	n, _ := strconv.Atoi(trimmed)
	switch {
	case n < 1 || n > 65535:
		return "", fmt.Errorf("port %q is out of range", port)
	case n == 443 && scheme == "https", n == 80 && scheme == "http":
		return "", nil
	}
	return strconv.Itoa(n), nil
}

// canonicalName lower-cases a host name or IPv4 literal and drops one
// trailing dot. It refuses empty names and labels, and characters other
// than ASCII letters, digits, '-', '_' and '.'.
func canonicalName(name string) (string, error) {
	name = strings.TrimSuffix(name, ".") // one root dot: "example.org."
	if name == "" {
		return "", errors.New("empty host")
	}
	if strings.HasSuffix(name, ".") {
		return "", errors.New("empty label")
	}
	b := []byte(name)
	for i, c := range b {
		switch {
		case c >= 'A' && c <= 'Z':
			b[i] = c + 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			if i == 0 || b[i-1] == '.' {
				return "", errors.New("empty label")
			}
		default:
			return "", fmt.Errorf("character %q is not allowed in a host name (Unicode names must be given in their xn-- form)", rune(c))
		}
	}
	return string(b), nil
}

// hostOf returns the canonical host[:port] of the absolute URL s, or "" if
// s is not a URL or its host cannot be put in canonical form.
func hostOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	h, err := canonicalHost(u.Scheme, u.Host)
	if err != nil {
		return ""
	}
	return h
}

// originOf returns scheme://canonical-host[:port] of the absolute http(s)
// URL s, or "" if s has no usable origin.
func originOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return urlOrigin(u)
}

// urlOrigin is originOf for a parsed URL.
func urlOrigin(u *url.URL) string {
	if u == nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return ""
	}
	h, err := canonicalHost(u.Scheme, u.Host)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + h
}

// sameOrigin reports whether two http(s) URLs share scheme and canonical
// host (with port). URLs without a usable origin share none.
func sameOrigin(a, b string) bool {
	oa := originOf(a)
	return oa != "" && oa == originOf(b)
}

// inboxKey returns the key under which deliveries to the inbox URL s are
// deduplicated: its origin and cleaned path, without query or fragment.
// Spellings of one inbox that a server routes alike (a query string,
// the case of scheme or host, a default port, a fragment, "//", "/./" or a
// trailing "/") share one key, so a fan-out sends one copy to it however
// many subscribers name it. It returns s itself when s has no usable
// origin.
func inboxKey(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	origin := urlOrigin(u)
	if origin == "" {
		return s
	}
	p := path.Clean("/" + u.Path)
	return origin + strings.TrimSuffix(p, "/")
}
