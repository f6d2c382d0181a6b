package relay_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
)

// known returns a post whose object and author were read.
func known(p relay.Post) *relay.Post {
	p.ObjectKnown, p.AuthorKnown = true, true
	if p.Received.IsZero() {
		p.Received = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	}
	return &p
}

func TestFilterSpec(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name  string
		spec  relay.FilterSpec
		pass  []relay.Post
		block []relay.Post
	}{
		{"allow tags", relay.FilterSpec{AllowTags: []string{"#Cats", "dogs"}},
			[]relay.Post{{Tags: []string{"cats"}}, {Tags: []string{"birds", "dogs"}}},
			[]relay.Post{{}, {Tags: []string{"birds"}}}},
		{"deny tags", relay.FilterSpec{DenyTags: []string{"NSFW"}},
			[]relay.Post{{}, {Tags: []string{"cats"}}},
			[]relay.Post{{Tags: []string{"cats", "nsfw"}}}},
		{"require tags", relay.FilterSpec{RequireTags: []string{"cats", "art"}},
			[]relay.Post{{Tags: []string{"art", "cats", "oil"}}},
			[]relay.Post{{Tags: []string{"cats"}}, {}}},
		{"languages", relay.FilterSpec{Languages: []string{"en", "pt-BR"}},
			[]relay.Post{{Languages: []string{"en"}}, {Languages: []string{"en-gb"}}, {Languages: []string{"de", "pt-br"}}},
			[]relay.Post{{Languages: []string{"pt"}}, {Languages: []string{"de"}}, {}}},
		{"unknown language", relay.FilterSpec{Languages: []string{"en"}, UnknownLanguage: true},
			[]relay.Post{{}, {Languages: []string{"en"}}},
			[]relay.Post{{Languages: []string{"fr"}}}},
		{"no sensitive", relay.FilterSpec{NoSensitive: true},
			[]relay.Post{{}},
			[]relay.Post{{Sensitive: true}, {Summary: "spoilers"}}},
		{"with media", relay.FilterSpec{Media: "with"},
			[]relay.Post{{HasMedia: true}},
			[]relay.Post{{}}},
		{"without media", relay.FilterSpec{Media: "without"},
			[]relay.Post{{}},
			[]relay.Post{{HasMedia: true}}},
		{"no replies", relay.FilterSpec{NoReplies: true},
			[]relay.Post{{}},
			[]relay.Post{{InReplyTo: "https://a.example/notes/1"}}},
		{"no bots", relay.FilterSpec{NoBots: true},
			[]relay.Post{{AuthorType: "Person"}, {AuthorType: "Group"}},
			[]relay.Post{{AuthorType: "Service"}, {AuthorType: "Application"}}},
		{"size", relay.FilterSpec{MaxBytes: 100},
			[]relay.Post{{Size: 100}},
			[]relay.Post{{Size: 101}}},
		{"age", relay.FilterSpec{MaxAgeSeconds: 3600},
			[]relay.Post{{Published: now.Add(-time.Hour)}, {}},
			[]relay.Post{{Published: now.Add(-time.Hour - time.Second)}}},
		{"budget only", relay.FilterSpec{MaxPostsPerHour: 3},
			[]relay.Post{{}, {Tags: []string{"anything"}}}, nil},
	}
	for _, c := range cases {
		f, err := c.spec.Compile()
		require.NoError(t, err, c.name)
		for _, p := range c.pass {
			p.Received = now
			assert.True(t, f.Allow(known(p)), "%s: %+v passes", c.name, p)
		}
		for _, p := range c.block {
			p.Received = now
			assert.False(t, f.Allow(known(p)), "%s: %+v is refused", c.name, p)
		}
	}
}

func TestFilterSpecInvalid(t *testing.T) {
	for _, s := range []relay.FilterSpec{
		{Media: "some"},
		{AllowTags: []string{"#!"}},
		{Languages: []string{"english"}},
		{Languages: []string{"x"}},
		{MaxBytes: -1},
		{MaxPostsPerHour: -1},
	} {
		_, err := s.Compile()
		assert.Error(t, err, "%+v", s)
	}
	assert.True(t, relay.FilterSpec{}.IsZero())
	assert.False(t, relay.FilterSpec{NoBots: true}.IsZero())
}

// A filter whose needs a post lacks (an object that could not be fetched)
// refuses it without being called; one that needs nothing decides.
func TestFilterNeeds(t *testing.T) {
	byTag, err := relay.FilterSpec{AllowTags: []string{"cats"}}.Compile()
	require.NoError(t, err)
	bySize, err := relay.FilterSpec{MaxBytes: 10}.Compile()
	require.NoError(t, err)
	bots, err := relay.FilterSpec{NoBots: true}.Compile()
	require.NoError(t, err)
	called := false
	custom := relay.FilterFunc(func(*relay.Post) bool { called = true; return true })

	unknown := &relay.Post{Tags: []string{"cats"}, Size: 5}
	assert.False(t, relay.FilterSet{byTag}.Allow(unknown))
	assert.True(t, relay.FilterSet{bySize}.Allow(unknown))
	assert.False(t, relay.FilterSet{custom}.Allow(unknown))
	assert.False(t, called, "a FilterFunc needs the object")

	noAuthor := &relay.Post{ObjectKnown: true, AuthorType: "Person"}
	assert.False(t, relay.FilterSet{bots}.Allow(noAuthor), "the author's type is unknown")
	assert.True(t, relay.FilterSet{}.Allow(noAuthor), "the empty set allows everything")
	assert.Equal(t, relay.NeedsObject|relay.NeedsAuthor, relay.FilterSet{byTag, bots, custom}.Needs())
	assert.Equal(t, relay.Needs(0), relay.FilterSet{bySize}.Needs())
}
