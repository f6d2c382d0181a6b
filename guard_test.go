package relay

import (
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

func TestGuardAddresses(t *testing.T) {
	g := &guard{}
	refused := []string{
		"0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.255",
		"127.0.0.1", "127.255.0.1", "169.254.169.254", "172.16.0.1", "172.31.255.255",
		"192.0.0.8", "192.0.2.1", "192.88.99.1", "192.168.1.1", "198.18.0.1", "198.19.255.255",
		"198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
		"::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "100::1",
		"fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "ff02::1",
		"2001::1", "2001:db8::1", "2002:7f00:1::1", "3fff::1",
	}
	allowed := []string{
		"1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
		"192.0.1.1", "192.169.0.1", "198.17.255.255", "198.20.0.0", "223.255.255.255", "::ffff:8.8.8.8",
		"2001:4860:4860::8888", "2606:4700::1111", "2a00:1450::1",
	}
	for _, s := range refused {
		assert.False(t, g.allowedAddr(netip.MustParseAddr(s)), "%s must be refused", s)
	}
	for _, s := range allowed {
		assert.True(t, g.allowedAddr(netip.MustParseAddr(s)), "%s must be allowed", s)
	}
	assert.False(t, g.allowedAddr(netip.Addr{}), "the zero address")

	g = &guard{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
	assert.True(t, g.allowedAddr(netip.MustParseAddr("127.0.0.5")))
	assert.True(t, g.allowedAddr(netip.MustParseAddr("::ffff:127.0.0.5")), "IPv4-mapped form of an allowed address")
	assert.True(t, g.allowedAddr(netip.MustParseAddr("fd00::1")))
	assert.False(t, g.allowedAddr(netip.MustParseAddr("10.0.0.1")), "only the listed ranges")
	assert.False(t, g.allowedAddr(netip.MustParseAddr("::1")))
}

func TestGuardControl(t *testing.T) {
	g := &guard{}
	assert.ErrorIs(t, g.control("tcp4", "127.0.0.1:80", nil), ErrOutboundRefused)
	assert.ErrorIs(t, g.control("tcp6", "[::1]:443", nil), ErrOutboundRefused)
	assert.ErrorIs(t, g.control("tcp6", "[fe80::1%eth0]:443", nil), ErrOutboundRefused)
	assert.ErrorIs(t, g.control("tcp", "garbage", nil), ErrOutboundRefused)
	assert.NoError(t, g.control("tcp4", "93.184.215.14:443", nil))
	assert.NoError(t, g.control("tcp6", "[2606:4700::1111]:443", nil))
}

func TestGuardURLs(t *testing.T) {
	g := &guard{blocked: newBlockList([]string{"Blocked.Example", "*.wild.example", "10.9.8.7"})}
	for raw, ok := range map[string]bool{
		"https://mastodon.example/users/a":      true,
		"https://mastodon.example:8443/inbox":   true,
		"https://8.8.8.8/inbox":                 true,
		"http://mastodon.example/inbox":         false, // https only by default
		"ftp://mastodon.example/x":              false,
		"https://user:pw@mastodon.example/x":    false,
		"https:///path":                         false,
		"https://127.0.0.1/inbox":               false,
		"https://[::1]:8443/inbox":              false,
		"https://[::ffff:169.254.169.254]/meta": false,
		"https://169.254.169.254/latest":        false,
		"https://blocked.example/inbox":         false,
		"https://a.b.blocked.example./inbox":    false,
		"https://x.wild.example/inbox":          false,
		"https://notblocked.example/inbox":      true,
		"https://10.9.8.7/inbox":                false,
	} {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		err = g.checkURL(u)
		if ok {
			assert.NoError(t, err, raw)
		} else {
			assert.ErrorIs(t, err, ErrOutboundRefused, raw)
		}
	}
	assert.ErrorIs(t, g.checkURL(nil), ErrOutboundRefused)

	g = &guard{allowHTTP: true, allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	for _, raw := range []string{"http://127.0.0.1:8080/inbox", "https://127.0.0.2/x", "http://localhost:1/x"} {
		u, _ := url.Parse(raw)
		assert.NoError(t, g.checkURL(u), raw)
	}
	u, _ := url.Parse("http://192.168.0.1/x")
	assert.ErrorIs(t, g.checkURL(u), ErrOutboundRefused, "only the allowed ranges")
}

func TestDomainSet(t *testing.T) {
	s := newDomainSet([]string{" Example.COM ", ".dot.example", "*.star.example", "port.example:443", "", "1.2.3"})
	for host, want := range map[string]bool{
		"example.com":        true,
		"EXAMPLE.com:443":    true,
		"a.b.example.com":    true,
		"example.com.":       true,
		"notexample.com":     false,
		"com":                false,
		"x.dot.example":      true,
		"star.example":       true,
		"port.example":       true,
		"other.example":      false,
		"9.1.2.3":            false, // IP addresses have no parent domains
		"[2001:db8::1]:8443": false,
	} {
		assert.Equal(t, want, s.contains(host), host)
	}
	assert.False(t, domainSet{}.contains("example.com"))
	assert.True(t, s.blockedURL("https://sub.example.com/users/a"))
	assert.False(t, s.blockedURL("https://example.org/users/a"))
	assert.False(t, s.blockedURL(""))
}

func TestLimiter(t *testing.T) {
	var none *limiter
	ok, _ := none.allow("a", time.Now())
	assert.True(t, ok, "a nil limiter allows everything")
	assert.Nil(t, newLimiter(RateLimit{Rate: -1, Burst: 5}), "a negative rate disables the limit")

	l := newLimiter(RateLimit{Rate: 2, Burst: 3})
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		ok, _ := l.allow("a", now)
		require.True(t, ok, "burst %d", i)
	}
	ok, wait := l.allow("a", now)
	assert.False(t, ok)
	assert.Equal(t, 500*time.Millisecond, wait)
	ok, _ = l.allow("b", now)
	assert.True(t, ok, "another key has its own bucket")
	ok, _ = l.allow("a", now.Add(500*time.Millisecond))
	assert.True(t, ok, "refilled at the rate")
	ok, _ = l.allow("a", now.Add(500*time.Millisecond))
	assert.False(t, ok)

	// Idle buckets are pruned.
	later := now.Add(time.Hour)
	ok, _ = l.allow("c", later)
	assert.True(t, ok)
	l.mu.Lock()
	assert.Len(t, l.buckets, 1, "full buckets forgotten")
	l.mu.Unlock()

	assert.Equal(t, 1, retryAfterSeconds(time.Millisecond))
	assert.Equal(t, 3, retryAfterSeconds(2100*time.Millisecond))
}

func TestCheckJSONDepth(t *testing.T) {
	deep := func(n int) []byte {
		b := make([]byte, 0, 2*n)
		for range n {
			b = append(b, '[')
		}
		for range n {
			b = append(b, ']')
		}
		return b
	}
	assert.NoError(t, checkJSONDepth(deep(64), 64))
	assert.Error(t, checkJSONDepth(deep(65), 64))
	assert.NoError(t, checkJSONDepth([]byte(`{"a":"[[[[[[[[[[\"[[[[[[[","b":[{}]}`), 3), "brackets in strings do not count")
	assert.Error(t, checkJSONDepth([]byte(`{"a":"\\"}[[[`), 2), "an escaped backslash ends before the quote")
	_, err := parseEnvelope(deep(100))
	assert.ErrorIs(t, err, errMalformed)
}

func TestKeyOwnedBy(t *testing.T) {
	assert.True(t, keyOwnedBy("https://a.example/users/x#main-key", "https://a.example/users/x"))
	assert.True(t, keyOwnedBy("https://a.example/users/x/main-key", "https://a.example/users/x"))
	assert.False(t, keyOwnedBy("https://a.example/users/xy#main-key", "https://a.example/users/x"))
	assert.False(t, keyOwnedBy("https://a.example/users/x#main-key", "https://a.example/users/y"))
	assert.False(t, keyOwnedBy("https://a.example/users/x#main-key", ""))
}

func TestRelayedByRelay(t *testing.T) {
	relayActor := &remoteActor{ID: "https://r.example/actor", Type: "Application"}
	bot := &remoteActor{ID: "https://r.example/users/bot", Type: "Service"}
	person := &remoteActor{ID: "https://p.example/users/a", Type: "Person"}
	subs := []store.Subscriber{{ActorID: relayActor.ID, Host: "r.example"}}
	ann := func(actor, object string) *envelope {
		return &envelope{Type: "Announce", Actor: actor, Object: objectRef{ID: object}}
	}
	assert.True(t, relayedByRelay(ann(relayActor.ID, "https://x.example/1"), relayActor, "https://x.example/1", subs))
	assert.False(t, relayedByRelay(ann(relayActor.ID, "https://r.example/1"), relayActor, "https://r.example/1", subs), "its own server's post")
	assert.False(t, relayedByRelay(ann(person.ID, "https://x.example/1"), person, "https://x.example/1", nil), "a person's boost")
	assert.False(t, relayedByRelay(ann(bot.ID, "https://x.example/1"), bot, "https://x.example/1", subs), "a bot's boost")
	c := ann(relayActor.ID, "https://x.example/1")
	c.Type = "Create"
	assert.False(t, relayedByRelay(c, relayActor, "https://x.example/1", subs))
}
