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
