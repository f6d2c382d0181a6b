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
// run time (BlockDomain, BlockDomains), as {"domains": [...], "blocks":
// [...]}: domains lists the blocking entries (earlier versions stored only
// it), blocks every entry with its details. It travels with backups
// (store.Export) like every value.
const blockedDomainsValue = "relay/blocked-domains"

// policyRefresh is how often a started relay reads the run-time block list
// (and allowlist) from the store again, so that relays sharing one store
// see each other's changes.
const policyRefresh = time.Minute

type blockedDomainsDoc struct {
	Domains []string      `json:"domains"`
	Blocks  []DomainBlock `json:"blocks,omitempty"`
}

// blockList is the guard's set of blocked domains: Config.BlockedDomains,
// fixed, together with the run-time list, which set replaces as a whole.
// Lookups see one set, the union of both. silenced holds the run-time
// entries of severity silence. It is safe for concurrent use; a nil
// *blockList blocks nothing.
type blockList struct {
	static   []string // Config.BlockedDomains
	all      atomic.Pointer[domainSet]
	silenced atomic.Pointer[domainSet]
}

func newBlockList(domains []string) *blockList {
	b := &blockList{static: slices.Clone(domains)}
	b.set(nil)
	return b
}

// set replaces the run-time list.
func (b *blockList) set(blocks []DomainBlock) {
	var blocking, silenced []string
	for _, e := range blocks {
		switch e.Severity.effective() {
		case SeveritySuspend:
			blocking = append(blocking, e.Domain)
		case SeveritySilence:
			silenced = append(silenced, e.Domain)
		}
	}
	all := newDomainSet(append(slices.Clip(b.static), blocking...))
	b.all.Store(&all)
	sil := newDomainSet(silenced)
	b.silenced.Store(&sil)
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

// isSilenced reports whether host is on a domain blocked with severity
// silence: its subscribers receive, and what they send is not relayed.
func (b *blockList) isSilenced(host string) bool {
	return b != nil && b.silenced.Load().contains(host)
}

// BlockDomain adds domain to the relay's run-time block list, kept in the
// store, and ends every subscription on it or its subdomains (their
// records and queued deliveries are deleted; no Reject is sent to a
// blocked domain). From then on the relay treats the domain as it treats
// Config.BlockedDomains: inbox requests whose keyId, actor or object is on
// it are refused with 403 before anything is fetched, and the relay
// neither fetches from nor delivers to it. Blocking a domain already
// blocked only ends its subscriptions again. It is BlockDomains with one
// DomainBlock of severity suspend and no reason.
//
// domain is a host name ("example.com"; a leading "*." or "." and a port
// are ignored) in its ASCII form; an empty or malformed one is an error.
// Changes made through one Relay are serialised; relays sharing a store
// see them within a minute (a started relay reads the list again every
// minute), and two relays changing the list at the same instant may lose
// one of the changes.
func (r *Relay) BlockDomain(ctx context.Context, domain string) error {
	return r.BlockDomains(ctx, DomainBlock{Domain: domain})
}

// BlockDomains adds blocks to the run-time block list in one store change,
// each replacing the entry of the same domain, then ends the subscriptions
// on the domains they block (severity suspend: see BlockDomain). If any
// entry is invalid (see DomainBlock.Check), nothing changes and the error
// names it. Calling it without blocks changes nothing.
func (r *Relay) BlockDomains(ctx context.Context, blocks ...DomainBlock) error {
	if len(blocks) == 0 {
		return nil
	}
	fresh := make(map[string]DomainBlock, len(blocks))
	for i := range blocks {
		b, err := blocks[i].Check()
		if err != nil {
			return err
		}
		fresh[b.Domain] = b
	}
	if err := r.changeBlocked(ctx, func(list []DomainBlock) []DomainBlock {
		list = slices.DeleteFunc(list, func(e DomainBlock) bool { _, ok := fresh[e.Domain]; return ok })
		for _, b := range fresh {
			list = append(list, b)
		}
		return list
	}); err != nil {
		return err
	}
	var ended []string
	for d, b := range fresh {
		if b.Severity == SeveritySuspend {
			ended = append(ended, d)
		}
	}
	return r.endSubscriptionsOn(ctx, ended)
}

// endSubscriptionsOn ends every subscription on domains or their
// subdomains. The list is installed before subscriptions are looked for,
// and a Follow being stored checks it again (handleFollow), so no
// subscription on a domain blocked before the call outlives it.
func (r *Relay) endSubscriptionsOn(ctx context.Context, domains []string) error {
	if len(domains) == 0 {
		return nil
	}
	only := newDomainSet(domains)
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
			r.log.Info("subscription ended: domain blocked", "actor", s.ActorID, "host", s.Host)
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
	return r.changeBlocked(ctx, func(list []DomainBlock) []DomainBlock {
		return slices.DeleteFunc(list, func(e DomainBlock) bool { return e.Domain == d })
	})
}

// BlockedDomains returns the domains the run-time block list blocks
// (severity suspend), as stored, sorted (not Config.BlockedDomains). It is
// empty, not nil, when nothing is blocked.
func (r *Relay) BlockedDomains(ctx context.Context) ([]string, error) {
	blocks, err := r.reloadBlocked(ctx)
	if err != nil {
		return nil, err
	}
	list := []string{}
	for _, b := range blocks {
		if b.Severity == SeveritySuspend {
			list = append(list, b.Domain)
		}
	}
	return list, nil
}

// DomainBlocks returns every entry of the run-time block list, whatever
// its severity, sorted by domain. It is empty, not nil, when the list is.
func (r *Relay) DomainBlocks(ctx context.Context) ([]DomainBlock, error) {
	return r.reloadBlocked(ctx)
}

// reloadBlocked reads the stored list and installs it, under policyMu so
// that a change being made through this Relay is never replaced by the
// list read before it.
func (r *Relay) reloadBlocked(ctx context.Context) ([]DomainBlock, error) {
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
	if d == "" || len(d) > 253 || strings.ContainsAny(d, " /@?#,\t\r\n") {
		return "", fmt.Errorf("relay: %q is not a domain name", domain)
	}
	return d, nil
}

// changeBlocked applies change to the stored list and installs the result.
func (r *Relay) changeBlocked(ctx context.Context, change func([]DomainBlock) []DomainBlock) error {
	r.policyMu.Lock()
	defer r.policyMu.Unlock()
	list, err := r.readBlocked(ctx)
	if err != nil {
		return err
	}
	list = change(list)
	slices.SortFunc(list, func(a, b DomainBlock) int { return strings.Compare(a.Domain, b.Domain) })
	doc := blockedDomainsDoc{Domains: []string{}, Blocks: list}
	for _, b := range list {
		if b.Severity == SeveritySuspend {
			doc.Domains = append(doc.Domains, b.Domain)
		}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	if err := r.store.PutValue(ctx, blockedDomainsValue, b); err != nil {
		return err
	}
	r.guard.blocked.set(list)
	return nil
}

// readBlocked reads the stored run-time block list, sorted by domain.
func (r *Relay) readBlocked(ctx context.Context) ([]DomainBlock, error) {
	b, err := r.store.GetValue(ctx, blockedDomainsValue)
	if errors.Is(err, store.ErrNotFound) {
		return []DomainBlock{}, nil
	}
	if err != nil {
		return nil, err
	}
	var doc blockedDomainsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("relay: store value %s: %w", blockedDomainsValue, err)
	}
	entries := doc.Blocks
	if entries == nil { // written by an earlier version: domains only
		for _, d := range doc.Domains {
			entries = append(entries, DomainBlock{Domain: d})
		}
	}
	list := make([]DomainBlock, 0, len(entries))
	for _, e := range entries {
		if e.Domain = normalizeDomain(e.Domain); e.Domain != "" {
			e.Severity = e.Severity.effective()
			list = append(list, e)
		}
	}
	slices.SortFunc(list, func(a, b DomainBlock) int { return strings.Compare(a.Domain, b.Domain) })
	return slices.CompactFunc(list, func(a, b DomainBlock) bool { return a.Domain == b.Domain }), nil
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
		if _, err := r.reloadAllowed(ctx); err != nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("cannot read the allowlist", "err", err)
		}
		cancel()
	}
}
