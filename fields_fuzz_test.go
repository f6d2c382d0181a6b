package relay

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzEnvelopeFields checks the relay's reading of the fields it decides
// on (id, type, actor, object, to, cc, attributedTo, at the top level and
// in an embedded object) against a reference reading as receivers do it:
// a case-sensitive map decoding. When the document names one of these
// fields twice or in another case, the relay must refuse it; otherwise,
// if it accepts the document, it must read what the reference reads.
func FuzzEnvelopeFields(f *testing.F) {
	for _, s := range []string{
		`{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":"as:Public","object":{"id":"https://a.example/n","type":"Note","attributedTo":"https://a.example/u"}}`,
		`{"id":"https://a.example/1","type":"Create","actor":"https://v.example/u","Actor":"https://a.example/u","to":"as:Public"}`,
		`{"id":"https://a.example/1","type":"Create","actor":"https://v.example/u","actor":"https://a.example/u"}`,
		`{"id":"https://a.example/1","Id":"https://v.example/1","type":["Announce","x"],"actor":{"id":"https://a.example/u"},"object":"https://b.example/n"}`,
		`{"id":"https://a.example/1","type":"Undo","actor":"https://a.example/u","object":{"id":"https://a.example/f","type":"Follow","actor":"https://a.example/u","object":"https://www.w3.org/ns/activitystreams#Public","OBJECT":"x"}}`,
		`{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","cc":[{"id":"as:Public"},"https://a.example/f"],"to":[]}`,
		`{"\u0069d":"https://a.example/1","type":"Delete","actor":"https://a.example/u","object":{"id":"https://a.example/n","attributedTo":["https://a.example/u"]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := parseEnvelope(body)
		var top map[string]any
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if dec.Decode(&top) != nil || top == nil {
			require.Error(t, err, "not an object to the reference")
			return
		}
		if ambiguous(body, envelopeFields) {
			require.Error(t, err, "a field named twice or in another case")
			return
		}
		if ambiguous(rawMember(body, "object"), objectFields) {
			require.Error(t, err, "an object field named twice or in another case")
			return
		}
		if err != nil {
			return
		}
		require.Equal(t, refID(top["id"]), e.ID)
		require.Equal(t, refType(top["type"]), e.Type)
		require.Equal(t, refID(top["actor"]), e.Actor)
		require.Equal(t, refIDs(top["to"]), nonNil(e.To))
		require.Equal(t, refIDs(top["cc"]), nonNil(e.Cc))
		switch o := top["object"].(type) {
		case map[string]any:
			require.True(t, e.Object.Embedded)
			require.Equal(t, refID(o["id"]), e.Object.ID)
			require.Equal(t, refType(o["type"]), e.Object.Type)
			require.Equal(t, refID(o["actor"]), e.Object.Actor)
			require.Equal(t, refID(o["object"]), e.Object.Object)
			require.Equal(t, refID(o["attributedTo"]), e.Object.AttributedTo)
		default:
			require.False(t, e.Object.Embedded)
			require.Equal(t, refID(o), e.Object.ID)
		}
	})
}

// ambiguous reports whether the JSON object b has two members whose names
// equal one of names when case is ignored (the same name twice included).
func ambiguous(b []byte, names []string) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	seen := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		key, _ := tok.(string)
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
		for _, n := range names {
			if strings.EqualFold(key, n) {
				seen[n]++
				if seen[n] > 1 || key != n {
					return true
				}
			}
		}
	}
	return false
}

// rawMember returns the raw value of the last member called name of the
// JSON object b (as a map decoding reads it), or nil.
func rawMember(b []byte, name string) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m[name]
}

// refID reads an IRI as a receiver does: a string, an object's "id", or
// an array's first item.
func refID(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case map[string]any:
		return refID(v["id"])
	case []any:
		if len(v) > 0 {
			return refID(v[0])
		}
	}
	return ""
}

func refType(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []any:
		if len(v) > 0 {
			s, _ := v[0].(string)
			return s
		}
	}
	return ""
}

func refIDs(v any) []string {
	out := []string{}
	switch v := v.(type) {
	case []any:
		for _, item := range v {
			if id := refID(item); id != "" {
				out = append(out, id)
			}
		}
	default:
		if id := refID(v); id != "" {
			out = append(out, id)
		}
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
