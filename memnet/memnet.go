// Package memnet is an in-memory HTTP network for tests.
//
// A Network maps host names (with an optional port) to http.Handlers and is itself an
// http.RoundTripper: a request is handed, without sockets, to the handler registered for the
// request URL's host. Any number of fake servers and the code under test can then talk to each
// other over plain net/http clients, deterministically and without touching the real network.
//
//	var n memnet.Network
//	n.Handle("relay.test", relayHandler)
//	n.Handle("mastodon.test", mastodonHandler)
//	resp, err := n.Client().Get("https://relay.test/actor")
//
// The scheme of the URL only decides what the handler sees (r.TLS is non-nil for https); no TLS is
// performed.
package memnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// RemoteAddr is the value of http.Request.RemoteAddr seen by handlers on a Network.
const RemoteAddr = "memnet"

// Network is an in-memory HTTP network: an http.RoundTripper that delivers each request to the
// http.Handler registered for the request's host (the URL host including any port, lower-cased;
// a default port for the scheme, ":80" for http and ":443" for https, is ignored) without
// sockets.
//
// Network is safe for concurrent use. The zero value is an empty network ready to use.
type Network struct {
	mu    sync.RWMutex
	hosts map[string]http.Handler
}

// Handle registers h for host, replacing any handler already registered for it. host is a host
// name with an optional port, e.g. "mastodon.test" or "relay.test:8443".
func (n *Network) Handle(host string, h http.Handler) {
	if h == nil {
		panic("memnet: nil handler")
	}
	key := canonicalHost(host, "")
	if key == "" {
		panic("memnet: empty host")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hosts == nil {
		n.hosts = make(map[string]http.Handler)
	}
	n.hosts[key] = h
}

// Remove unregisters host. Requests already being handled are not interrupted; later requests
// fail as if the host did not resolve.
func (n *Network) Remove(host string) {
	key := canonicalHost(host, "")
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.hosts, key)
}

// Hosts returns the registered host keys (lower-cased, default ports removed), in no particular
// order.
func (n *Network) Hosts() []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]string, 0, len(n.hosts))
	for h := range n.hosts {
		out = append(out, h)
	}
	return out
}

func (n *Network) lookup(host string) (http.Handler, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	h, ok := n.hosts[host]
	return h, ok
}

// canonicalHost lower-cases host and drops a port that is the default for scheme (both default
// ports are dropped when scheme is empty).
func canonicalHost(host, scheme string) string {
	host = strings.ToLower(strings.TrimSpace(host))
	if h, p, err := net.SplitHostPort(host); err == nil {
		switch {
		case p == "80" && (scheme == "http" || scheme == ""),
			p == "443" && (scheme == "https" || scheme == ""):
			if strings.Contains(h, ":") {
				return "[" + h + "]"
			}
			return h
		}
	}
	return host
}

// RoundTrip implements http.RoundTripper.
//
// The request body is read completely and the handler for the URL host is called with a
// server-side request: RequestURI set, URL holding only the path and query, Host taken from
// req.Host or else the URL host, no "Host" entry in the Header, a Body with exactly the bytes
// sent, ContentLength and a "Content-Length" header set (as net/http's server does for a
// fixed-length body), RemoteAddr set to RemoteAddr and, for https URLs, a non-nil TLS field.
// The handler's context is derived from req.Context().
//
// An unknown host yields a *net.DNSError (wrapped by http.Client in a *url.Error). If
// req.Context() is done before RoundTrip returns, RoundTrip returns the context's error, without
// waiting for the handler, and never an answer the handler gave once the context was done. A panicking handler yields an error, like a dropped
// connection.
func (n *Network) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := readAndClose(req.Body)
	if err != nil {
		return nil, fmt.Errorf("memnet: reading request body: %w", err)
	}
	if req.URL == nil {
		return nil, fmt.Errorf("memnet: nil request URL")
	}
	scheme := strings.ToLower(req.URL.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("memnet: unsupported protocol scheme %q", req.URL.Scheme)
	}
	host := canonicalHost(req.URL.Host, scheme)
	if host == "" {
		return nil, fmt.Errorf("memnet: no host in request URL")
	}
	h, ok := n.lookup(host)
	if !ok {
		name := host
		if hn, _, err := net.SplitHostPort(host); err == nil {
			name = hn
		}
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}}
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	sreq, err := serverRequest(ctx, req, body, scheme)
	if err != nil {
		return nil, err
	}
	rec := newRecorder()
	done := make(chan any, 1)
	go func() {
		defer func() {
			// A handler panic behaves like an aborted connection (net/http's server recovers
			// too), rather than crashing the test binary.
			done <- recover()
		}()
		h.ServeHTTP(rec, sreq)
	}()
	select {
	case p := <-done:
		if p != nil {
			return nil, fmt.Errorf("memnet: handler for %s panicked: %v", host, p)
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		// The request ended while the handler was answering (often the
		// handler answers because it ended): a client whose request ended
		// gets its context's error, whichever of the two this noticed first.
		return nil, err
	}
	return rec.response(req), nil
}

// Client returns an http.Client whose Transport is n. It follows redirects like a default
// http.Client (up to 10) and has no timeout; use request contexts to bound calls.
func (n *Network) Client() *http.Client {
	return &http.Client{Transport: n}
}

func readAndClose(rc io.ReadCloser) ([]byte, error) {
	if rc == nil || rc == http.NoBody {
		if rc != nil {
			rc.Close()
		}
		return nil, nil
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func serverRequest(ctx context.Context, req *http.Request, body []byte, scheme string) (*http.Request, error) {
	requestURI := req.URL.RequestURI()
	u, err := url.ParseRequestURI(requestURI)
	if err != nil {
		return nil, fmt.Errorf("memnet: bad request URI %q: %w", requestURI, err)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	hdr := req.Header.Clone()
	if hdr == nil {
		hdr = make(http.Header)
	}
	hdr.Del("Host")
	if hdr.Get("User-Agent") == "" {
		hdr.Set("User-Agent", "Go-http-client/1.1")
	}
	hdr.Del("Content-Length")
	if len(body) > 0 || (method != http.MethodGet && method != http.MethodHead) {
		hdr.Set("Content-Length", strconv.Itoa(len(body)))
	}
	var rb io.ReadCloser = http.NoBody
	if len(body) > 0 {
		rb = io.NopCloser(bytes.NewReader(body))
	}
	sreq := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        hdr,
		Body:          rb,
		ContentLength: int64(len(body)),
		Host:          host,
		RemoteAddr:    RemoteAddr,
		RequestURI:    requestURI,
	}
	if scheme == "https" {
		sn := host
		if h, _, err := net.SplitHostPort(host); err == nil {
			sn = h
		}
		sreq.TLS = &tls.ConnectionState{HandshakeComplete: true, ServerName: sn, Version: tls.VersionTLS13}
	}
	return sreq.WithContext(ctx), nil
}

// recorder is the http.ResponseWriter given to handlers. It buffers the whole response.
type recorder struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: make(http.Header)} }

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.wroteHeader {
		return
	}
	if code >= 100 && code < 200 {
		return // informational responses are not recorded
	}
	r.status = code
	r.wroteHeader = true
}

func (r *recorder) Write(p []byte) (int, error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	return r.body.Write(p)
}

// Flush implements http.Flusher (a no-op: the response is delivered when the handler returns).
func (r *recorder) Flush() {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
}

func (r *recorder) response(req *http.Request) *http.Response {
	status := r.status
	if !r.wroteHeader {
		status = http.StatusOK
	}
	b := r.body.Bytes()
	if req.Method == http.MethodHead {
		b = nil
	}
	hdr := r.header.Clone()
	if hdr.Get("Content-Type") == "" && len(b) > 0 {
		hdr.Set("Content-Type", http.DetectContentType(b))
	}
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	text := http.StatusText(status)
	if text == "" {
		text = "status code " + strconv.Itoa(status)
	}
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + text,
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        hdr,
		Body:          io.NopCloser(bytes.NewReader(b)),
		ContentLength: int64(len(b)),
		Request:       req,
	}
}
