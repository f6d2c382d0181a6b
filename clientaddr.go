package relay

import (
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr returns the address of the client that sent req, for logs:
// the peer address (req.RemoteAddr) unless the peer is one of
// Config.TrustedProxies, in which case the rightmost address of
// X-Forwarded-For that is not a trusted proxy (or, without that header,
// of Forwarded's for= parameters). A forwarding header that is malformed
// where it is read, or names only trusted proxies, gives the leftmost
// trusted hop it holds, or the peer address when it names none.
func (r *Relay) clientAddr(req *http.Request) string {
	if len(r.cfg.TrustedProxies) == 0 {
		return req.RemoteAddr
	}
	peer, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil || !r.trustedProxy(peer.Addr()) {
		return req.RemoteAddr
	}
	var hops []string
	if xff := req.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		for _, v := range xff {
			hops = append(hops, strings.Split(v, ",")...)
		}
	} else {
		hops = forwardedFor(req.Header.Values("Forwarded"))
	}
	client := req.RemoteAddr
	for i := len(hops) - 1; i >= 0; i-- {
		addr, ok := parseHop(hops[i])
		if !ok {
			break
		}
		client = addr.String()
		if !r.trustedProxy(addr) {
			break
		}
	}
	return client
}

// trustedProxy reports whether addr is in Config.TrustedProxies.
func (r *Relay) trustedProxy(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range r.cfg.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// parseHop parses one hop of X-Forwarded-For or a for= value of Forwarded
// (RFC 7239): an IP address, with a port or not, IPv6 in brackets or not,
// in quotes or not. Obfuscated identifiers ("_hidden", "unknown") are not
// addresses.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.Trim(strings.TrimSpace(s), `"`)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return a.Unmap(), err == nil
}

// forwardedFor returns the for= values of Forwarded header values, in
// order: elements are separated by commas, parameters by semicolons.
func forwardedFor(values []string) []string {
	var out []string
	for _, v := range values {
		for _, element := range strings.Split(v, ",") {
			for _, pair := range strings.Split(element, ";") {
				name, value, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(name, "for") {
					out = append(out, value)
				}
			}
		}
	}
	return out
}
