package relay

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fixtures", name))
	require.NoError(t, err)
	return b
}

func TestParseEnvelopeFixtures(t *testing.T) {
	tests := []struct {
		file     string
		typ      string
		actor    string
		objectID string
		public   bool
		ldSigned bool
		embedded bool
	}{
		{"01-mastodon-follow-to-relay.json", "Follow", "https://mastodon.example/actor", PublicCollection, false, false, false},
		{"03-mastodon-undo-follow.json", "Undo", "https://mastodon.example/actor", "https://mastodon.example/0d6f2c1e-8b4a-4f5e-9a37-2f1c5b7e9d10", false, false, true},
		{"04-mastodon-create-note-ldsig.json", "Create", "https://mastodon.example/users/alice", "https://mastodon.example/users/alice/statuses/113456789012345678", true, true, true},
		{"05-mastodon-delete.json", "Delete", "https://mastodon.example/users/alice", "https://mastodon.example/users/alice/statuses/113456789012345678", true, true, true},
		{"06-mastodon-announce-boost.json", "Announce", "https://mastodon.example/users/bob", "https://other.example/users/carol/statuses/987654321", true, true, false},
		{"07-litepub-follow-relay-actor.json", "Follow", "https://pleroma.example/relay", "https://relay.example/actor", false, false, false},
		{"08-relay-announce-note.json", "Announce", "https://relay.example/actor", "https://mastodon.example/users/alice/statuses/113456789012345678", true, false, false},
		{"09-misskey-follow-to-relay.json", "Follow", "https://misskey.example/users/9xk2abcd01", PublicCollection, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			e, err := parseEnvelope(readFixture(t, tt.file))
			require.NoError(t, err)
			assert.Equal(t, tt.typ, e.Type)
			assert.Equal(t, tt.actor, e.Actor)
			assert.Equal(t, tt.objectID, e.Object.ID)
			assert.Equal(t, tt.public, e.IsPublic(), "public")
			assert.Equal(t, tt.ldSigned, e.LDSigned, "LD signed")
			assert.Equal(t, tt.embedded, e.Object.Embedded, "embedded object")
			assert.NotEmpty(t, e.ID)
		})
	}
}

func TestParseEnvelopeAddressingShapes(t *testing.T) {
	for name, doc := range map[string]string{
		"to as string":     `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":"https://www.w3.org/ns/activitystreams#Public"}`,
		"cc as array":      `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","cc":["https://a.example/f","as:Public"]}`,
		"short Public":     `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":["Public"]}`,
		"object in to":     `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":[{"id":"https://www.w3.org/ns/activitystreams#Public"}]}`,
		"actor as object":  `{"id":"https://a.example/1","type":"Create","actor":{"id":"https://a.example/u","type":"Person"},"to":"as:Public"}`,
		"type as an array": `{"id":"https://a.example/1","type":["Create"],"actor":"https://a.example/u","to":"as:Public"}`,
	} {
		t.Run(name, func(t *testing.T) {
			e, err := parseEnvelope([]byte(doc))
			require.NoError(t, err)
			assert.True(t, e.IsPublic())
			assert.Equal(t, "Create", e.Type)
			assert.Equal(t, "https://a.example/u", e.Actor)
		})
	}
	e, err := parseEnvelope([]byte(`{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":["https://a.example/u/followers"]}`))
	require.NoError(t, err)
	assert.False(t, e.IsPublic(), "followers-only is not public")
}

func TestParseEnvelopeRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"not JSON":            `{"id":`,
		"array":               `[1,2]`,
		"trailing data":       `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u"} {}`,
		"no type":             `{"id":"https://a.example/1","actor":"https://a.example/u"}`,
		"no actor":            `{"id":"https://a.example/1","type":"Create"}`,
		"no id":               `{"type":"Create","actor":"https://a.example/u"}`,
		"actor not a URL":     `{"id":"https://a.example/1","type":"Create","actor":"acct:u@a.example"}`,
		"actor with userinfo": `{"id":"https://a.example/1","type":"Create","actor":"https://x:y@a.example/u"}`,
		"to of numbers":       `{"id":"https://a.example/1","type":"Create","actor":"https://a.example/u","to":[1]}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseEnvelope([]byte(doc))
			assert.ErrorIs(t, err, errMalformed)
		})
	}
}

func TestParseEnvelopePublished(t *testing.T) {
	e, err := parseEnvelope(readFixture(t, "04-mastodon-create-note-ldsig.json"))
	require.NoError(t, err)
	assert.True(t, e.Published.Equal(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)))
}

func TestLDSignatureDetection(t *testing.T) {
	assert.False(t, hasLDSignature([]byte(`{"type":"RsaSignature2017"}`)), "no signatureValue")
	assert.False(t, hasLDSignature([]byte(`"x"`)))
	assert.True(t, hasProof([]byte(`{"type":"DataIntegrityProof","proofValue":"z1"}`)))
	assert.True(t, hasProof([]byte(`[{"type":"X"},{"type":"DataIntegrityProof","proofValue":"z1"}]`)))
	assert.False(t, hasProof([]byte(`{"type":"DataIntegrityProof"}`)))
}
