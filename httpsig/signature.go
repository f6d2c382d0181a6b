package httpsig

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Errors returned by the HTTP signature code. Match them with errors.Is.
var (
	// ErrNoSignature is returned by FromRequest when the request has no
	// Signature header.
	ErrNoSignature = errors.New("httpsig: request is not signed")

	// ErrBadSignature is wrapped by every other parse or verification failure;
	// the wrapping error carries the detail (for example "digest mismatch").
	ErrBadSignature = errors.New("httpsig: invalid HTTP signature")
)

// Time window defaults used by Check when VerifyOptions leaves them zero.
const (
	DefaultMaxSignatureAge = time.Hour       // how old Date/(created) may be
	DefaultMaxClockSkew    = 5 * time.Minute // how far in the future they may be
)

func errSig(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadSignature}, args...)...)
}

// Signer signs outgoing requests with draft-cavage HTTP Signatures, algorithm
// rsa-sha256. It has no mutable state, so one Signer is safe for concurrent use.
type Signer struct {
	KeyID string          // e.g. https://relay.example/actor#main-key
	Key   *rsa.PrivateKey // the key KeyID designates
}

// SignRequest signs req as sent at time now.
//
// It sets Date (now in http.TimeFormat, UTC); when body != nil it sets
// Digest: SHA-256=<base64 of sha256(body)>, and when body == nil it removes any
// Digest. It then sets Signature with keyId, algorithm="rsa-sha256", headers
// and signature. The signed headers are "(request-target) host date", then
// "digest" when body != nil, then "content-type" if req has one. The host is
// req.Host if set, else req.URL.Host; (request-target) is the lower-case
// method and req.URL.RequestURI().
//
// Date, Digest and Signature are overwritten, so signing the same request again
// (for a retry) is correct. SignRequest does not read req.Body: body must be
// the exact bytes that will be sent. It modifies req.Header, so req must not be
// in use elsewhere meanwhile.
//
// If the Signer has no key, KeyID is empty or contains '"', '\' or control
// characters, or req has no URL or host, SignRequest returns an error and
// leaves req untouched. An error from rsa.SignPKCS1v15 is returned wrapped.
func (s *Signer) SignRequest(req *http.Request, body []byte, now time.Time) error {
	switch {
	case s.Key == nil:
		return errors.New("httpsig: signer has no private key")
	case s.KeyID == "" || strings.ContainsFunc(s.KeyID, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' }):
		return fmt.Errorf("httpsig: signer key id %q is empty or contains '\"', '\\' or control characters", s.KeyID)
	case req.URL == nil || req.Host == "" && req.URL.Host == "":
		return errors.New("httpsig: request has no URL or no host")
	}
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	req.Header.Set("Date", now.UTC().Format(http.TimeFormat))
	req.Header.Del("Digest")
	headers := "(request-target) host date"
	if body != nil {
		sum := sha256.Sum256(body)
		req.Header.Set("Digest", "SHA-256="+base64.StdEncoding.EncodeToString(sum[:]))
		headers += " digest"
	}
	if len(req.Header.Values("Content-Type")) > 0 {
		headers += " content-type"
	}
	p := SignatureParams{Headers: strings.Fields(headers)}
	msg, err := p.SigningString(req, true) // cannot fail: every header is present
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(msg))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.Key, crypto.SHA256, sum[:])
	if err != nil {
		return fmt.Errorf("httpsig: signing request: %w", err)
	}
	req.Header.Set("Signature", `keyId="`+s.KeyID+`",algorithm="rsa-sha256",headers="`+headers+
		`",signature="`+base64.StdEncoding.EncodeToString(sig)+`"`)
	return nil
}

// SignatureParams is a parsed draft-cavage Signature header. Its methods do
// not modify it or the request they are given, so they are safe for concurrent
// use as long as neither is modified meanwhile.
type SignatureParams struct {
	KeyID     string // the keyId parameter
	Algorithm string // as sent, lower-cased; "" when absent
	// Headers lists the signed headers, lower-cased, in order. When the
	// headers parameter is absent it is ["date"] for algorithm rsa-sha256 and
	// rsa-sha512 (what Mastodon does) and ["(created)"] otherwise (the
	// draft-cavage-12 default, which Mastodon applies to hs2019).
	Headers   []string
	Signature []byte // decoded
	Created   int64  // the created parameter, 0 if absent
	Expires   int64  // the expires parameter (fraction dropped), 0 if absent
}

var knownParams = [...]string{"keyId", "algorithm", "headers", "signature", "created", "expires"}

// ParseSignature parses a Signature header value: comma-separated name=value
// parameters, values quoted (with backslash escapes) or bare, with optional
// whitespace around commas and '=', in any order. Parameter names match
// case-insensitively; unknown parameters are ignored. A leading "Signature "
// (sent by old node http-signature, tolerated by Mastodon) is skipped.
//
// A missing keyId or signature, a repeated known parameter, an empty headers
// list, a signature that is not standard base64, a created/expires that is
// not a positive integer, or a syntax error returns an error wrapping
// ErrBadSignature. ParseSignature is safe for concurrent use.
func ParseSignature(value string) (*SignatureParams, error) {
	s := strings.Trim(value, " \t")
	if len(s) > 9 && strings.EqualFold(s[:9], "signature") && (s[9] == ' ' || s[9] == '\t') {
		if rest := strings.TrimLeft(s[9:], " \t"); !strings.HasPrefix(rest, "=") {
			s = rest
		}
	}
	p := new(SignatureParams)
	var seen uint
	var headers string
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			break
		}
		i := strings.IndexFunc(s, func(r rune) bool { return !isTokenChar(r) })
		if i == 0 {
			return nil, errSig("malformed Signature header: expected a parameter name")
		} else if i < 0 {
			i = len(s)
		}
		name := s[:i]
		s = strings.TrimLeft(s[i:], " \t")
		if !strings.HasPrefix(s, "=") {
			return nil, errSig("malformed Signature header: parameter %q has no value", name)
		}
		s = strings.TrimLeft(s[1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var err error
			if val, s, err = parseQuotedString(s); err != nil {
				return nil, err
			}
		} else {
			j := strings.IndexAny(s, " \t,\"")
			if j < 0 {
				j = len(s)
			}
			val, s = s[:j], s[j:]
		}
		s = strings.TrimLeft(s, " \t")
		if s != "" && s[0] != ',' {
			return nil, errSig("malformed Signature header: unexpected text after parameter %q", name)
		}

		k := slices.IndexFunc(knownParams[:], func(p string) bool { return strings.EqualFold(p, name) })
		if k < 0 {
			continue
		}
		if seen&(1<<k) != 0 {
			return nil, errSig("duplicate parameter %q", knownParams[k])
		}
		seen |= 1 << k
		var err error
		switch k { // index into knownParams
		case 0: // keyId
			p.KeyID = val
		case 1: // algorithm
			p.Algorithm = strings.ToLower(val)
		case 2: // headers
			headers = val
		case 3: // signature
			if p.Signature, err = base64.StdEncoding.DecodeString(val); err != nil {
				return nil, errSig("signature is not valid base64")
			}
		case 4: // created
			p.Created, err = parseUnixTime(val)
		case 5: // expires
			p.Expires, err = parseUnixTime(val)
		}
		if err != nil {
			return nil, errSig("invalid %s parameter", knownParams[k])
		}
	}
	switch {
	case p.KeyID == "":
		return nil, errSig("missing keyId")
	case len(p.Signature) == 0:
		return nil, errSig("missing signature")
	case seen&(1<<2) != 0: // headers given
		if p.Headers = strings.Fields(strings.ToLower(headers)); len(p.Headers) == 0 {
			return nil, errSig("empty headers parameter")
		}
	case p.Algorithm == "rsa-sha256" || p.Algorithm == "rsa-sha512":
		p.Headers = []string{"date"}
	default:
		p.Headers = []string{"(created)"}
	}
	return p, nil
}

// isTokenChar reports whether r is an RFC 9110 tchar.
func isTokenChar(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' ||
		r < 0x7f && strings.ContainsRune("!#$%&'*+-.^_`|~", r)
}

// parseQuotedString parses the quoted-string at the start of s (s[0] == '"')
// and returns its unescaped content and the rest of s.
func parseQuotedString(s string) (val, rest string, err error) {
	var b []byte // nil until the first escape
	start := 1
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 == len(s) {
				return "", "", errSig("malformed Signature header: unterminated quoted string")
			}
			b = append(append(b, s[start:i]...), s[i+1])
			i++
			start = i + 1
		case '"':
			if b == nil {
				return s[1:i], s[i+1:], nil
			}
			return string(append(b, s[start:i]...)), s[i+1:], nil
		}
	}
	return "", "", errSig("malformed Signature header: unterminated quoted string")
}

// parseUnixTime parses a positive integer Unix time, dropping any decimal
// fraction (draft-cavage allows one on expires).
func parseUnixTime(v string) (int64, error) {
	whole, frac, _ := strings.Cut(v, ".")
	n, err := strconv.ParseUint(whole, 10, 63)
	if err != nil || n == 0 || strings.Trim(frac, "0123456789") != "" {
		return 0, errors.New("not a positive integer")
	}
	return int64(n), nil
}

// FromRequest returns the parsed Signature header of r. It returns
// ErrNoSignature when r has no Signature header (the Authorization header is
// not consulted), and an error wrapping ErrBadSignature when it has several or
// ParseSignature fails. It only reads r.
func FromRequest(r *http.Request) (*SignatureParams, error) {
	vals := r.Header.Values("Signature")
	switch len(vals) {
	case 0:
		return nil, ErrNoSignature
	case 1:
		return ParseSignature(vals[0])
	}
	return nil, errSig("multiple Signature headers")
}

// VerifyOptions tunes Check. The zero value uses the defaults.
type VerifyOptions struct {
	Now       time.Time     // zero means time.Now()
	MaxAge    time.Duration // how far in the past Date/(created) may be; <= 0 means DefaultMaxSignatureAge
	MaxFuture time.Duration // how far in the future they may be; <= 0 means DefaultMaxClockSkew
}

// Check performs every verification step that needs no key, in this order:
//
//   - the algorithm is absent, rsa-sha256, hs2019, rsa-sha512 or ed25519;
//   - date or (created) is signed; (request-target) or digest is signed; and
//     digest is signed when the request has a body (len(body) > 0 or the
//     method is POST, PUT or PATCH);
//   - every signed header is present: host is r.Host (else r.URL.Host), since Go
//     servers keep Host out of r.Header; (created) and (expires) need their
//     parameters;
//   - when digest is signed, Digest (a comma list of alg=value, alg matched
//     case-insensitively) has a SHA-256 entry, and every SHA-256 entry equals
//     base64(sha256(body)); other algorithms are ignored;
//   - a signed Date (http.ParseTime) and a signed (created) lie within
//     [now-MaxAge, now+MaxFuture], and now is not after (expires) if given.
//
// body is the raw request body. Every failure wraps ErrBadSignature. Check does
// not verify the signature itself; call Verify for that.
func (p *SignatureParams) Check(r *http.Request, body []byte, opts VerifyOptions) error {
	switch p.Algorithm {
	case "", "rsa-sha256", "hs2019", "rsa-sha512", "ed25519":
	default:
		return errSig("unsupported algorithm %q", p.Algorithm)
	}
	date := slices.Contains(p.Headers, "date")
	created := slices.Contains(p.Headers, "(created)")
	digest := slices.Contains(p.Headers, "digest")
	switch m := r.Method; {
	case !date && !created:
		return errSig("neither date nor (created) is signed")
	case !digest && !slices.Contains(p.Headers, "(request-target)"):
		return errSig("neither (request-target) nor digest is signed")
	case !digest && (len(body) > 0 || m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch):
		return errSig("digest is not signed on a request with a body")
	}
	for _, h := range p.Headers {
		if _, err := p.headerLine(r, h, true); err != nil {
			return err
		}
	}
	if digest { // always the case when there is a body, see above
		if err := checkDigest(r.Header, body); err != nil {
			return err
		}
	}

	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	maxAge, maxFuture := opts.MaxAge, opts.MaxFuture
	if maxAge <= 0 {
		maxAge = DefaultMaxSignatureAge
	}
	if maxFuture <= 0 {
		maxFuture = DefaultMaxClockSkew
	}
	inWindow := func(what string, t time.Time) error {
		if t.Before(now.Add(-maxAge)) {
			return errSig("%s too old", what)
		}
		if t.After(now.Add(maxFuture)) {
			return errSig("%s in the future", what)
		}
		return nil
	}
	if date {
		v, _ := joinedHeader(r.Header, "Date")
		t, err := http.ParseTime(v)
		if err != nil {
			return errSig("invalid Date header")
		}
		if err := inWindow("date", t); err != nil {
			return err
		}
	}
	if created {
		if err := inWindow("(created)", time.Unix(p.Created, 0)); err != nil {
			return err
		}
	}
	if p.Expires > 0 && now.After(time.Unix(p.Expires, 0)) {
		return errSig("signature expired")
	}
	return nil
}

func checkDigest(h http.Header, body []byte) error {
	v, ok := joinedHeader(h, "Digest")
	if !ok {
		return errSig("Digest header is missing")
	}
	sum := sha256.Sum256(body)
	want := base64.StdEncoding.EncodeToString(sum[:])
	found := false
	for part := range strings.SplitSeq(v, ",") {
		alg, val, _ := strings.Cut(part, "=")
		if strings.EqualFold(strings.TrimSpace(alg), "SHA-256") {
			if strings.TrimSpace(val) != want {
				return errSig("digest mismatch")
			}
			found = true
		}
	}
	if !found {
		return errSig("Digest has no SHA-256 value")
	}
	return nil
}

// Verify checks the signature over r with pub, which is an *rsa.PublicKey
// (RSASSA-PKCS1-v1_5: SHA-256 for rsa-sha256, hs2019 or no algorithm, SHA-512
// for rsa-sha512) or an ed25519.PublicKey (algorithm ed25519, hs2019 or none).
//
// (request-target) is first built from r.URL.RequestURI() (escaped path and
// query); if that fails and r has a query, Verify retries without the query,
// as GoToSocial and Pleroma sign the path only. Header lines are
// "<lower-case name>: <values>", the values being r.Header.Values(name)
// trimmed and joined with ", "; lines are joined by "\n".
//
// Verify does not run Check; call Check first (it is cheap and needs no key).
// All failures, including an unsupported key type or a key that does not
// match the algorithm, wrap ErrBadSignature.
func (p *SignatureParams) Verify(r *http.Request, pub crypto.PublicKey) error {
	ok, err := p.verify(r, pub, true)
	if err == nil && !ok && r.URL != nil && (r.URL.RawQuery != "" || r.URL.ForceQuery) &&
		slices.Contains(p.Headers, "(request-target)") {
		ok, err = p.verify(r, pub, false)
	}
	if err == nil && !ok {
		err = errSig("signature does not match")
	}
	return err
}

// VerifyHost is Verify with host as the value of the signed host header,
// whatever r.Host says. A server behind a reverse proxy that rewrites Host
// (nginx's default proxy_pass) sees the proxy's upstream host, while the
// sender signed the public one: verify with r first, then with VerifyHost
// and the public host. Only the host line changes; every other component
// is taken from r as Verify does.
func (p *SignatureParams) VerifyHost(r *http.Request, pub crypto.PublicKey, host string) error {
	alt := *r
	alt.Host = host
	return p.Verify(&alt, pub)
}

func (p *SignatureParams) verify(r *http.Request, pub crypto.PublicKey, withQuery bool) (bool, error) {
	msg, err := p.SigningString(r, withQuery)
	if err != nil {
		return false, err
	}
	return p.verifyString(msg, pub)
}

// VerifyString checks the signature over msg, a signing string built by
// SigningString, with pub (as Verify does, without its fallbacks): callers
// that build the candidate signing strings themselves verify each once.
// VerifyString does not run Check. Every failure wraps ErrBadSignature.
func (p *SignatureParams) VerifyString(msg string, pub crypto.PublicKey) error {
	ok, err := p.verifyString(msg, pub)
	if err == nil && !ok {
		err = errSig("signature does not match")
	}
	return err
}

func (p *SignatureParams) verifyString(msg string, pub crypto.PublicKey) (bool, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch {
		case k == nil || k.N == nil:
			return false, errSig("nil RSA key")
		case p.Algorithm == "" || p.Algorithm == "rsa-sha256" || p.Algorithm == "hs2019":
			sum := sha256.Sum256([]byte(msg))
			return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], p.Signature) == nil, nil
		case p.Algorithm == "rsa-sha512":
			sum := sha512.Sum512([]byte(msg))
			return rsa.VerifyPKCS1v15(k, crypto.SHA512, sum[:], p.Signature) == nil, nil
		}
		return false, errSig("algorithm %q does not match an RSA key", p.Algorithm)
	case ed25519.PublicKey:
		switch {
		case len(k) != ed25519.PublicKeySize:
			return false, errSig("bad Ed25519 key length %d", len(k))
		case p.Algorithm == "" || p.Algorithm == "hs2019" || p.Algorithm == "ed25519":
			return ed25519.Verify(k, []byte(msg), p.Signature), nil
		}
		return false, errSig("algorithm %q does not match an Ed25519 key", p.Algorithm)
	}
	return false, errSig("unsupported key type %T", pub)
}

// SigningString builds the signing string for r over p.Headers; withQuery
// selects whether (request-target) keeps the query string. It returns an error
// wrapping ErrBadSignature if p.Headers is empty, a signed header is missing
// from r, (created)/(expires) is signed without its parameter, or an unknown
// pseudo-header is signed. It is exported for tests, fuzzing and debugging.
func (p *SignatureParams) SigningString(r *http.Request, withQuery bool) (string, error) {
	if len(p.Headers) == 0 {
		return "", errSig("no signed headers")
	}
	var b strings.Builder
	b.Grow(256)
	for i, h := range p.Headers {
		h = strings.ToLower(h)
		v, err := p.headerLine(r, h, withQuery)
		if err != nil {
			return "", err
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(h)
		b.WriteString(": ")
		b.WriteString(v)
	}
	return b.String(), nil
}

// headerLine returns the signing-string value of the lower-case header h.
func (p *SignatureParams) headerLine(r *http.Request, h string, withQuery bool) (string, error) {
	switch h {
	case "(request-target)":
		if r.URL == nil {
			return "", errSig("request has no URL")
		}
		target := r.URL.RequestURI()
		if !withQuery {
			target, _, _ = strings.Cut(target, "?")
		}
		if r.Method == "" {
			return "get " + target, nil // net/http sends GET
		}
		return strings.ToLower(r.Method) + " " + target, nil
	case "(created)", "(expires)":
		n := p.Created
		if h == "(expires)" {
			n = p.Expires
		}
		if n <= 0 {
			return "", errSig("%s is signed but its parameter is missing", h)
		}
		return strconv.FormatInt(n, 10), nil
	case "host":
		if h := requestHost(r); h != "" {
			return h, nil
		}
	default:
		if strings.HasPrefix(h, "(") {
			return "", errSig("unsupported pseudo-header %q", h)
		}
		if v, ok := joinedHeader(r.Header, h); ok {
			return v, nil
		}
	}
	return "", errSig("signed header %q is missing from the request", h)
}

// joinedHeader returns the values of name in h, each trimmed of spaces and
// tabs, joined with ", "; ok is false when there is none.
func joinedHeader(h http.Header, name string) (v string, ok bool) {
	vals := h.Values(name)
	if len(vals) == 1 {
		return strings.Trim(vals[0], " \t"), true
	}
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strings.Trim(v, " \t"))
	}
	return b.String(), len(vals) > 0
}

// GenerateKey returns a new 2048-bit RSA key for a Signer, read from
// crypto/rand. The key and PEM helpers below are safe for concurrent use.
func GenerateKey() (*rsa.PrivateKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("httpsig: generating RSA key: %w", err)
	}
	return k, nil
}

// MarshalPrivateKeyPEM encodes k as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPrivateKeyPEM(k *rsa.PrivateKey) ([]byte, error) {
	if k == nil {
		return nil, errors.New("httpsig: nil private key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("httpsig: encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes the first PEM block of b, which must hold an RSA
// key of at least 1024 bits as PKCS#8 ("PRIVATE KEY") or PKCS#1 ("RSA PRIVATE
// KEY"). Encrypted PEM blocks are not supported.
func ParsePrivateKeyPEM(b []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("httpsig: no PEM block in private key")
	}
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, errors.New("httpsig: encrypted PEM private keys are not supported")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("httpsig: unsupported private key PEM type %q (want PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("httpsig: parsing %s: %w", block.Type, err)
	}
	k, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("httpsig: private key is %T, not RSA", key)
	}
	if n := k.N.BitLen(); n < 1024 {
		return nil, fmt.Errorf("httpsig: RSA private key too small (%d bits)", n)
	}
	return k, nil
}

// MarshalPublicKeyPEM encodes k, an *rsa.PublicKey or ed25519.PublicKey, as an
// SPKI "PUBLIC KEY" PEM block (the form to publish as publicKeyPem).
func MarshalPublicKeyPEM(k crypto.PublicKey) (string, error) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return "", errors.New("httpsig: nil RSA public key")
		}
	case ed25519.PublicKey:
	default:
		return "", fmt.Errorf("httpsig: unsupported public key type %T", k)
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "", fmt.Errorf("httpsig: encoding public key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// Bounds of the RSA public keys ParsePublicKeyPEM accepts. Fediverse
// servers use RSA keys of 2,048 bits (Mastodon, Pleroma, Akkoma,
// GoToSocial) or 4,096 bits (Misskey, Friendica), with exponent 65537. The
// cost of a verification grows with the square of the modulus size and
// with the exponent's length: a 262,144-bit key makes each verification
// cost over a second of CPU, an 8,192-bit one a few milliseconds, a
// 2,048-bit one a fraction of a millisecond. Keys come from documents
// anyone can publish, so larger ones are refused when parsed, before any
// signature is verified with them.
const (
	MinRSABits = 1024
	MaxRSABits = 8192
	// MaxRSAExponent is the largest public exponent accepted: 65537 (F4),
	// which every fediverse key uses; smaller odd exponents (3, 17) are
	// accepted too.
	MaxRSAExponent = 65537
)

// ParsePublicKeyPEM decodes the first PEM block of s: SPKI "PUBLIC KEY" (RSA
// or Ed25519) or PKCS#1 "RSA PUBLIC KEY". Surrounding whitespace and CRLF line
// endings are tolerated. It returns an *rsa.PublicKey or ed25519.PublicKey,
// and an error for other key types, RSA keys whose modulus is outside
// MinRSABits..MaxRSABits, and RSA keys whose exponent is even, under 3 or
// over MaxRSAExponent.
func ParsePublicKeyPEM(s string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(strings.TrimSpace(s)))
	if block == nil {
		return nil, errors.New("httpsig: no PEM block in public key")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("httpsig: unsupported public key PEM type %q (want PUBLIC KEY or RSA PUBLIC KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("httpsig: parsing public key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return nil, fmt.Errorf("httpsig: RSA key of %d bits: only %d to %d bits are accepted", n, MinRSABits, MaxRSABits)
		}
		if k.E < 3 || k.E > MaxRSAExponent || k.E%2 == 0 {
			return nil, fmt.Errorf("httpsig: RSA public exponent %d is not accepted (odd, 3 to %d)", k.E, MaxRSAExponent)
		}
		return k, nil
	case ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("httpsig: unsupported public key type %T", key)
}
