package relay

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestVisibilityOf(t *testing.T) {
	followers := "https://a.example/users/alice/followers"
	for _, tc := range []struct {
		name   string
		to, cc []string
		want   visibility
	}{
		{"public, full IRI", []string{PublicCollection}, []string{followers}, visibilityPublic},
		{"public, as:Public", []string{"as:Public"}, nil, visibilityPublic},
		{"public, bare Public", []string{followers, "Public"}, nil, visibilityPublic},
		{"public in both", []string{PublicCollection}, []string{PublicCollection}, visibilityPublic},
		{"unlisted", []string{followers}, []string{PublicCollection}, visibilityUnlisted},
		{"unlisted, as:Public in cc", []string{followers}, []string{"as:Public"}, visibilityUnlisted},
		{"followers-only", []string{followers}, nil, visibilityPrivate},
		{"direct", []string{"https://b.example/users/bob"}, nil, visibilityPrivate},
		{"nothing", nil, nil, visibilityPrivate},
		{"look-alike", []string{"https://www.w3.org/ns/activitystreams#Publicity"}, nil, visibilityPrivate},
	} {
		assert.Equal(t, tc.want, visibilityOf(tc.to, tc.cc), tc.name)
	}
}

func TestParseEmbeddedObject(t *testing.T) {
	body := []byte(`{"type":"Create","to":["https://www.w3.org/ns/activitystreams#Public"],
		"object":{"id":"https://a.example/notes/1","to":"https://a.example/users/alice/followers",
		"cc":[{"id":"as:Public"}],"published":"2026-12-07T14:35:05.123Z"}}`)
	o, err := parseEmbeddedObject(body)
	require.NoError(t, err)
	assert.True(t, o.Embedded)
	assert.Equal(t, []string{"https://a.example/users/alice/followers"}, o.To)
	assert.Equal(t, []string{"as:Public"}, o.Cc)
	assert.Equal(t, visibilityUnlisted, o.visibility())
	assert.True(t, o.Published.Equal(time.Date(2026, 12, 7, 14, 35, 5, 123e6, time.UTC)), o.Published)

	o, err = parseEmbeddedObject([]byte(`{"type":"Announce","object":"https://a.example/notes/1"}`))
	require.NoError(t, err)
	assert.False(t, o.Embedded)

	_, err = parseEmbeddedObject([]byte(`{"object":{"to":[1]}}`))
	assert.ErrorIs(t, err, errMalformed)
}

func TestAnnounceTimeNeverBeforeTheObject(t *testing.T) {
	now := time.Date(2026, 12, 7, 14, 35, 5, 120e6, time.UTC)
	// Same second as the post, a few milliseconds later: keeps them.
	assert.Equal(t, now, announceTime(now, now.Add(-3*time.Millisecond)))
	// A post dated after the relay's clock (the origin's clock is ahead).
	later := now.Add(1500 * time.Millisecond)
	assert.Equal(t, later, announceTime(now, later, time.Time{}))
	// Sub-millisecond times round up, never down.
	sub := now.Add(400 * time.Microsecond)
	assert.Equal(t, now.Add(time.Millisecond), announceTime(now, sub))
	assert.Equal(t, now, announceTime(now))
}

func TestRelayedAnnouncePublished(t *testing.T) {
	r := newTestRelay(t)
	posted := r.now().Add(250*time.Millisecond + 7*time.Microsecond)
	env := &envelope{ID: "https://a.example/notes/1/activity", Type: "Create", Actor: "https://a.example/users/alice", Published: posted}
	b, id, err := r.relayedAnnounce(env, relayable{objectID: "https://a.example/notes/1", visibility: visibilityPublic})
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(b, &doc), string(b))
	assert.Equal(t, id, doc["id"])
	assert.Equal(t, "Announce", doc["type"])
	s, _ := doc["published"].(string)
	assert.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`, s)
	pub, err := time.Parse(time.RFC3339, s)
	require.NoError(t, err)
	assert.False(t, pub.Before(posted), "published %s is before the post's %s", pub, posted)
}

// newTestRelay returns a relay on an in-memory store that is closed at the
// end of the test.
func newTestRelay(t *testing.T) *Relay {
	t.Helper()
	r, err := New(Config{BaseURL: "https://relay.example"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

func TestRelayedAnnounceIgnoresFarFuturePublished(t *testing.T) {
	r := newTestRelay(t)
	env := &envelope{ID: "https://a.example/notes/2/activity", Type: "Create", Actor: "https://a.example/users/alice",
		Published: r.now().Add(24 * time.Hour)}
	b, _, err := r.relayedAnnounce(env, relayable{objectID: "https://a.example/notes/2", objectPublished: env.Published})
	require.NoError(t, err)
	var doc struct{ Published string }
	require.NoError(t, json.Unmarshal(b, &doc))
	pub, err := time.Parse(time.RFC3339, doc.Published)
	require.NoError(t, err)
	assert.Less(t, pub.Sub(r.now()), time.Minute, "a post dated a day ahead does not date the Announce")
}

func TestRelayedAnnounceKeepsTheAudience(t *testing.T) {
	r := newTestRelay(t)
	env := &envelope{ID: "https://a.example/notes/3/activity", Type: "Create", Actor: "https://a.example/users/alice"}
	followers := r.actorID + "/followers"
	for v, want := range map[visibility][2][]string{
		visibilityPublic:   {{PublicCollection}, {followers}},
		visibilityUnlisted: {{followers}, {PublicCollection}},
	} {
		b, _, err := r.relayedAnnounce(env, relayable{objectID: "https://a.example/notes/3", visibility: v})
		require.NoError(t, err)
		var doc struct{ To, Cc []string }
		require.NoError(t, json.Unmarshal(b, &doc))
		assert.Equal(t, want[0], doc.To, v)
		assert.Equal(t, want[1], doc.Cc, v)
	}
}
