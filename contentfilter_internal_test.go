package relay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPostReadObject(t *testing.T) {
	var p Post
	require.NoError(t, p.readObject([]byte(`{
		"id": "https://a.example/notes/1", "type": "Note",
		"attributedTo": "https://a.example/users/ann",
		"tag": [{"type": "Hashtag", "name": "#Cats"}, {"type": "Mention", "name": "@bob"},
			{"type": "Hashtag", "name": "#CATS"}, {"type": "Hashtag", "name": "#Straße"}],
		"contentMap": {"en_US": "<p>hi</p>", "de": "<p>hallo</p>"},
		"sensitive": true, "summary": " spoilers ",
		"attachment": [{"type": "Document"}],
		"inReplyTo": {"id": "https://b.example/notes/2"},
		"published": "2026-12-07T10:00:00Z"
	}`)))
	assert.True(t, p.ObjectKnown)
	assert.Equal(t, "https://a.example/users/ann", p.Author)
	assert.Equal(t, []string{"cats", "strasse"}, p.Tags)
	assert.Equal(t, []string{"de", "en-us"}, p.Languages)
	assert.True(t, p.Sensitive)
	assert.Equal(t, "spoilers", p.Summary)
	assert.True(t, p.HasMedia)
	assert.Equal(t, "https://b.example/notes/2", p.InReplyTo)
	assert.Equal(t, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), p.Published)

	// Single values, "language", and nothing at all.
	p = Post{}
	require.NoError(t, p.readObject([]byte(`{"tag": {"type": "Hashtag", "name": "#one"}, "language": "ja",
		"attachment": [], "sensitive": "yes", "summary": null, "inReplyTo": null}`)))
	assert.Equal(t, []string{"one"}, p.Tags)
	assert.Equal(t, []string{"ja"}, p.Languages)
	assert.False(t, p.HasMedia)
	assert.False(t, p.Sensitive)
	assert.Empty(t, p.InReplyTo)
	p = Post{}
	require.NoError(t, p.readObject([]byte(`{"language": {"identifier": "pt-BR", "nameMap": {}}}`)))
	assert.Equal(t, []string{"pt-br"}, p.Languages)
	assert.Error(t, p.readObject([]byte(`[1]`)))
}

func TestParseAuthor(t *testing.T) {
	for doc, optedOut := range map[string]bool{
		`{"type": "Person"}`:                                                 false,
		`{"type": "Person", "indexable": true}`:                              false,
		`{"type": "Person", "indexable": false}`:                             true,
		`{"type": "Person", "summary": "<p>cats #nobot</p>"}`:                true,
		`{"type": "Person", "summary": "#NoRelay, please"}`:                  true,
		`{"type": "Person", "summary": "I like #nobotany"}`:                  false,
		`{"type": "Person", "summary": "nobot"}`:                             false,
		`{"type": "Person", "tag": [{"type": "Hashtag", "name": "#NoBot"}]}`: true,
		`{"type": "Person", "tag": [{"type": "Hashtag", "name": "#cats"}]}`:  false,
		`{"type": "Person", "indexable": "false"}`:                           false,
	} {
		a, err := parseAuthor([]byte(doc))
		require.NoError(t, err, doc)
		assert.Equal(t, optedOut, a.OptedOut, doc)
		assert.Equal(t, "Person", a.Type)
	}
}

func TestTopicKeys(t *testing.T) {
	for in, want := range map[string]string{
		"tag/#Cats":                "tag/cats",
		"tag/!!":                   "",
		"language/EN_gb":           "language/en-gb",
		"language/english":         "",
		"instance/Example.ORG.":    "instance/example.org",
		"instance/a.example:443":   "instance/a.example",
		"instance/a.example:8443":  "instance/a.example:8443",
		"instance/a.example/x":     "",
		"instance/bücher.example":  "",
		"instance/a.example:0443":  "instance/a.example",
		"instance/[2001:DB8:0::1]": "instance/[2001:db8::1]",
		"instance/user@a.example":  "",
		"instance/a..example":      "",
		"colour/red":               "",
		"tag":                      "",
	} {
		assert.Equal(t, want, parseTopicKey(in), in)
	}
}
