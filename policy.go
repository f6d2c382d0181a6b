package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
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
	// What is stored must read back as itself: a valid host name in
	// canonical form, or an IP address.
	if _, err := netip.ParseAddr(d); err != nil {
		if c, err := canonicalName(d); err != nil || c != d {
			return "", fmt.Errorf("relay: %q is not a domain name (use the ASCII form of internationalised names)", domain)
		}
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
	if err := r.writeJSONValue(ctx, blockedDomainsValue, doc); err != nil {
		return err
	}
	r.guard.blocked.set(list)
	return nil
}

// readBlocked reads the stored run-time block list, sorted by domain.
func (r *Relay) readBlocked(ctx context.Context) ([]DomainBlock, error) {
	var doc blockedDomainsDoc
	if err := r.readJSONValue(ctx, blockedDomainsValue, &doc); err != nil {
		return nil, err
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

// readJSONValue decodes the JSON store value name into v, and leaves v
// unchanged when there is no such value. It returns the store's error, or
// an error naming the value when it does not decode.
func (r *Relay) readJSONValue(ctx context.Context, name string, v any) error {
	b, err := r.store.GetValue(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("relay: store value %s: %w", name, err)
	}
	return nil
}

// writeJSONValue stores v, encoded as JSON, as the store value name.
func (r *Relay) writeJSONValue(ctx context.Context, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.store.PutValue(ctx, name, b)
}

// refreshPolicies reads the run-time block list again every policyRefresh
// until the relay is closed, and at once when a store shared with other
// processes signals that a value changed (store.Notifier). Errors keep the
// list in force.
func (r *Relay) refreshPolicies() {
	defer r.bg.Done()
	var changed <-chan struct{}
	if n, ok := r.baseStore().(store.Notifier); ok {
		changed = n.ValuesChanged()
	}
	for {
		select {
		case <-r.closed:
			return
		case <-r.clock.After(policyRefresh):
		case <-changed:
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		if _, err := r.reloadBlocked(ctx); err != nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("cannot read the block list", "err", err)
		}
		if err := r.loadTopics(ctx); err != nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("cannot read the topic followers", "err", err)
		}
		if _, err := r.reloadAllowed(ctx); err != nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("cannot read the allowlist", "err", err)
		}
		cancel()
	}
}
