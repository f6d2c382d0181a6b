package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/fedirelay/relay"
)

// addTopicFlags defines the flags for topic actors and content filters on
// fs and returns the function that applies them to a Config once fs is
// parsed.
func addTopicFlags(fs *flag.FlagSet) func(*relay.Config) error {
	noTopics := fs.Bool("no-topics", false, "switch topic actors (/tag/…, /language/…, /instance/…) off")
	allow := fs.String("topics-allow", "", "comma-separated topics that exist, e.g. tag/cats,language/en (default: all)")
	block := fs.String("topics-block", "", "comma-separated topics that do not exist, e.g. tag/nsfw")
	minFollowers := fs.Int("topic-min-followers", 0, "followers a topic needs before it relays anything")
	budget := fs.Int("topic-max-posts-per-hour", 0, "posts per hour each topic follower gets at most (0: no cap)")
	optOutsMain := fs.Bool("honour-opt-outs", false, "honour authors' opt-outs (indexable: false, #nobot, #norelay)\n"+
		"for the relay actor's subscribers too (topic actors always honour them)")
	filterFile := fs.String("filter", "", "JSON file with a filter applied to every post (see docs/operating.md)")
	return func(cfg *relay.Config) error {
		cfg.Topics = relay.TopicConfig{
			Disabled: *noTopics, Allow: splitList(*allow), Block: splitList(*block),
			MinFollowers: *minFollowers, MaxPostsPerHour: *budget,
		}
		cfg.OptOuts.Main = *optOutsMain
		if *filterFile == "" {
			return nil
		}
		b, err := os.ReadFile(*filterFile)
		if err != nil {
			return fmt.Errorf("-filter: %w", err)
		}
		var spec relay.FilterSpec
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			return fmt.Errorf("-filter %s: %w", *filterFile, err)
		}
		f, err := spec.Compile()
		if err != nil {
			return fmt.Errorf("-filter %s: %w", *filterFile, err)
		}
		cfg.Filters = relay.FilterSet{f}
		return nil
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
