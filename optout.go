package relay

// Authors' opt-outs: a post whose author has opted out of discovery is not
// relayed where opt-outs are honoured (always for topic actors, unless
// Config.OptOuts.IgnoreForTopics; for the relay actor's subscribers only
// with Config.OptOuts.Main). What is honoured, read from the author's
// actor document (fetched signed, cached, one fetch for concurrent posts):
//
//   - "indexable": false (Mastodon's flag for being found by search and
//     discovery; an absent flag is not an opt-out);
//   - a #nobot or #norelay hashtag in the profile: among the actor's "tag"
//     entries, or as a word in its "summary" (bio), in any letter case.
//
// An author whose document cannot be read is treated as opted out there.

import (
	"encoding/json"
	"regexp"
	"slices"
)

// OptOutConfig says where authors' opt-outs are honoured. Its zero value
// honours them for topic actors only.
type OptOutConfig struct {
	// Main honours opt-outs for the relay actor's subscribers too.
	Main bool
	// IgnoreForTopics stops honouring them for topic actors.
	IgnoreForTopics bool
}

// author is what the relay reads of an author's actor document.
type author struct {
	Type     string
	OptedOut bool
}

// optOutTagRE finds #nobot or #norelay as a hashtag in a bio (HTML or
// text): after a start, space, '>' or '(' and before a non-word character.
var optOutTagRE = regexp.MustCompile(`(?i)(?:^|[\s>(])#(?:nobot|norelay)(?:$|[^\p{L}\p{N}_])`)

// parseAuthor reads an actor document.
func parseAuthor(doc []byte) (author, error) {
	var d struct {
		Type      json.RawMessage `json:"type"`
		Indexable json.RawMessage `json:"indexable"`
		Summary   json.RawMessage `json:"summary"`
		Tag       json.RawMessage `json:"tag"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return author{}, err
	}
	var a author
	a.Type, _ = typeOf(d.Type)
	var indexable bool
	if json.Unmarshal(d.Indexable, &indexable) == nil && string(d.Indexable) == "false" {
		a.OptedOut = true
	}
	var summary string
	if json.Unmarshal(d.Summary, &summary) == nil && optOutTagRE.MatchString(summary) {
		a.OptedOut = true
	}
	tags := readTags(d.Tag)
	if slices.Contains(tags, "nobot") || slices.Contains(tags, "norelay") {
		a.OptedOut = true
	}
	return a, nil
}
