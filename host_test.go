package relay

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Spellings of one host have one canonical form; hosts that have none are
// refused.
func TestCanonicalHost(t *testing.T) {
	for _, tt := range []struct{ scheme, in, want string }{
		{"https", "example.org", "example.org"},
		{"https", "EXAMPLE.org.", "example.org"},
		{"https", "Example.ORG:443", "example.org"},
		{"https", "example.org:0443", "example.org"},
		{"https", "example.org:", "example.org"},
		{"http", "example.org:80", "example.org"},
		{"http", "example.org:443", "example.org:443"},
		{"https", "example.org:80", "example.org:80"},
		{"https", "example.org:7001", "example.org:7001"},
		{"https", "example.org:07001", "example.org:7001"},
		{"https", "example.org:007001", "example.org:7001"},
		{"https", "example.org.:0007001", "example.org:7001"},
		{"https", "xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"https", "XN--BCHER-KVA.example", "xn--bcher-kva.example"},
		{"https", "127.0.0.1:8080", "127.0.0.1:8080"},
		{"https", "[2001:DB8:0:0::1]", "[2001:db8::1]"},
		{"https", "[2001:db8::1]:0443", "[2001:db8::1]"},
		{"https", "[::ffff:127.0.0.1]:7001", "[::ffff:127.0.0.1]:7001"},
		{"https", "under_score.example", "under_score.example"},
	} {
		got, err := canonicalHost(tt.scheme, tt.in)
		if assert.NoError(t, err, tt.in) {
			assert.Equal(t, tt.want, got, tt.in)
		}
	}
	for _, in := range []string{
		"", ".", "bücher.example", "b%C3%BCcher.example", "example..org", ".example.org",
		"example.org:0", "example.org:65536", "example.org:000000000443x", "example.org:1234567",
		"example.org:-1", "example.org:+443", "example.org:4 43", "[2001:db8::1", "[2001:db8::1]x",
		"[fe80::1%25eth0]", "[127.0.0.1]", "a:b:c", "exa mple.org", "example.org\x00",
	} {
		_, err := canonicalHost("https", in)
		assert.ErrorIs(t, err, errBadHost, "%q", in)
	}
}

// Every per-host key and origin comparison uses the canonical form.
func TestHostOfAndOrigins(t *testing.T) {
	assert.Equal(t, "example.org:7001", hostOf("https://EXAMPLE.org.:007001/users/a"))
	assert.Equal(t, "example.org", hostOf("https://example.org:443/users/a"))
	assert.Empty(t, hostOf("https://bücher.example/users/a"))
	assert.True(t, sameOrigin("https://example.org/a", "HTTPS://Example.Org.:443/b"))
	assert.True(t, sameOrigin("https://example.org:7001/a", "https://example.org:07001/b"))
	assert.False(t, sameOrigin("https://example.org/a", "http://example.org/a"))
	assert.False(t, sameOrigin("https://example.org/a", "https://example.org:8443/a"))
	assert.False(t, sameOrigin("https://bücher.example/a", "https://bücher.example/a"), "no usable origin")
	assert.False(t, sameOrigin("javascript:alert(1)", "javascript:alert(1)"))
	assert.True(t, newDomainSet([]string{"EXAMPLE.org."}).contains("example.org:0443"))
	assert.True(t, newDomainSet([]string{"2001:DB8::1"}).contains("[2001:db8:0::1]:443"))
}

// Spellings of one inbox share one deduplication key; other inboxes do not.
func TestInboxKey(t *testing.T) {
	want := inboxKey("https://victim.example/inbox")
	for _, s := range []string{
		"https://victim.example/inbox?x=1", "https://victim.example/inbox?x=2#f", "HTTPS://VICTIM.example.:443/inbox",
		"https://victim.example/inbox/", "https://victim.example//inbox", "https://victim.example/./inbox",
		"https://victim.example/a/../inbox", "https://victim.example/%69nbox",
	} {
		assert.Equal(t, want, inboxKey(s), s)
	}
	for _, s := range []string{"https://victim.example/users/a/inbox", "http://victim.example/inbox", "https://victim.example:8443/inbox", "https://other.example/inbox"} {
		assert.NotEqual(t, want, inboxKey(s), s)
	}
}

// Object IRIs that receivers would fetch pass the guard's checks.
func TestCheckObjectIRI(t *testing.T) {
	g := newGuard(&Config{BlockedDomains: []string{"blocked.example"}})
	for _, s := range []string{"https://a.example/notes/1", "https://A.example.:443/notes/1?x#y", "https://[2001:4860::8888]/n", "https://8.8.8.8/n"} {
		assert.NoError(t, g.checkObjectIRI(s), s)
	}
	for _, s := range []string{
		"javascript:alert(1)", "data:text/html,x", "file:///etc/passwd", "ftp://a.example/x", "//a.example/x", "/notes/1", "",
		"http://a.example/n", "https://user@a.example/n", "https://169.254.169.254/latest/meta-data/",
		"https://[::ffff:169.254.169.254]/x", "https://127.0.0.1/x", "https://10.0.0.1/x", "https://[fd00::1]/x",
		"https://metadata.google.internal/computeMetadata/v1/", "https://localhost/x", "https://a.localhost/x",
		"https://printer.local/x", "https://router.home.arpa/x", "https://intranet/x", "https://x.blocked.example/n",
		"https://bücher.example/n", "https://a.example:99999/n", "https://" + strings.Repeat("a", 2050) + ".example/n",
	} {
		assert.Error(t, g.checkObjectIRI(s), s)
	}
	g = newGuard(&Config{AllowHTTP: true, AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	assert.NoError(t, g.checkObjectIRI("http://127.0.0.1:8080/n"), "allowed for tests")
	assert.Error(t, g.checkObjectIRI("http://169.254.169.254/n"))
}
