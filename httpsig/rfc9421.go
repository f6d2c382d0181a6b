package httpsig

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// RFC 9421 HTTP Message Signatures, the profile Mastodon 4.5 accepts
// (see docs/protocol.md): one signature; keyid and created required; @method
// and @target-uri covered, and content-digest (RFC 9530) on requests with a
// body; the same time window as draft-cavage signatures. Algorithms:
// rsa-v1_5-sha256 (what the fediverse uses, and what this package signs
// with; also assumed when alg is absent and the key is RSA),
// rsa-pss-sha512 with an RSA key and ed25519 with an Ed25519 key.

// RFC 9421 algorithm names (RFC 9421 §3.3).
const (
	// AlgRSAv15SHA256 is RSASSA-PKCS1-v1_5 with SHA-256: the algorithm
	// this package signs with.
	AlgRSAv15SHA256 = "rsa-v1_5-sha256"
	// AlgRSAPSSSHA512 is RSASSA-PSS with SHA-512, MGF1 with SHA-512 and a
	// 64-byte salt.
	AlgRSAPSSSHA512 = "rsa-pss-sha512"
	// AlgEd25519 is Ed25519 (RFC 8032).
	AlgEd25519 = "ed25519"
)

// MessageSignature is a parsed RFC 9421 signature: one member of the
// Signature-Input and Signature dictionaries. Its methods do not modify it
// or the request they are given.
type MessageSignature struct {
	Label      string   // the dictionary key, such as "sig1"
	Components []string // covered components in order, such as "@method" or "content-digest"
	KeyID      string   // the keyid parameter
	Alg        string   // the alg parameter; "" when absent
	Created    int64    // the created parameter (Unix time)
	Expires    int64    // the expires parameter; 0 when absent
	Nonce      string   // the nonce parameter, if any
	Tag        string   // the tag parameter, if any
	Signature  []byte   // the decoded signature

	params string // the parameters as received, serialized
}

// derivedComponents are the derived components this package can reproduce on
// a request. @query-param (which needs a parameter) and @status (responses
// only) are not supported.
var derivedComponents = []string{"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query"}

// MessageSignatureFromRequest parses the RFC 9421 signature of r, from its
// Signature-Input and Signature headers (several lines of one header are
// joined as one dictionary). It returns ErrNoSignature when r has no
// Signature-Input header, and an error wrapping ErrBadSignature when
// ParseMessageSignature fails.
func MessageSignatureFromRequest(r *http.Request) (*MessageSignature, error) {
	input := r.Header.Values("Signature-Input")
	if len(input) == 0 {
		return nil, ErrNoSignature
	}
	return ParseMessageSignature(strings.Join(input, ", "), strings.Join(r.Header.Values("Signature"), ", "))
}

// ParseMessageSignature parses the values of the Signature-Input and
// Signature headers (RFC 8941 dictionaries). Each must hold exactly one
// member, with the same label: the Signature-Input member an inner list of
// component names (strings without parameters, each at most once; HTTP
// field names in lower case; derived components among @method,
// @target-uri, @authority, @scheme, @request-target, @path and @query) with
// a string keyid and a positive integer created, and optionally a positive
// integer expires and string alg, nonce and tag parameters; the Signature
// member a byte sequence. Other parameters are kept for the signature base
// and otherwise ignored. Every error wraps ErrBadSignature.
func ParseMessageSignature(signatureInput, signature string) (*MessageSignature, error) {
	inputs, err := parseSFDictionary(signatureInput)
	if err != nil {
		return nil, errSig("malformed Signature-Input header")
	}
	sigs, err := parseSFDictionary(signature)
	if err != nil {
		return nil, errSig("malformed Signature header")
	}
	if len(inputs) != 1 || len(sigs) != 1 {
		return nil, errSig("exactly one message signature is supported, got %d and %d", len(inputs), len(sigs))
	}
	in, sg := inputs[0], sigs[0]
	if in.key != sg.key {
		return nil, errSig("Signature-Input label %q does not match Signature label %q", in.key, sg.key)
	}
	if !in.inner {
		return nil, errSig("Signature-Input member is not an inner list")
	}
	if sg.inner || sg.item.kind != sfBytes || len(sg.item.b) == 0 {
		return nil, errSig("Signature member is not a byte sequence")
	}
	m := &MessageSignature{Label: in.key, Signature: sg.item.b}
	for _, it := range in.list {
		name := it.val.s
		switch {
		case it.val.kind != sfString:
			return nil, errSig("covered component is not a string")
		case len(it.params) > 0:
			return nil, errSig("component parameters are not supported (%q)", name)
		case slices.Contains(m.Components, name):
			return nil, errSig("component %q is covered twice", name)
		case strings.HasPrefix(name, "@"):
			if !slices.Contains(derivedComponents, name) {
				return nil, errSig("unsupported derived component %q", name)
			}
		case name == "" || strings.ContainsFunc(name, func(r rune) bool { return !isTokenChar(r) || 'A' <= r && r <= 'Z' }):
			return nil, errSig("invalid component name %q", name)
		}
		m.Components = append(m.Components, name)
	}
	var haveKeyID, haveCreated bool
	for _, p := range in.params {
		v := p.val
		switch p.key {
		case "keyid", "alg", "nonce", "tag":
			if v.kind != sfString {
				return nil, errSig("parameter %s is not a string", p.key)
			}
			switch p.key {
			case "keyid":
				m.KeyID, haveKeyID = v.s, true
			case "alg":
				m.Alg = v.s
			case "nonce":
				m.Nonce = v.s
			default:
				m.Tag = v.s
			}
		case "created", "expires":
			if v.kind != sfInteger || v.i <= 0 {
				return nil, errSig("parameter %s is not a positive integer", p.key)
			}
			if p.key == "created" {
				m.Created, haveCreated = v.i, true
			} else {
				m.Expires = v.i
			}
		}
	}
	switch {
	case !haveKeyID || m.KeyID == "":
		return nil, errSig("missing keyid parameter")
	case !haveCreated:
		return nil, errSig("missing created parameter")
	}
	m.params = serializeInnerList(in.list, in.params)
	return m, nil
}

// SerializedParams returns the signature parameters serialized as in the
// Signature-Input header, which is also the value of @signature-params in
// the signature base. For a parsed signature it is what was received
// (re-serialized canonically); for a MessageSignature built by hand it is
// serialized from the fields, parameters in the order created, expires,
// nonce, keyid, alg, tag (empty ones omitted).
func (m *MessageSignature) SerializedParams() string {
	if m.params != "" {
		return m.params
	}
	items := make([]sfItem, len(m.Components))
	for i, c := range m.Components {
		items[i] = sfItem{val: sfBare{kind: sfString, s: c}}
	}
	var ps []sfParam
	addInt := func(k string, v int64) {
		if v != 0 {
			ps = append(ps, sfParam{k, sfBare{kind: sfInteger, i: v}})
		}
	}
	addStr := func(k, v string) {
		if v != "" {
			ps = append(ps, sfParam{k, sfBare{kind: sfString, s: v}})
		}
	}
	addInt("created", m.Created)
	addInt("expires", m.Expires)
	addStr("nonce", m.Nonce)
	addStr("keyid", m.KeyID)
	addStr("alg", m.Alg)
	addStr("tag", m.Tag)
	return serializeInnerList(items, ps)
}

// SignatureBase returns the RFC 9421 signature base of r: one line
// `"<component>": <value>` per covered component, then the
// @signature-params line, joined by "\n".
//
// HTTP fields take r.Header's values, trimmed and joined with ", " (host
// is r.Host, else r.URL.Host). Derived components: @method is r.Method
// ("GET" if empty); @scheme is r.URL.Scheme if set, else "https" when r.TLS
// is set and "http" otherwise; @authority is the lower-cased host without
// the scheme's default port; @target-uri is scheme://host followed by
// @request-target, which is r.URL.RequestURI(); @path its path ("/" if
// empty) and @query "?" followed by the raw query. A server behind a
// TLS-terminating proxy should pass a request whose URL carries the public
// scheme and host. A missing header or a value with a line break is an
// error wrapping ErrBadSignature.
func (m *MessageSignature) SignatureBase(r *http.Request) (string, error) {
	if r.URL == nil {
		return "", errSig("request has no URL")
	}
	var b strings.Builder
	b.Grow(512)
	for _, c := range m.Components {
		v, err := componentValue(r, c)
		if err != nil {
			return "", err
		}
		if strings.ContainsAny(v, "\r\n") {
			return "", errSig("component %q has a line break", c)
		}
		b.WriteString(`"` + c + `": ` + v + "\n")
	}
	b.WriteString(`"@signature-params": ` + m.SerializedParams())
	return b.String(), nil
}

func requestScheme(r *http.Request) string {
	switch {
	case r.URL.Scheme != "":
		return strings.ToLower(r.URL.Scheme)
	case r.TLS != nil:
		return "https"
	}
	return "http"
}

// requestHost returns the host[:port] r is addressed to: r.Host, else
// r.URL's host, else "".
func requestHost(r *http.Request) string {
	if r.Host != "" {
		return r.Host
	}
	if r.URL != nil {
		return r.URL.Host
	}
	return ""
}

func componentValue(r *http.Request, c string) (string, error) {
	switch c {
	case "@method":
		if r.Method == "" {
			return http.MethodGet, nil
		}
		return r.Method, nil
	case "@scheme":
		return requestScheme(r), nil
	case "@authority":
		return withoutDefaultPort(requestScheme(r), strings.ToLower(requestHost(r))), nil
	case "@target-uri":
		return requestScheme(r) + "://" + requestHost(r) + r.URL.RequestURI(), nil
	case "@request-target":
		return r.URL.RequestURI(), nil
	case "@path":
		if p := r.URL.EscapedPath(); p != "" {
			return p, nil
		}
		return "/", nil
	case "@query":
		return "?" + r.URL.RawQuery, nil
	case "host":
		if h := requestHost(r); h != "" {
			return h, nil
		}
	default:
		if strings.HasPrefix(c, "@") {
			return "", errSig("unsupported derived component %q", c)
		}
		if v, ok := joinedHeader(r.Header, c); ok {
			return v, nil
		}
	}
	return "", errSig("covered component %q is missing from the request", c)
}

// Check performs every verification step that needs no key:
//
//   - the algorithm is absent, rsa-v1_5-sha256, rsa-pss-sha512 or ed25519
//     (Verify checks that it matches the key);
//   - @method and @target-uri are covered, and content-digest is covered
//     when the request has a body (len(body) > 0 or the method is POST,
//     PUT or PATCH);
//   - every covered component is present;
//   - a covered Content-Digest (an RFC 8941 dictionary) has a sha-256 or
//     sha-512 member, and every such member is the digest of body;
//   - created lies within [now-MaxAge, now+MaxFuture], and now is not after
//     expires if given.
//
// body is the raw request body. Every failure wraps ErrBadSignature.
func (m *MessageSignature) Check(r *http.Request, body []byte, opts VerifyOptions) error {
	switch m.Alg {
	case "", AlgRSAv15SHA256, AlgRSAPSSSHA512, AlgEd25519:
	default:
		return errSig("unsupported algorithm %q (only %s, %s or %s)", m.Alg, AlgRSAv15SHA256, AlgRSAPSSSHA512, AlgEd25519)
	}
	for _, c := range []string{"@method", "@target-uri"} {
		if !slices.Contains(m.Components, c) {
			return errSig("%s is not covered", c)
		}
	}
	digest := slices.Contains(m.Components, "content-digest")
	if meth := r.Method; !digest && (len(body) > 0 || meth == http.MethodPost || meth == http.MethodPut || meth == http.MethodPatch) {
		return errSig("content-digest is not covered on a request with a body")
	}
	if _, err := m.SignatureBase(r); err != nil {
		return err
	}
	if digest {
		if err := checkContentDigest(r.Header, body); err != nil {
			return err
		}
	}
	now, maxAge, maxFuture := opts.window()
	created := time.Unix(m.Created, 0)
	switch {
	case created.Before(now.Add(-maxAge)):
		return errSig("created too old")
	case created.After(now.Add(maxFuture)):
		return errSig("created in the future")
	case m.Expires > 0 && now.After(time.Unix(m.Expires, 0)):
		return errSig("signature expired")
	}
	return nil
}

// window returns the options' current time and limits, defaults applied.
func (o VerifyOptions) window() (now time.Time, maxAge, maxFuture time.Duration) {
	now, maxAge, maxFuture = o.Now, o.MaxAge, o.MaxFuture
	if now.IsZero() {
		now = time.Now()
	}
	if maxAge <= 0 {
		maxAge = DefaultMaxSignatureAge
	}
	if maxFuture <= 0 {
		maxFuture = DefaultMaxClockSkew
	}
	return now, maxAge, maxFuture
}

// checkContentDigest checks an RFC 9530 Content-Digest against body.
func checkContentDigest(h http.Header, body []byte) error {
	v, ok := joinedHeader(h, "Content-Digest")
	if !ok {
		return errSig("Content-Digest header is missing")
	}
	members, err := parseSFDictionary(v)
	if err != nil {
		return errSig("malformed Content-Digest header")
	}
	found := false
	for _, mem := range members {
		var sum []byte
		switch mem.key {
		case "sha-256":
			s := sha256.Sum256(body)
			sum = s[:]
		case "sha-512":
			s := sha512.Sum512(body)
			sum = s[:]
		default:
			continue // other algorithms are ignored
		}
		if mem.inner || mem.item.kind != sfBytes || subtle.ConstantTimeCompare(mem.item.b, sum) != 1 {
			return errSig("content digest mismatch (%s)", mem.key)
		}
		found = true
	}
	if !found {
		return errSig("Content-Digest has no sha-256 or sha-512 value")
	}
	return nil
}

// Verify checks the signature over r's signature base with pub: an
// *rsa.PublicKey with alg rsa-v1_5-sha256 (or no alg) or rsa-pss-sha512,
// or an ed25519.PublicKey with alg ed25519 (or no alg). An alg that does
// not match the key is refused before anything is computed. Verify does
// not run Check (nor bound the key's size: callers do, for remote keys);
// call Check first. Every failure wraps ErrBadSignature.
func (m *MessageSignature) Verify(r *http.Request, pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return errSig("nil RSA key")
		}
		if m.Alg != "" && m.Alg != AlgRSAv15SHA256 && m.Alg != AlgRSAPSSSHA512 {
			return errSig("algorithm %q does not match an RSA key", m.Alg)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errSig("bad Ed25519 key length %d", len(k))
		}
		if m.Alg != "" && m.Alg != AlgEd25519 {
			return errSig("algorithm %q does not match an Ed25519 key", m.Alg)
		}
	default:
		return errSig("unsupported key type %T", pub)
	}
	base, err := m.SignatureBase(r)
	if err != nil {
		return err
	}
	var ok bool
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, []byte(base), m.Signature)
	case *rsa.PublicKey:
		if m.Alg == AlgRSAPSSSHA512 {
			sum := sha512.Sum512([]byte(base))
			ok = rsa.VerifyPSS(k, crypto.SHA512, sum[:], m.Signature, &rsa.PSSOptions{SaltLength: 64, Hash: crypto.SHA512}) == nil
		} else {
			sum := sha256.Sum256([]byte(base))
			ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], m.Signature) == nil
		}
	}
	if !ok {
		return errSig("signature does not match")
	}
	return nil
}

// SignRequestRFC9421 signs req as sent at time now with an RFC 9421
// signature labelled "sig1", algorithm rsa-v1_5-sha256.
//
// It sets Date (as draft-cavage signing does, for receivers that look at
// it); when body != nil it sets Content-Digest: sha-256=:<base64>: of body.
// The covered components are @method and @target-uri, then content-type if
// req has one and content-digest when body != nil; the parameters are
// created (now), keyid and alg. It removes any Digest and draft-cavage
// Signature header and sets Signature-Input and Signature. req.URL must be
// absolute (it is the @target-uri). Signing the same request again is
// correct. body must be the exact bytes that will be sent.
func (s *Signer) SignRequestRFC9421(req *http.Request, body []byte, now time.Time) error {
	switch {
	case s.Key == nil:
		return errors.New("httpsig: signer has no private key")
	case s.KeyID == "" || !validSFString(s.KeyID):
		return fmt.Errorf("httpsig: signer key id %q is empty or has characters outside printable ASCII", s.KeyID)
	case req.URL == nil || req.URL.Scheme == "" || req.Host == "" && req.URL.Host == "":
		return errors.New("httpsig: request has no absolute URL")
	}
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	req.Header.Set("Date", now.UTC().Format(http.TimeFormat))
	for _, h := range []string{"Digest", "Signature", "Signature-Input", "Content-Digest"} {
		req.Header.Del(h)
	}
	m := &MessageSignature{
		Label:      "sig1",
		Components: []string{"@method", "@target-uri"},
		KeyID:      s.KeyID,
		Alg:        AlgRSAv15SHA256,
		Created:    now.Unix(),
	}
	if body != nil {
		sum := sha256.Sum256(body)
		req.Header.Set("Content-Digest", "sha-256="+sfBytesString(sum[:]))
		if len(req.Header.Values("Content-Type")) > 0 {
			m.Components = append(m.Components, "content-type")
		}
		m.Components = append(m.Components, "content-digest")
	}
	base, err := m.SignatureBase(req)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(base))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.Key, crypto.SHA256, sum[:])
	if err != nil {
		return fmt.Errorf("httpsig: signing request: %w", err)
	}
	req.Header.Set("Signature-Input", m.Label+"="+m.SerializedParams())
	req.Header.Set("Signature", m.Label+"="+sfBytesString(sig))
	return nil
}

func sfBytesString(b []byte) string {
	var sb strings.Builder
	sfBare{kind: sfBytes, b: b}.serialize(&sb)
	return sb.String()
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
