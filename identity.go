package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/fedirelay/relay/httpsig"
)

// Defaults of the relay actor's identity (see Config.Username and
// Config.ActorType).
const (
	defaultUsername  = "relay"
	defaultActorType = "Application"
)

// actorTypes are the ActivityStreams types Config.ActorType may name.
var actorTypes = []string{"Application", "Service"}

// usernamePattern is what Config.Username may be: what Mastodon accepts in
// the user part of a remote account.
var usernamePattern = regexp.MustCompile(`^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$`)

// ConfigError is the error New and Config.Validate return for a Config
// field they refuse. Its message reads "relay: <Field> <Reason>: <Value>"
// (the value quoted, left out for PrivateKeyPEM); a program that takes
// the field from its own flags or files can name those instead.
type ConfigError struct {
	Field  string // the Config field, such as "BaseURL"
	Reason string // what is wrong, such as "must be an absolute http(s) URL"
	Value  string // the value refused; empty for PrivateKeyPEM
	Err    error  // the underlying error, if any
}

func (e *ConfigError) Error() string {
	msg := "relay: " + e.Field + " " + e.Reason
	if e.Field != "PrivateKeyPEM" {
		msg += fmt.Sprintf(": %q", e.Value)
	}
	return msg
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Validate reports whether New would accept c, without touching the Store
// or anything else: the first field it refuses, as a *ConfigError, or
// nil. Zero fields are valid (they get their defaults), except BaseURL.
// It is safe to call on a Config shared by goroutines that do not change
// it.
func (c *Config) Validate() error {
	if _, err := parseBaseURL(c.BaseURL); err != nil {
		return err
	}
	if c.Username != "" && !usernamePattern.MatchString(c.Username) {
		return &ConfigError{Field: "Username", Value: c.Username,
			Reason: "must be 1 to 64 letters, digits, '_', '-' or '.' ('-' and '.' not first or last)"}
	}
	if c.ActorType != "" && !slices.Contains(actorTypes, c.ActorType) {
		return &ConfigError{Field: "ActorType", Value: c.ActorType,
			Reason: "must be " + strings.Join(actorTypes, " or ")}
	}
	if len(c.PrivateKeyPEM) > 0 {
		k, err := httpsig.ParsePrivateKeyPEM(c.PrivateKeyPEM)
		if err == nil && k.N.BitLen() < 2048 {
			err = fmt.Errorf("the RSA key has %d bits, fewer than 2048", k.N.BitLen())
		}
		if err != nil {
			return &ConfigError{Field: "PrivateKeyPEM", Err: err, Reason: "is not a usable RSA private key: " + err.Error()}
		}
	}
	for i, ps := range [][]netip.Prefix{c.AllowPrivate, c.TrustedProxies} {
		if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return !p.IsValid() }) {
			field := [...]string{"AllowPrivate", "TrustedProxies"}[i]
			return &ConfigError{Field: field, Value: fmt.Sprint(ps), Reason: "holds an invalid address range"}
		}
	}
	return nil
}

// parseBaseURL parses Config.BaseURL into the form the relay uses: host
// in lower case, path without trailing slash.
func parseBaseURL(s string) (*url.URL, error) {
	base, err := url.Parse(strings.TrimSpace(s))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, &ConfigError{Field: "BaseURL", Value: s, Reason: "must be an absolute http(s) URL", Err: err}
	}
	if base.RawQuery != "" || base.Fragment != "" || base.User != nil {
		return nil, &ConfigError{Field: "BaseURL", Value: s, Reason: "must not have a query, fragment or user info"}
	}
	base.Host = strings.ToLower(base.Host)
	base.Path = strings.TrimSuffix(base.Path, "/")
	base.RawPath = ""
	return base, nil
}

// ErrAccountTaken is wrapped by the error New returns when another open
// Relay of this process claims the same account, or one of the same topic
// accounts on the same host (see New).
var ErrAccountTaken = errors.New("relay: account claimed by another relay in this process")

// accountClaim is what one relay answers for in WebFinger: its account
// acct:user@host and, unless topics are disabled, the accounts of its
// topic actors (acct:tag.cats@host, see topicUsername) on the same host.
type accountClaim struct {
	base   string       // BaseURL, as the relay uses it
	host   string       // the accounts' host (acctHost)
	user   string       // Username, lower case
	topics *TopicConfig // normalised; nil when topics are disabled
}

func (c *accountClaim) account() string { return "acct:" + c.user + "@" + c.host }

// offersTopic reports whether c's relay has an actor for the topic key
// (as Relay.topicExists does).
func (c *accountClaim) offersTopic(key string) bool {
	t := c.topics
	if t == nil || key == "" || slices.Contains(t.Block, key) {
		return false
	}
	return len(t.Allow) == 0 || slices.Contains(t.Allow, key)
}

// conflict returns an account that both c and o would answer for, and
// what the operator can do about it, or "" if there is none.
func (c *accountClaim) conflict(o *accountClaim) (acct, fix string) {
	if c.host != o.host {
		return "", ""
	}
	if c.user == o.user {
		return c.account(), "give each relay its own Config.Username"
	}
	for _, p := range [][2]*accountClaim{{c, o}, {o, c}} {
		if key := topicOfUsername(p[1].user); p[0].offersTopic(key) {
			return p[1].account(), "choose a Username that is no topic account (tag.…, language.…, instance.…), or block the topic " + key
		}
	}
	if c.topics == nil || o.topics == nil || c.base == o.base {
		return "", "" // relays with one BaseURL have the same topic actors
	}
	const topicsFix = "offer topics on one relay per host: set Topics.Disabled, or disjoint Topics.Allow lists, on the others"
	if len(c.topics.Allow) == 0 && len(o.topics.Allow) == 0 {
		return "acct:tag.…@" + c.host, topicsFix // every topic but a few blocked ones
	}
	for _, p := range [][2]*accountClaim{{c, o}, {o, c}} {
		for _, key := range p[0].topics.Allow {
			if p[0].offersTopic(key) && p[1].offersTopic(key) {
				return "acct:" + topicUsername(key) + "@" + c.host, topicsFix
			}
		}
	}
	return "", ""
}

// claims are the accounts claimed by the open relays of this process.
var claims = struct {
	sync.Mutex
	open []*accountClaim
}{}

// claimAccounts records that a relay answers for c's accounts, or returns
// an error wrapping ErrAccountTaken if another open relay answers for one
// of them.
func claimAccounts(c *accountClaim) error {
	claims.Lock()
	defer claims.Unlock()
	for _, o := range claims.open {
		if acct, fix := c.conflict(o); acct != "" {
			return fmt.Errorf("%w: %s (%s, or close the other first)", ErrAccountTaken, acct, fix)
		}
	}
	claims.open = append(claims.open, c)
	return nil
}

// releaseAccounts forgets a claim of claimAccounts.
func releaseAccounts(c *accountClaim) {
	claims.Lock()
	defer claims.Unlock()
	claims.open = slices.DeleteFunc(claims.open, func(o *accountClaim) bool { return o == c })
}

// wrapf adds context to err, an error of this package or another, keeping
// one "relay: " prefix: wrapf(err, "stored key") of "relay: no PEM block"
// reads "relay: stored key: no PEM block". errors.Is and As see err.
func wrapf(err error, format string, args ...any) error {
	return &wrapped{
		msg: "relay: " + fmt.Sprintf(format, args...) + ": " + strings.TrimPrefix(err.Error(), "relay: "),
		err: err,
	}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }
