package relay

// Subscription rules decided when a Follow arrives (allowlist, software
// from the follower's NodeInfo, actor type), before Config.FollowPolicy;
// and the allowlist's storage.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SubscriptionRules are the relay's built-in rules for subscription
// requests, checked when a Follow arrives, before Config.FollowPolicy
// (which decides only the requests they let through). A request a rule
// refuses is answered with a Reject carrying the reason, and recorded as a
// rejected subscriber (see Relay.Refuse). The zero value refuses nothing.
//
// Domains on the block list never get this far: their requests are
// refused with 403 before anything is fetched (see Config.BlockedDomains).
type SubscriptionRules struct {
	// AllowlistOnly lets only servers on the allowlist (Relay.AllowDomain,
	// kept in the store) subscribe; a domain covers its subdomains.
	AllowlistOnly bool

	// AllowSoftware, if not empty, lists the only software that may
	// subscribe, and DenySoftware software that may not, by the name the
	// follower's server gives in its NodeInfo ("mastodon", "misskey",
	// "gotosocial"; compared without regard to case). The relay reads
	// NodeInfo through its outbound guard, signed, within 5 seconds (or
	// Config.KeyFetchTimeout if shorter), and remembers the answer for an
	// hour (a failure for five minutes). It reads it for every new
	// subscription request anyway, to record the subscriber's
	// store.Subscriber.Software. A server whose NodeInfo cannot be read
	// has no software name: it is refused when AllowSoftware is set and
	// passes DenySoftware.
	AllowSoftware []string
	DenySoftware  []string

	// ActorTypes, if not empty, lists the ActivityStreams types of actors
	// that may subscribe, such as "Application", "Service" and "Group"
	// (Mastodon, Misskey and Pleroma follow with an Application, or a
	// Service or Group actor for some).
	ActorTypes []string
}

// allowedDomainsValue is the store value holding the allowlist, as
// {"domains": [...]}.
const allowedDomainsValue = "relay/allowed-domains"

type allowedDomainsDoc struct {
	Domains []string `json:"domains"`
}

// followRules applies Config.Rules, holding the allowlist and the cache of
// NodeInfo software names.
type followRules struct {
	r       *Relay
	cfg     SubscriptionRules
	allowed atomic.Pointer[domainSet]

	mu       sync.Mutex
	software map[string]softwareEntry // by host
}

type softwareEntry struct {
	name  string // "" when NodeInfo could not be read
	until time.Time
}

// NodeInfo cache lifetimes and bound.
const (
	nodeInfoTimeout    = 5 * time.Second
	softwareTTL        = time.Hour
	softwareFailureTTL = 5 * time.Minute
	maxSoftwareEntries = 10000
)

func newFollowRules(r *Relay, cfg SubscriptionRules) *followRules {
	f := &followRules{r: r, cfg: cfg, software: map[string]softwareEntry{}}
	empty := domainSet{}
	f.allowed.Store(&empty)
	return f
}

// policy returns the FollowPolicy that applies the rules, then next.
func (f *followRules) policy(next FollowPolicy) FollowPolicy {
	return func(ctx context.Context, req FollowRequest) (Decision, string) {
		if d, reason := f.decide(ctx, req); d != DecisionAccept {
			return d, reason
		}
		return next(ctx, req)
	}
}

// decide applies the rules: DecisionAccept lets the request through to
// the FollowPolicy, DecisionReject refuses it with a reason.
func (f *followRules) decide(ctx context.Context, req FollowRequest) (Decision, string) {
	c := &f.cfg
	if c.AllowlistOnly && !f.allowed.Load().contains(req.Host) {
		return DecisionReject, "this relay accepts only servers on its allowlist"
	}
	if len(c.ActorTypes) > 0 && !slices.ContainsFunc(c.ActorTypes, func(t string) bool { return strings.EqualFold(t, req.ActorType) }) {
		return DecisionReject, fmt.Sprintf("actors of type %q may not subscribe", req.ActorType)
	}
	if len(c.AllowSoftware) == 0 && len(c.DenySoftware) == 0 {
		return DecisionAccept, ""
	}
	name := f.softwareOf(ctx, req.Actor)
	match := func(s string) bool { return strings.EqualFold(strings.TrimSpace(s), name) }
	if name != "" && slices.ContainsFunc(c.DenySoftware, match) {
		return DecisionReject, fmt.Sprintf("servers running %s may not subscribe", name)
	}
	if len(c.AllowSoftware) > 0 && (name == "" || !slices.ContainsFunc(c.AllowSoftware, match)) {
		if name == "" {
			return DecisionReject, "the software of your server could not be read from its NodeInfo"
		}
		return DecisionReject, fmt.Sprintf("servers running %s may not subscribe", name)
	}
	return DecisionAccept, ""
}

// softwareOf returns the lower-cased software name of actor's server from
// its NodeInfo, cached, or "" when it cannot be read.
func (f *followRules) softwareOf(ctx context.Context, actor string) string {
	host := hostOf(actor)
	now := f.r.now()
	f.mu.Lock()
	e, ok := f.software[host]
	f.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.name
	}
	ctx, cancel := context.WithTimeout(ctx, min(nodeInfoTimeout, f.r.cfg.KeyFetchTimeout))
	defer cancel()
	name, err := f.r.discoverSoftware(ctx, actor)
	e = softwareEntry{name: name, until: now.Add(softwareTTL)}
	if err != nil {
		f.r.log.Debug("relay: subscriber software unknown", "actor", actor, "err", err)
		e = softwareEntry{until: now.Add(softwareFailureTTL)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.software) >= maxSoftwareEntries {
		clear(f.software)
	}
	f.software[host] = e
	return e.name
}

// cachedSoftware returns what softwareOf would without a lookup: the
// cached software name of actor's server ("" for a failed lookup), and
// whether there was one.
func (f *followRules) cachedSoftware(actor string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.software[hostOf(actor)]
	if !ok || !f.r.now().Before(e.until) {
		return "", false
	}
	return e.name, true
}

func (r *Relay) changeAllowed(ctx context.Context, change func([]string) []string) error {
	r.policyMu.Lock()
	defer r.policyMu.Unlock()
	list, err := r.readAllowed(ctx)
	if err != nil {
		return err
	}
	list = change(list)
	slices.Sort(list)
	if err := r.writeJSONValue(ctx, allowedDomainsValue, allowedDomainsDoc{Domains: list}); err != nil {
		return err
	}
	r.rules.setAllowed(list)
	return nil
}

func (r *Relay) reloadAllowed(ctx context.Context) ([]string, error) {
	r.policyMu.Lock()
	defer r.policyMu.Unlock()
	list, err := r.readAllowed(ctx)
	if err != nil {
		return nil, err
	}
	r.rules.setAllowed(list)
	return list, nil
}

func (f *followRules) setAllowed(list []string) {
	s := newDomainSet(list)
	f.allowed.Store(&s)
}

func (r *Relay) readAllowed(ctx context.Context) ([]string, error) {
	var doc allowedDomainsDoc
	if err := r.readJSONValue(ctx, allowedDomainsValue, &doc); err != nil {
		return nil, err
	}
	list := []string{}
	for _, d := range doc.Domains {
		if d = normalizeDomain(d); d != "" {
			list = append(list, d)
		}
	}
	slices.Sort(list)
	return slices.Compact(list), nil
}
