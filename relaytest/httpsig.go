package relaytest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// This file holds the draft-cavage HTTP signature code of the fake instances: a signer and a
// verifier written against protocol.md §6 and §10 with the standard library only, independent of
// the relay's own implementation.

// signSpec says how to sign one outgoing request.
type signSpec struct {
	keyID     string
	key       *rsa.PrivateKey
	algorithm string   // written as algorithm=...; omitted when empty
	headers   []string // signed header list, in order
	date      time.Time
}

// digestHeader returns the Digest header value for body.
func digestHeader(body []byte) string {
	sum := sha256.Sum256(body)
	return "SHA-256=" + base64.StdEncoding.EncodeToString(sum[:])
}

// signRequest sets Date (if unset), Digest (if unset and "digest" is signed) and Signature on req,
// a client-side request whose body is body.
func signRequest(req *http.Request, body []byte, s signSpec) error {
	if req.Header.Get("Date") == "" {
		d := s.date
		if d.IsZero() {
			d = time.Now()
		}
		req.Header.Set("Date", d.UTC().Format(http.TimeFormat))
	}
	if containsFold(s.headers, "digest") && req.Header.Get("Digest") == "" {
		req.Header.Set("Digest", digestHeader(body))
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	lines := make([]string, 0, len(s.headers))
	for _, h := range s.headers {
		h = strings.ToLower(h)
		var v string
		switch h {
		case "(request-target)":
			v = strings.ToLower(req.Method) + " " + req.URL.RequestURI()
		case "host":
			v = host
		case "content-length":
			v = strconv.Itoa(len(body))
		case "(created)", "(expires)":
			return fmt.Errorf("relaytest: signing %s is not supported", h)
		default:
			vals := req.Header.Values(h)
			if len(vals) == 0 {
				return fmt.Errorf("relaytest: cannot sign missing header %q", h)
			}
			v = strings.Join(vals, ", ")
		}
		lines = append(lines, h+": "+v)
	}
	hashed := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, hashed[:])
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString(`keyId="` + s.keyID + `"`)
	if s.algorithm != "" {
		b.WriteString(`,algorithm="` + s.algorithm + `"`)
	}
	b.WriteString(`,headers="` + strings.ToLower(strings.Join(s.headers, " ")) + `"`)
	b.WriteString(`,signature="` + base64.StdEncoding.EncodeToString(sig) + `"`)
	req.Header.Set("Signature", b.String())
	return nil
}

// sigParams is a parsed Signature header.
type sigParams struct {
	keyID      string
	algorithm  string
	headers    []string
	signature  []byte
	created    int64
	expires    int64
	hasCreated bool
	hasExpires bool
}

// parseSignature parses a draft-cavage Signature header value. Like Mastodon it tolerates a
// leading "Signature " (sent by old node http-signature versions).
func parseSignature(v string) (*sigParams, error) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "Signature ")
	params := map[string]string{}
	for len(v) > 0 {
		v = strings.TrimLeft(v, " ,")
		if v == "" {
			break
		}
		eq := strings.IndexByte(v, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("malformed parameter near %q", v)
		}
		name := strings.TrimSpace(v[:eq])
		v = v[eq+1:]
		var val string
		if strings.HasPrefix(v, `"`) {
			end := -1
			var sb strings.Builder
			for j := 1; j < len(v); j++ {
				c := v[j]
				if c == '\\' && j+1 < len(v) {
					sb.WriteByte(v[j+1])
					j++
					continue
				}
				if c == '"' {
					end = j
					break
				}
				sb.WriteByte(c)
			}
			if end < 0 {
				return nil, fmt.Errorf("unterminated quoted value for %q", name)
			}
			val = sb.String()
			v = v[end+1:]
		} else {
			end := strings.IndexByte(v, ',')
			if end < 0 {
				end = len(v)
			}
			val = strings.TrimSpace(v[:end])
			v = v[end:]
		}
		params[name] = val
	}
	sp := &sigParams{keyID: params["keyId"], algorithm: params["algorithm"]}
	if sp.keyID == "" {
		return nil, errors.New("no keyId")
	}
	if params["signature"] == "" {
		return nil, errors.New("no signature")
	}
	sig, err := base64.StdEncoding.DecodeString(params["signature"])
	if err != nil {
		return nil, fmt.Errorf("signature is not base64: %v", err)
	}
	sp.signature = sig
	if h, ok := params["headers"]; ok {
		sp.headers = strings.Fields(strings.ToLower(h))
	} else {
		sp.headers = []string{"date"} // the draft's default
	}
	if c, ok := params["created"]; ok {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad created: %v", err)
		}
		sp.created, sp.hasCreated = n, true
	}
	if e, ok := params["expires"]; ok {
		n, err := strconv.ParseFloat(e, 64)
		if err != nil {
			return nil, fmt.Errorf("bad expires: %v", err)
		}
		sp.expires, sp.hasExpires = int64(n), true
	}
	return sp, nil
}

// serverSigningString builds the signing string of a server-side request.
func serverSigningString(r *http.Request, sp *sigParams, withQuery bool) (string, error) {
	lines := make([]string, 0, len(sp.headers))
	for _, h := range sp.headers {
		var v string
		switch h {
		case "(request-target)":
			target := r.URL.EscapedPath()
			if withQuery && r.URL.RawQuery != "" {
				target += "?" + r.URL.RawQuery
			}
			v = strings.ToLower(r.Method) + " " + target
		case "host":
			v = r.Host
		case "(created)":
			if !sp.hasCreated {
				return "", errors.New("(created) signed without a created parameter")
			}
			v = strconv.FormatInt(sp.created, 10)
		case "(expires)":
			if !sp.hasExpires {
				return "", errors.New("(expires) signed without an expires parameter")
			}
			v = strconv.FormatInt(sp.expires, 10)
		default:
			vals := r.Header.Values(h)
			if len(vals) == 0 {
				return "", fmt.Errorf("signed header %q is missing from the request", h)
			}
			v = strings.Join(vals, ", ")
		}
		lines = append(lines, h+": "+v)
	}
	return strings.Join(lines, "\n"), nil
}

func verifyRSA(pub *rsa.PublicKey, signingString string, sig []byte) error {
	hashed := sha256.Sum256([]byte(signingString))
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, hashed[:], sig)
}

// checkDigest checks a Digest header value (a comma list of alg=value) against body. Only SHA-256
// is accepted, like Mastodon and Misskey.
func checkDigest(header string, body []byte) error {
	if header == "" {
		return errors.New("Digest header missing")
	}
	sum := sha256.Sum256(body)
	want := base64.StdEncoding.EncodeToString(sum[:])
	sawSHA256 := false
	for _, part := range strings.Split(header, ",") {
		alg, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		if !strings.EqualFold(alg, "sha-256") {
			continue
		}
		sawSHA256 = true
		if val == want {
			return nil
		}
	}
	if !sawSHA256 {
		return fmt.Errorf("unsupported Digest %q (only SHA-256)", header)
	}
	return fmt.Errorf("Digest mismatch: body hashes to SHA-256=%s, header says %q", want, header)
}

// publicKeyPEM encodes pub as an SPKI ("BEGIN PUBLIC KEY") PEM.
func publicKeyPEM(pub *rsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// parsePublicKeyPEM accepts SPKI and PKCS#1 RSA public keys.
func parsePublicKeyPEM(s string) (*rsa.PublicKey, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("publicKeyPem is not PEM")
	}
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("unsupported public key type %T", k)
		}
		return rk, nil
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
