package relaytest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"time"
)

// Outbound requests of the fake instances: signed POSTs and GETs, key and actor fetches.

const (
	contentTypeAP   = "application/activity+json"
	acceptAP        = `application/activity+json, application/ld+json; profile="https://www.w3.org/ns/activitystreams"`
	maxFetchedBytes = 1 << 20
)

// SendOption changes how Send and Get sign and send a request, typically to build a request
// that a verifier must refuse.
type SendOption func(*sendConfig)

type sendConfig struct {
	date         time.Time
	headers      []string
	headersSet   bool
	algorithm    string
	algorithmSet bool
	keyID        string
	contentType  string
	extra        http.Header
	unsigned     bool
	sentBody     []byte
	sentBodySet  bool
	digest       string
}

// WithDate signs with the given Date instead of the current time (e.g. a stale one).
func WithDate(t time.Time) SendOption { return func(c *sendConfig) { c.date = t } }

// WithSignedHeaders replaces the list of signed headers (e.g. to omit "digest"). Use
// "(request-target)", "host", "content-length" or any header name.
func WithSignedHeaders(headers ...string) SendOption {
	return func(c *sendConfig) { c.headers, c.headersSet = headers, true }
}

// WithAlgorithm sets the algorithm parameter of the Signature header; "" omits it.
func WithAlgorithm(alg string) SendOption {
	return func(c *sendConfig) { c.algorithm, c.algorithmSet = alg, true }
}

// WithKeyID signs with the signer's key but announces keyID in the Signature header.
func WithKeyID(keyID string) SendOption { return func(c *sendConfig) { c.keyID = keyID } }

// WithContentType sets the Content-Type of a POST (default application/activity+json).
func WithContentType(ct string) SendOption { return func(c *sendConfig) { c.contentType = ct } }

// WithHeader adds a request header before signing.
func WithHeader(name, value string) SendOption {
	return func(c *sendConfig) {
		if c.extra == nil {
			c.extra = http.Header{}
		}
		c.extra.Add(name, value)
	}
}

// WithoutSignature sends the request without a Signature header (Date and Digest are still set).
func WithoutSignature() SendOption { return func(c *sendConfig) { c.unsigned = true } }

// WithTamperedBody signs (and digests) the body passed to Send but transmits body instead.
func WithTamperedBody(body []byte) SendOption {
	return func(c *sendConfig) { c.sentBody, c.sentBodySet = body, true }
}

// WithDigest sets the Digest header to value instead of the body's SHA-256 (it is still signed
// if "digest" is among the signed headers).
func WithDigest(value string) SendOption { return func(c *sendConfig) { c.digest = value } }

// postSignature returns the flavor's algorithm and signed headers for POSTs.
func (i *Instance) postSignature() (string, []string) {
	switch i.flavor {
	case Misskey:
		return "rsa-sha256", []string{"(request-target)", "date", "host", "digest"}
	case Pleroma:
		return "rsa-sha256", []string{"(request-target)", "host", "content-length", "digest", "date"}
	case GoToSocial:
		return "hs2019", []string{"(request-target)", "host", "date", "digest"}
	default:
		return "rsa-sha256", []string{"(request-target)", "host", "date", "digest", "content-type"}
	}
}

// getSignature returns the flavor's algorithm and signed headers for GETs.
func (i *Instance) getSignature() (string, []string) {
	switch i.flavor {
	case Mastodon:
		return "rsa-sha256", []string{"(request-target)", "host", "date", "accept"}
	case Misskey:
		return "rsa-sha256", []string{"(request-target)", "date", "host", "accept"}
	case GoToSocial:
		return "hs2019", []string{"(request-target)", "host", "date"}
	default:
		return "rsa-sha256", []string{"(request-target)", "host", "date"}
	}
}

// Send POSTs body to inbox, HTTP-signed the flavor's way by keyOwner: "" for the relay actor, a
// local user name or a local actor id. The Content-Type is application/activity+json, the body
// has a fixed length, Date is fresh and Digest is SHA-256 of body unless options say otherwise.
// The caller must close the response body.
func (i *Instance) Send(ctx context.Context, inbox, keyOwner string, body []byte, opts ...SendOption) (*http.Response, error) {
	a, err := i.actorFor(keyOwner)
	if err != nil {
		return nil, err
	}
	return i.post(ctx, inbox, a, body, opts...)
}

// Get GETs target with Accept: application/activity+json, signed the flavor's way by keyOwner
// ("" for the relay actor, a user name or a local actor id) unless WithoutSignature is given.
// The caller must close the response body.
func (i *Instance) Get(ctx context.Context, target, keyOwner string, opts ...SendOption) (*http.Response, error) {
	a, err := i.actorFor(keyOwner)
	if err != nil {
		return nil, err
	}
	return i.get(ctx, target, a, opts...)
}

func (i *Instance) post(ctx context.Context, inbox string, signer *localActor, body []byte, opts ...SendOption) (*http.Response, error) {
	var c sendConfig
	for _, o := range opts {
		o(&c)
	}
	sent := body
	if c.sentBodySet {
		sent = c.sentBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, inbox, bytes.NewReader(sent))
	if err != nil {
		return nil, err
	}
	ct := contentTypeAP
	if c.contentType != "" {
		ct = c.contentType
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("User-Agent", i.userAgent())
	for k, vs := range c.extra {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if c.digest != "" {
		req.Header.Set("Digest", c.digest)
	}
	alg, headers := i.postSignature()
	if err := i.sign(req, body, signer, alg, headers, &c); err != nil {
		return nil, err
	}
	return i.client.Do(req)
}

func (i *Instance) get(ctx context.Context, target string, signer *localActor, opts ...SendOption) (*http.Response, error) {
	var c sendConfig
	for _, o := range opts {
		o(&c)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", acceptAP)
	req.Header.Set("User-Agent", i.userAgent())
	for k, vs := range c.extra {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	alg, headers := i.getSignature()
	if err := i.sign(req, nil, signer, alg, headers, &c); err != nil {
		return nil, err
	}
	return i.client.Do(req)
}

func (i *Instance) sign(req *http.Request, body []byte, signer *localActor, alg string, headers []string, c *sendConfig) error {
	if c.algorithmSet {
		alg = c.algorithm
	}
	if c.headersSet {
		headers = c.headers
	}
	d := c.date
	if d.IsZero() {
		d = time.Now()
	}
	if c.unsigned {
		req.Header.Set("Date", d.UTC().Format(http.TimeFormat))
		if body != nil && req.Header.Get("Digest") == "" {
			req.Header.Set("Digest", digestHeader(body))
		}
		return nil
	}
	keyID := c.keyID
	if keyID == "" {
		keyID = i.keyID(signer)
	}
	return signRequest(req, body, signSpec{keyID: keyID, key: i.keyOf(signer), algorithm: alg, headers: headers, date: d})
}

func (i *Instance) userAgent() string {
	name, version := i.software()
	return fmt.Sprintf("%s/%s (relaytest; +%s/)", name, version, i.base)
}

// deliver marshals doc, POSTs it signed by signer and requires a 2xx answer.
func (i *Instance) deliver(ctx context.Context, inbox string, signer *localActor, doc map[string]any) error {
	body, err := canonicalJSON(doc)
	if err != nil {
		return err
	}
	resp, err := i.post(ctx, inbox, signer, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &HTTPError{Method: http.MethodPost, URL: inbox, StatusCode: resp.StatusCode, Body: string(rb)}
	}
	return nil
}

// signsFetches reports whether outbound GETs are signed.
func (i *Instance) signsFetches() bool { return i.flavor == GoToSocial || i.opts.SignFetches }

// fetchJSON GETs an ActivityPub document (signed if the flavor signs fetches) and returns the
// status and the parsed document. A 200 with a non-ActivityPub content type or invalid JSON is
// an error.
func (i *Instance) fetchJSON(ctx context.Context, target string) (int, map[string]any, []byte, error) {
	var opts []SendOption
	if !i.signsFetches() {
		opts = append(opts, WithoutSignature())
	}
	resp, err := i.get(ctx, target, i.system, opts...)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxFetchedBytes+1))
	if err != nil {
		return resp.StatusCode, nil, nil, err
	}
	if len(b) > maxFetchedBytes {
		return resp.StatusCode, nil, nil, fmt.Errorf("response larger than %d bytes", maxFetchedBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, b, fmt.Errorf("GET %s: status %d", target, resp.StatusCode)
	}
	if !isAPContentType(resp.Header.Get("Content-Type")) {
		return resp.StatusCode, nil, b, fmt.Errorf("GET %s: unexpected content type %q", target, resp.Header.Get("Content-Type"))
	}
	doc, err := parseJSONObject(b)
	if err != nil {
		return resp.StatusCode, nil, b, fmt.Errorf("GET %s: %v", target, err)
	}
	return resp.StatusCode, doc, b, nil
}

// isAPContentType accepts application/activity+json and application/ld+json (any parameters).
func isAPContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/activity+json" || mt == "application/ld+json"
}

func parseJSONObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if doc == nil {
		return nil, errors.New("JSON is not an object")
	}
	if dec.More() {
		return nil, errors.New("trailing data after JSON object")
	}
	return doc, nil
}

// --- remote keys and actors ---------------------------------------------------------------------

type remoteKey struct {
	keyID string
	owner string
	pub   *rsa.PublicKey
}

type remoteActor struct {
	id, typ, inbox, sharedInbox string
	username                    string // preferredUsername
}

var errGone = errors.New("key owner is gone (410)")

// remoteKeyFor returns the cached key or fetches it. refresh forces a refetch.
func (i *Instance) remoteKeyFor(ctx context.Context, keyID string, refresh bool) (*remoteKey, bool, error) {
	if !refresh {
		i.mu.Lock()
		k, ok := i.keys[keyID]
		i.mu.Unlock()
		if ok {
			return k, true, nil
		}
	}
	k, err := i.fetchKey(ctx, keyID)
	if err != nil {
		return nil, false, err
	}
	i.mu.Lock()
	i.keys[keyID] = k
	i.mu.Unlock()
	return k, false, nil
}

// fetchKey fetches keyID (without its fragment) and finds the key: in publicKey of an actor (or
// of GoToSocial's key stub), or in a standalone Key document whose owner is then fetched and must
// list the key (Mastodon's bidirectional check).
func (i *Instance) fetchKey(ctx context.Context, keyID string) (*remoteKey, error) {
	u, err := url.Parse(keyID)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("unsupported keyId %q", keyID)
	}
	u.Fragment = ""
	status, doc, _, err := i.fetchJSON(ctx, u.String())
	if status == http.StatusGone {
		return nil, errGone
	}
	if err != nil {
		return nil, fmt.Errorf("fetching key %s: %w", keyID, err)
	}
	if !contextHasAS(doc) {
		return nil, fmt.Errorf("key document %s: @context does not include ActivityStreams", u)
	}
	pem, owner, ok := findPublicKey(doc, keyID)
	if !ok {
		return nil, fmt.Errorf("document %s has no publicKey with id %s", u, keyID)
	}
	if owner == "" {
		return nil, fmt.Errorf("key %s has no owner", keyID)
	}
	docID, _ := doc["id"].(string)
	if docID == owner {
		i.cacheActor(doc)
	} else {
		// A standalone key document: the owner must claim the key.
		_, odoc, _, err := i.fetchJSON(ctx, owner)
		if err != nil {
			return nil, fmt.Errorf("fetching key owner %s: %w", owner, err)
		}
		if _, o2, ok := findPublicKey(odoc, keyID); !ok || o2 != owner {
			return nil, fmt.Errorf("key owner %s does not list key %s", owner, keyID)
		}
		i.cacheActor(odoc)
	}
	pub, err := parsePublicKeyPEM(pem)
	if err != nil {
		return nil, fmt.Errorf("key %s: %v", keyID, err)
	}
	return &remoteKey{keyID: keyID, owner: owner, pub: pub}, nil
}

// findPublicKey finds the key keyID in doc.publicKey (an object or array) or doc itself.
func findPublicKey(doc map[string]any, keyID string) (pem, owner string, ok bool) {
	check := func(m map[string]any) bool {
		if id, _ := m["id"].(string); id != keyID {
			return false
		}
		pem, _ = m["publicKeyPem"].(string)
		owner, _ = m["owner"].(string)
		return pem != ""
	}
	switch pk := doc["publicKey"].(type) {
	case map[string]any:
		if check(pk) {
			return pem, owner, true
		}
	case []any:
		for _, e := range pk {
			if m, isMap := e.(map[string]any); isMap && check(m) {
				return pem, owner, true
			}
		}
	}
	if check(doc) {
		return pem, owner, true
	}
	// A keyId naming the actor itself (e.g. pub-relay's keyId="https://relay/actor"): Mastodon
	// takes the actor's key.
	if id, _ := doc["id"].(string); id == keyID {
		if pk, isMap := doc["publicKey"].(map[string]any); isMap {
			pem, _ = pk["publicKeyPem"].(string)
			owner, _ = pk["owner"].(string)
			if owner == "" {
				owner = id
			}
			if pem != "" && owner == id {
				return pem, owner, true
			}
		}
	}
	return "", "", false
}

// cacheActor remembers an actor document's inbox and shared inbox (if it has an inbox).
func (i *Instance) cacheActor(doc map[string]any) {
	ra := actorInfo(doc)
	if ra == nil {
		return
	}
	i.mu.Lock()
	i.remotes[ra.id] = ra
	i.mu.Unlock()
}

func actorInfo(doc map[string]any) *remoteActor {
	id, _ := doc["id"].(string)
	inbox, _ := doc["inbox"].(string)
	if id == "" || inbox == "" {
		return nil
	}
	ra := &remoteActor{id: id, inbox: inbox}
	ra.typ, _ = doc["type"].(string)
	ra.username, _ = doc["preferredUsername"].(string)
	if ep, ok := doc["endpoints"].(map[string]any); ok {
		ra.sharedInbox, _ = ep["sharedInbox"].(string)
	}
	return ra
}

// remoteActorFor returns the cached actor or fetches it.
func (i *Instance) remoteActorFor(ctx context.Context, id string) (*remoteActor, error) {
	i.mu.Lock()
	ra, ok := i.remotes[id]
	i.mu.Unlock()
	if ok {
		return ra, nil
	}
	_, doc, _, err := i.fetchJSON(ctx, id)
	if err != nil {
		return nil, err
	}
	if docID, _ := doc["id"].(string); docID != id {
		return nil, fmt.Errorf("actor %s: document id is %q", id, docID)
	}
	ra = actorInfo(doc)
	if ra == nil {
		return nil, fmt.Errorf("actor %s has no inbox", id)
	}
	i.mu.Lock()
	i.remotes[id] = ra
	i.mu.Unlock()
	return ra, nil
}

// contextHasAS reports whether doc's @context includes the ActivityStreams context.
func contextHasAS(doc map[string]any) bool {
	switch c := doc["@context"].(type) {
	case string:
		return c == asContext
	case []any:
		for _, e := range c {
			if s, ok := e.(string); ok && s == asContext {
				return true
			}
		}
	}
	return false
}
