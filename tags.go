package relay

// Hashtag normalisation, as Mastodon does it (HashtagNormalizer), so that
// a topic actor P/tag/{tag} matches the posts Mastodon lists under the tag.

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// maxTagRunes is the longest normalised hashtag the relay keeps, in runes;
// longer tags are cut there (no real tag is that long).
const maxTagRunes = 100

// NormalizeTag returns the form of a hashtag that the relay compares and
// names topic actors with, or "" if nothing of it is left. Like Mastodon,
// it drops a leading '#', applies Unicode NFKC (so full-width "ＣＡＴＳ"
// and the ligature "ﬁ" become "cats" and "fi"), lower-cases, folds
// accented Latin letters to ASCII ("Café" → "cafe", "Straße" →
// "strasse"; marks on other scripts are kept) and removes every character
// that is not a letter, a digit, a combining mark, '_', '·', '・' or a
// zero-width non-joiner. It is a pure function, safe for concurrent use.
func NormalizeTag(tag string) string {
	tag = strings.TrimPrefix(strings.TrimSpace(tag), "#")
	tag = strings.TrimPrefix(tag, "＃")
	tag = strings.ToLower(norm.NFKC.String(tag))
	tag = foldLatin(tag)
	var b strings.Builder
	n := 0
	for _, c := range tag {
		if !tagRune(c) {
			continue
		}
		if n == maxTagRunes {
			break
		}
		b.WriteRune(c)
		n++
	}
	return b.String()
}

// tagRune reports whether c may appear in a normalised hashtag.
func tagRune(c rune) bool {
	switch {
	case unicode.IsLetter(c), unicode.IsDigit(c), unicode.IsMark(c):
		return true
	case c == '_', c == '\u00b7', c == '\u30fb', c == '\u200c':
		return true
	}
	return false
}

// latinSpecials are the Latin letters without a canonical decomposition
// that ASCII folding maps, lower case only (folding runs after lower-casing).
var latinSpecials = map[rune]string{
	'ß': "ss", 'æ': "ae", 'œ': "oe", 'ø': "o", 'ł': "l", 'đ': "d", 'ð': "d",
	'þ': "th", 'ı': "i", 'ħ': "h", 'ŧ': "t", 'ŋ': "n", 'ſ': "s",
}

// foldLatin removes the combining marks that follow a Latin letter (after
// canonical decomposition) and maps latinSpecials, as Lucene's and
// Mastodon's ASCII folding do for Latin script; other scripts keep their
// marks. The result is recomposed (NFC).
func foldLatin(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return s
	}
	var b strings.Builder
	latinBase := false
	for _, c := range norm.NFD.String(s) {
		if unicode.Is(unicode.Mn, c) {
			if latinBase {
				continue
			}
			b.WriteRune(c)
			continue
		}
		if r, ok := latinSpecials[c]; ok {
			b.WriteString(r)
			latinBase = true
			continue
		}
		latinBase = unicode.Is(unicode.Latin, c)
		b.WriteRune(c)
	}
	return norm.NFC.String(b.String())
}
