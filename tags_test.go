package relay_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/fedirelay/relay"
)

func TestNormalizeTag(t *testing.T) {
	for in, want := range map[string]string{
		"cats":          "cats",
		"#Cats":         "cats",
		"＃ＣＡＴＳ":         "cats",
		"ﬁsh":           "fish",
		"Café":          "cafe",
		"Cafe\u0301":    "cafe",
		"Straße":        "strasse",
		"ÆØÅ":           "aeoa",
		"no-bot":        "nobot",
		"  #two words ": "twowords",
		"snake_case":    "snake_case",
		"日本語":           "日本語",
		"ｶﾀｶﾅ":          "カタカナ",
		"हिन्दी":        "हिन्दी",
		"Ελληνικά":      "ελληνικά",
		"cats🐈":         "cats",
		"#":             "",
		"!!!":           "",
		"Ⅻ":             "xii",
		"MiXeD123":      "mixed123",
		"\u0130stanbul": "istanbul",
	} {
		assert.Equal(t, want, relay.NormalizeTag(in), "NormalizeTag(%q)", in)
	}
	long := ""
	for range 300 {
		long += "a"
	}
	assert.Len(t, relay.NormalizeTag(long), 100)
}
