package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// PublicCollection is the special as:Public collection that marks an
// activity as public. Incoming documents may spell it in any of the forms
// listed in publicSpellings.
const PublicCollection = "https://www.w3.org/ns/activitystreams#Public"

var publicSpellings = map[string]bool{
	PublicCollection: true,
	"http://www.w3.org/ns/activitystreams#Public": true,
	"as:Public": true,
	"Public":    true,
}

// isPublic reports whether iri is a spelling of as:Public.
func isPublic(iri string) bool { return publicSpellings[iri] }

// envelope is the part of an incoming activity the relay looks at. The
// original bytes are kept by the caller and forwarded untouched; the
// envelope is never serialised again.
type envelope struct {
	ID        string
	Type      string
	Actor     string
	Object    objectRef
	Target    string // a Move's new account
	To, Cc    []string
	Published time.Time
	// LDSigned reports an embedded Linked Data signature (RsaSignature2017)
	// or a FEP-8b32 integrity proof, which lets receivers authenticate a
	// verbatim copy delivered by the relay.
	LDSigned bool

	// rfc9421 reports that the request carrying the activity was signed
	// with an RFC 9421 message signature (set by the inbox, not parsed).
	rfc9421 bool
	// inboxTopic is the topic whose inbox received the activity, "" for
	// the relay's inbox (set by the inbox; see topics.go).
	inboxTopic string
}

// objectRef is an activity's object: an IRI, or an embedded object of which
// the relay keeps the fields it needs.
type objectRef struct {
	ID           string
	Type         string
	Actor        string // embedded activities (the Follow inside an Undo or Accept)
	Object       string // embedded activities: their own object id
	AttributedTo string
	Embedded     bool
}

// errMalformed wraps every parse failure of an incoming activity.
var errMalformed = errors.New("relay: malformed activity")

// envelopeFields are the top-level fields of an activity the relay reads
// (see checkMemberNames for how).
var envelopeFields = []string{"id", "type", "actor", "object", "target", "to", "cc", "attributedTo", "published", "signature", "proof"}

// objectFields are the fields the relay reads of an embedded object.
var objectFields = []string{"id", "type", "actor", "object", "to", "cc", "attributedTo"}

// idField is the field the relay reads of an embedded actor or address.
var idField = []string{"id"}

// parseEnvelope decodes the fields the relay needs from an activity
// document. It accepts addressing as a string or an array, actors and
// objects as IRIs or embedded objects, and ignores everything else. Fields
// are read as receivers read them (see checkMemberNames): an activity that spells
// one of them twice, or in another case, is malformed.
func parseEnvelope(body []byte) (*envelope, error) {
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if err := checkMemberNames(body, envelopeFields); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	// Decoding into a struct matches names ignoring case; with no member
	// that differs from a field's name only in case, and none twice, it
	// reads exactly the members receivers read.
	var raw struct {
		ID        json.RawMessage `json:"id"`
		Type      json.RawMessage `json:"type"`
		Actor     json.RawMessage `json:"actor"`
		Object    json.RawMessage `json:"object"`
		Target    json.RawMessage `json:"target"`
		To        json.RawMessage `json:"to"`
		Cc        json.RawMessage `json:"cc"`
		Published json.RawMessage `json:"published"`
		Signature json.RawMessage `json:"signature"`
		Proof     json.RawMessage `json:"proof"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON document", errMalformed)
	}
	var err error
	e := &envelope{}
	if e.ID, err = idOf(raw.ID); err != nil {
		return nil, fmt.Errorf("%w: id: %v", errMalformed, err)
	}
	if e.Type, err = typeOf(raw.Type); err != nil {
		return nil, fmt.Errorf("%w: type: %v", errMalformed, err)
	}
	if e.Actor, err = idOf(raw.Actor); err != nil {
		return nil, fmt.Errorf("%w: actor: %v", errMalformed, err)
	}
	if e.Object, err = parseObject(raw.Object); err != nil {
		return nil, fmt.Errorf("%w: object: %v", errMalformed, err)
	}
	if e.Target, err = idOf(raw.Target); err != nil {
		return nil, fmt.Errorf("%w: target: %v", errMalformed, err)
	}
	if e.To, err = idList(raw.To); err != nil {
		return nil, fmt.Errorf("%w: to: %v", errMalformed, err)
	}
	if e.Cc, err = idList(raw.Cc); err != nil {
		return nil, fmt.Errorf("%w: cc: %v", errMalformed, err)
	}
	e.Published = parseTime(raw.Published)
	e.LDSigned = hasLDSignature(raw.Signature) || hasProof(raw.Proof)
	switch {
	case e.Type == "":
		return nil, fmt.Errorf("%w: no type", errMalformed)
	case e.Actor == "":
		return nil, fmt.Errorf("%w: no actor", errMalformed)
	case e.ID == "" && e.Type != "Delete":
		// Some servers send id-less transient Deletes; everything else
		// needs an id for deduplication.
		return nil, fmt.Errorf("%w: no id", errMalformed)
	}
	for _, f := range []struct{ name, id string }{
		{"id", e.ID}, {"actor", e.Actor}, {"object id", e.Object.ID}, {"object actor", e.Object.Actor}, {"target", e.Target},
		{"object's object", e.Object.Object}, {"object attributedTo", e.Object.AttributedTo},
	} {
		if len(f.id) > maxIDLength {
			return nil, fmt.Errorf("%w: %s is %d bytes long, over the %d-byte limit for ids", errMalformed, f.name, len(f.id), maxIDLength)
		}
	}
	if err := checkIRI(e.Actor); err != nil {
		return nil, fmt.Errorf("%w: actor: %v", errMalformed, err)
	}
	return e, nil
}

// checkMemberNames makes sure the relay reads the members names of the
// JSON object m as ActivityPub receivers read them: by exact,
// case-sensitive name, as JSON-LD and JavaScript, Ruby and Go map decoding
// do. encoding/json's struct decoding matches names ignoring case (Unicode
// simple folding, so "Actor", "ACTOR", "\u0041ctor" all match "actor")
// and takes the last of duplicates; so checkMemberNames refuses a member
// whose name equals one of names only when case is ignored, and a named
// member that appears twice: receivers would disagree on what the object
// says, and the relay would vouch for one reading while another is
// delivered. With neither, decoding m into a struct with those names as
// tags reads exactly the members receivers read.
//
// It scans m's top-level member names in one pass without decoding the
// values (names with escapes are unescaped); m must be an object, and is
// otherwise validated by the decoding that follows, not here. names holds
// at most 64 names.
func checkMemberNames(m []byte, names []string) error {
	i := 0
	for i < len(m) && (m[i] == ' ' || m[i] == '\t' || m[i] == '\n' || m[i] == '\r') {
		i++
	}
	if i == len(m) || m[i] != '{' {
		return errors.New("not a JSON object")
	}
	var seen uint64 // bit k: names[k] seen
	depth, expectName := 0, false
	for ; i < len(m); i++ {
		switch c := m[i]; c {
		case '"':
			start, escaped := i, false
			for i++; i < len(m) && m[i] != '"'; i++ {
				if m[i] == '\\' {
					escaped = true
					i++
				}
			}
			if depth != 1 || !expectName || i >= len(m) {
				continue
			}
			expectName = false
			name := string(m[start+1 : i])
			if escaped {
				if json.Unmarshal(m[start:i+1], &name) != nil {
					return errors.New("bad member name")
				}
			}
			for k, want := range names {
				if !strings.EqualFold(name, want) {
					continue
				}
				if name != want {
					return fmt.Errorf("member %q differs from %q only in case", name, want)
				}
				if seen&(1<<k) != 0 {
					return fmt.Errorf("member %q appears twice", want)
				}
				seen |= 1 << k
			}
		case '{', '[':
			depth++
			expectName = depth == 1
		case '}', ']':
			depth--
		case ',':
			expectName = depth == 1
		}
	}
	return nil
}

// fieldsOf returns the raw values of the named members of the JSON object
// m, read as receivers read them (see checkMemberNames: a member named
// twice or in another case is an error). It is for documents read once,
// such as fetched actors and keys; the inbox decodes into structs.
func fieldsOf(m []byte, names ...string) (map[string]json.RawMessage, error) {
	if err := checkMemberNames(m, names); err != nil {
		return nil, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(m, &all); err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(names))
	for _, name := range names {
		if v, ok := all[name]; ok {
			out[name] = v
		}
	}
	return out, nil
}

// maxIDLength is the longest id (of an activity, its actor, its object,
// or a signature's keyId) the inbox accepts, in bytes; longer ones get 400.
// Real ids are well under 200 bytes, and ids become store keys
// (deduplication marks), which must stay small.
const maxIDLength = 2048

// maxJSONDepth is how deeply arrays and objects may nest in an incoming
// activity or a fetched document. Real activities nest a few levels (an
// Undo of a Follow, a Create of a Note with attachments and tags); deeper
// documents only serve to make parsers work.
const maxJSONDepth = 64

// checkJSONDepth returns an error if arrays and objects nest deeper than
// max in the JSON text b. It does not validate b otherwise, and it runs
// before any parsing, in one pass without allocating.
func checkJSONDepth(b []byte, max int) error {
	depth := 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if depth++; depth > max {
				return fmt.Errorf("JSON nested deeper than %d levels", max)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// isPost reports whether the activity publishes its object: a Create or
// an Announce (a boost), as opposed to Update, Delete or Move.
func (e *envelope) isPost() bool { return e.Type == "Create" || e.Type == "Announce" }

// IsPublic reports whether the activity is addressed to as:Public in to or cc.
func (e *envelope) IsPublic() bool {
	for _, l := range [][]string{e.To, e.Cc} {
		for _, a := range l {
			if isPublic(a) {
				return true
			}
		}
	}
	return false
}

// idOf decodes an IRI given as a string or as an object with an "id".
func idOf(m json.RawMessage) (string, error) {
	if len(m) == 0 || string(m) == "null" {
		return "", nil
	}
	switch m[0] {
	case '"':
		var s string
		err := json.Unmarshal(m, &s)
		return s, err
	case '{':
		if err := checkMemberNames(m, idField); err != nil {
			return "", err
		}
		var o struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(m, &o); err != nil {
			return "", err
		}
		return idOf(o.ID)
	case '[':
		// An array of actors: take the first (Mastodon does the same).
		var l []json.RawMessage
		if err := json.Unmarshal(m, &l); err != nil {
			return "", err
		}
		if len(l) == 0 {
			return "", nil
		}
		return idOf(l[0])
	}
	return "", errors.New("not an IRI or object")
}

// typeOf decodes "type" given as a string or an array of strings (first wins).
func typeOf(m json.RawMessage) (string, error) {
	if len(m) == 0 || string(m) == "null" {
		return "", nil
	}
	if m[0] == '[' {
		var l []string
		if err := json.Unmarshal(m, &l); err != nil {
			return "", err
		}
		if len(l) == 0 {
			return "", nil
		}
		return l[0], nil
	}
	var s string
	err := json.Unmarshal(m, &s)
	return s, err
}

// idList decodes addressing given as one IRI or an array of IRIs/objects.
// Items without an id are left out.
func idList(m json.RawMessage) ([]string, error) {
	items, err := oneOrMany(m)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, item := range items {
		id, err := idOf(item)
		if err != nil {
			return nil, err
		}
		if id != "" {
			out = append(out, id)
		}
	}
	return out, nil
}

// oneOrMany returns the items of m when it is a JSON array, m itself as
// the only item when it is any other value, and nothing when m is absent
// or null. It fails only for an array that does not decode.
func oneOrMany(m json.RawMessage) ([]json.RawMessage, error) {
	if len(m) == 0 || string(m) == "null" {
		return nil, nil
	}
	if m[0] != '[' {
		return []json.RawMessage{m}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(m, &items); err != nil {
		return nil, err
	}
	return items, nil
}

// parseTime decodes an RFC 3339 time string (fractional seconds allowed),
// or returns the zero time.
func parseTime(m json.RawMessage) time.Time {
	var s string
	if len(m) == 0 || json.Unmarshal(m, &s) != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func parseObject(m json.RawMessage) (objectRef, error) {
	if len(m) == 0 || string(m) == "null" {
		return objectRef{}, nil
	}
	if m[0] != '{' {
		id, err := idOf(m)
		return objectRef{ID: id}, err
	}
	if err := checkMemberNames(m, objectFields); err != nil {
		return objectRef{}, err
	}
	var o struct {
		ID           json.RawMessage `json:"id"`
		Type         json.RawMessage `json:"type"`
		Actor        json.RawMessage `json:"actor"`
		Object       json.RawMessage `json:"object"`
		AttributedTo json.RawMessage `json:"attributedTo"`
	}
	if err := json.Unmarshal(m, &o); err != nil {
		return objectRef{}, err
	}
	ref := objectRef{Embedded: true}
	var err error
	if ref.ID, err = idOf(o.ID); err != nil {
		return ref, err
	}
	if ref.Type, err = typeOf(o.Type); err != nil {
		return ref, err
	}
	if ref.Actor, err = idOf(o.Actor); err != nil {
		return ref, err
	}
	if ref.Object, err = idOf(o.Object); err != nil {
		return ref, err
	}
	if ref.AttributedTo, err = idOf(o.AttributedTo); err != nil {
		return ref, err
	}
	return ref, nil
}

// hasLDSignature reports a Linked Data signature block as Mastodon and
// Misskey attach it: {"type": "RsaSignature2017", "signatureValue": ...}.
func hasLDSignature(m json.RawMessage) bool {
	if len(m) == 0 || m[0] != '{' {
		return false
	}
	var sig struct {
		Type           string `json:"type"`
		SignatureValue string `json:"signatureValue"`
	}
	return json.Unmarshal(m, &sig) == nil && sig.Type == "RsaSignature2017" && sig.SignatureValue != ""
}

// hasProof reports a FEP-8b32 object integrity proof (one or several).
func hasProof(m json.RawMessage) bool {
	if len(m) == 0 {
		return false
	}
	var proofs []struct {
		Type       string `json:"type"`
		ProofValue string `json:"proofValue"`
	}
	if m[0] == '{' {
		m = append(append(json.RawMessage{'['}, m...), ']')
	}
	if json.Unmarshal(m, &proofs) != nil {
		return false
	}
	for _, p := range proofs {
		if p.Type == "DataIntegrityProof" && p.ProofValue != "" {
			return true
		}
	}
	return false
}

// checkIRI requires an absolute http(s) URL with a host that has a
// canonical form (see canonicalHost) and no user info.
func checkIRI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("%q has no host or has user info", s)
	}
	if _, err := canonicalHost(u.Scheme, u.Host); err != nil {
		return err
	}
	return nil
}

// stripFragment returns s without its #fragment.
func stripFragment(s string) string {
	if i := strings.IndexByte(s, '#'); i >= 0 {
		return s[:i]
	}
	return s
}
