package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fedirelay/relay/store"
)

// blockedDomainsValue is the store value that holds the domains blocked at
// run time (BlockDomain), as {"domains": [...]}. It travels with backups
// (store.Export) like every value.
const blockedDomainsValue = "relay/blocked-domains"

// policyRefresh is how often a started relay reads the run-time block list
// from the store again, so that relays sharing one store see each other's
// changes.
const policyRefresh = time.Minute

type blockedDomainsDoc struct {
	Domains []string `json:"domains"`
}

// blockList is the guard's set of blocked domains: Config.BlockedDomains,
// fixed, together with the run-time list, which set replaces as a whole.
// Lookups see one set, the union of both. It is safe for concurrent use; a
// nil *blockList blocks nothing.
type blockList struct {
	static []string // Config.BlockedDomains
	all    atomic.Pointer[domainSet]
}

func newBlockList(domains []string) *blockList {
	b := &blockList{static: slices.Clone(domains)}
	b.set(nil)
	return b
}

// set replaces the run-time list.
func (b *blockList) set(domains []string) {
	s := newDomainSet(append(slices.Clip(b.static), domains...))
	b.all.Store(&s)
}

// contains reports whether host (with or without a port) is on a blocked
// domain.
func (b *blockList) contains(host string) bool {
	return b != nil && b.all.Load().contains(host)
}

// blockedURL reports whether the host of rawURL is on a blocked domain.
func (b *blockList) blockedURL(rawURL string) bool {
	return b != nil && b.all.Load().blockedURL(rawURL)
}

// BlockDomain adds domain to the relay's run-time block list, kept in the
// store, and ends every subscription on it or its subdomains (their
// records and queued deliveries are deleted; no Reject is sent to a
// blocked domain). From then on the relay treats the domain as it treats
// Config.BlockedDomains: inbox requests whose keyId, actor or object is on
// it are refused with 403 before anything is fetched, and the relay
// neither fetches from nor delivers to it. Blocking a domain already
// blocked only ends its subscriptions again.
//
// domain is a host name ("example.com"; a leading "*." or "." and a port
// are ignored) in its ASCII form; an empty or malformed one is an error.
// Changes made through one Relay are serialised; relays sharing a store
// see them within a minute (a started relay reads the list again every
// minute), and two relays changing the list at the same instant may lose
// one of the changes.
func (r *Relay) BlockDomain(ctx context.Context, domain string) error {
	d, err := checkDomain(domain)
	if err != nil {
		return err
	}
	if err := r.changeBlocked(ctx, func(list []string) []string {
		if !slices.Contains(list, d) {
			list = append(list, d)
		}
		return list
	}); err != nil {
		return err
	}
	// The list is installed before subscriptions are looked for, and a
	// Follow being stored checks it again (handleFollow), so no subscription
	// on the domain outlives this call.
	only := newDomainSet([]string{d})
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{})
	if err != nil {
		return err
	}
	for i := range subs {
		s := &subs[i]
		if only.contains(s.Host) || only.blockedURL(s.ActorID) || only.blockedURL(s.Inbox) || only.blockedURL(s.SharedInbox) {
			if err := r.removeSubscriber(ctx, s, nil); err != nil {
				return err
			}
			r.log.Info("subscription ended: domain blocked", "actor", s.ActorID, "domain", d)
		}
	}
	return nil
}

// UnblockDomain removes domain from the run-time block list. Domains in
// Config.BlockedDomains stay blocked. Unblocking a domain that is not on
// the list returns nil. Subscriptions ended by BlockDomain do not come
// back: the servers must follow the relay again.
func (r *Relay) UnblockDomain(ctx context.Context, domain string) error {
	d, err := checkDomain(domain)
	if err != nil {
		return err
	}
	return r.changeBlocked(ctx, func(list []string) []string {
		return slices.DeleteFunc(list, func(s string) bool { return s == d })
	})
}

// BlockedDomains returns the run-time block list as stored, sorted (not
// Config.BlockedDomains). It is empty, not nil, when nothing is blocked.
func (r *Relay) BlockedDomains(ctx context.Context) ([]string, error) {
	return r.reloadBlocked(ctx)
}

// reloadBlocked reads the stored list and installs it, under policyMu so
// that a change being made through this Relay is never replaced by the
// list read before it.
func (r *Relay) reloadBlocked(ctx context.Context) ([]string, error) {
	r.policyMu.Lock()
	defer r.policyMu.Unlock()
	list, err := r.readBlocked(ctx)
	if err != nil {
		return nil, err
	}
	r.guard.blocked.set(list)
	return list, nil
}

// checkDomain normalises domain and refuses what cannot be a host name.
func checkDomain(domain string) (string, error) {
	d := normalizeDomain(domain)
	if d == "" || len(d) > 253 || strings.ContainsAny(d, " /@?#\t\r\n") {
		return "", fmt.Errorf("relay: %q is not a domain name", domain)
	}
	return d, nil
}

// changeBlocked applies change to the stored list and installs the result.
func (r *Relay) changeBlocked(ctx context.Context, change func([]string) []string) error {
	r.policyMu.Lock()
	defer r.policyMu.Unlock()
	list, err := r.readBlocked(ctx)
	if err != nil {
		return err
	}
	list = change(list)
	slices.Sort(list)
	b, err := json.Marshal(blockedDomainsDoc{Domains: list})
	if err != nil {
		return err
	}
	if err := r.store.PutValue(ctx, blockedDomainsValue, b); err != nil {
		return err
	}
	r.guard.blocked.set(list)
	return nil
}

// readBlocked reads the stored run-time block list.
func (r *Relay) readBlocked(ctx context.Context) ([]string, error) {
	b, err := r.store.GetValue(ctx, blockedDomainsValue)
	if errors.Is(err, store.ErrNotFound) {
		return []string{}, nil
	}
	if err != nil {
		return nil, err
	}
	var doc blockedDomainsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("relay: store value %s: %w", blockedDomainsValue, err)
	}
	list := make([]string, 0, len(doc.Domains))
	for _, d := range doc.Domains {
		if d = normalizeDomain(d); d != "" {
			list = append(list, d)
		}
	}
	slices.Sort(list)
	return slices.Compact(list), nil
}

// refreshPolicies reads the run-time block list again every policyRefresh
// until the relay is closed. Errors keep the list in force.
func (r *Relay) refreshPolicies() {
	defer r.bg.Done()
	for {
		select {
		case <-r.closed:
			return
		case <-r.clock.After(policyRefresh):
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		if _, err := r.reloadBlocked(ctx); err != nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("cannot read the block list", "err", err)
		}
		cancel()
	}
}
