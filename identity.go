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
// Relay of this process claims the same account (see New).
var ErrAccountTaken = errors.New("relay: account claimed by another relay in this process")

// accounts are the acct: URIs claimed by the open relays of this process.
var accounts = struct {
	sync.Mutex
	claimed map[string]bool
}{claimed: map[string]bool{}}

// claimAccount records that a relay answers for acct, or returns an error
// wrapping ErrAccountTaken if another does.
func claimAccount(acct string) error {
	accounts.Lock()
	defer accounts.Unlock()
	if accounts.claimed[acct] {
		return fmt.Errorf("%w: %s (give each relay its own Config.Username, or close the other first)", ErrAccountTaken, acct)
	}
	accounts.claimed[acct] = true
	return nil
}

// releaseAccount forgets a claim of claimAccount.
func releaseAccount(acct string) {
	accounts.Lock()
	defer accounts.Unlock()
	delete(accounts.claimed, acct)
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
