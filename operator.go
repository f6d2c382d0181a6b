package relay

import (
	"context"
	"reflect"

	"github.com/fedirelay/relay/store"
)

// SetMode sets which way activities flow for a subscriber (see
// store.Mode): a receive-only subscriber's activities are answered 202 and
// not relayed; a send-only one is sent nothing from the next fan-out on
// (deliveries already queued for it still go out). It returns an error
// matching ErrNotSubscribed for an unknown actor, and store errors as they
// are. The mode lasts as long as the subscriber's record: a repeated
// Follow keeps it, an Undo or Remove ends it with the record.
func (r *Relay) SetMode(ctx context.Context, actorID string, mode store.Mode) error {
	if _, err := store.ParseMode(string(mode)); err != nil {
		return err
	}
	_, err := r.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber) error {
		s.Mode = mode
		return nil
	})
	return err
}

// SetNote replaces the operator's private note on a subscriber (never
// sent). It returns an error matching ErrNotSubscribed for an unknown
// actor.
func (r *Relay) SetNote(ctx context.Context, actorID, note string) error {
	_, err := r.UpdateSubscriber(ctx, actorID, func(s *store.Subscriber) error {
		s.Note = note
		return nil
	})
	return err
}

// Overview is the state of a relay at a glance, as Relay.Overview returns
// it and the admin API's status serves it.
type Overview struct {
	// Subscribers counts the subscriptions by state (every state is
	// present, zero included).
	Subscribers map[store.State]int `json:"subscribers"`
	// Backlog is the number of queued deliveries, InFlight those this
	// process is attempting.
	Backlog  int `json:"backlog"`
	InFlight int `json:"in_flight"`
	// OpenBreakers lists the hosts whose circuit breaker is open or
	// half-open, sorted by host.
	OpenBreakers []BreakerStatus `json:"open_breakers"`
	// BlockedDomains and AllowedDomains count the entries of the run-time
	// block list and of the allowlist; AllowlistOnly says whether the
	// allowlist is enforced (SubscriptionRules.AllowlistOnly), and
	// ApprovalRequired whether requests wait for the operator.
	BlockedDomains   int  `json:"blocked_domains"`
	AllowedDomains   int  `json:"allowed_domains"`
	AllowlistOnly    bool `json:"allowlist_only"`
	ApprovalRequired bool `json:"approval_required"`
}

// BreakerStatus is one host whose circuit breaker is not closed.
type BreakerStatus struct {
	Host    string `json:"host"`
	Circuit string `json:"circuit"` // "open" or "half-open"
	// OpenUntil is when an open circuit lets a probe through.
	OpenUntil string `json:"open_until,omitempty"`
}

// Overview returns the relay's state at a glance: subscribers by state,
// the delivery backlog, deliveries in flight and open circuit breakers.
// It reads every subscriber record, and returns store errors as they are.
func (r *Relay) Overview(ctx context.Context) (Overview, error) {
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{})
	if err != nil {
		return Overview{}, err
	}
	o := Overview{Subscribers: map[store.State]int{
		store.StatePending: 0, store.StateAccepted: 0, store.StateRejected: 0, store.StateDormant: 0,
	}, OpenBreakers: []BreakerStatus{}, AllowlistOnly: r.cfg.Rules.AllowlistOnly, ApprovalRequired: r.approvalRequired()}
	for i := range subs {
		o.Subscribers[subs[i].State]++
	}
	ds, err := r.DeliveryStatus(ctx)
	if err != nil {
		return Overview{}, err
	}
	o.Backlog, o.InFlight = ds.Backlog, ds.InFlight
	for _, h := range ds.Hosts {
		if h.Circuit != breakerClosed.String() {
			b := BreakerStatus{Host: h.Host, Circuit: h.Circuit}
			if !h.OpenUntil.IsZero() {
				b.OpenUntil = h.OpenUntil.UTC().Format("2006-01-02T15:04:05Z")
			}
			o.OpenBreakers = append(o.OpenBreakers, b)
		}
	}
	sortBy(o.OpenBreakers, func(b BreakerStatus) string { return b.Host })
	blocks, err := r.DomainBlocks(ctx)
	if err != nil {
		return Overview{}, err
	}
	allowed, err := r.AllowedDomains(ctx)
	if err != nil {
		return Overview{}, err
	}
	o.BlockedDomains, o.AllowedDomains = len(blocks), len(allowed)
	return o, nil
}

// approvalRequired reports whether subscription requests wait for the
// operator: the FollowPolicy is ManualApproval.
func (r *Relay) approvalRequired() bool {
	return reflect.ValueOf(r.cfg.FollowPolicy).Pointer() == reflect.ValueOf(ManualApproval).Pointer()
}

// nodeInfoPolicies adds to NodeInfo metadata what the relay publishes of
// its policies: "approval_required" (as ActivityRelay names it) unless
// Config.HideApprovalRequired, and unless Config.HideBlocks the domains
// the run-time block list blocks or silences, "blocks" (as AodeRelay
// names it), with their public reasons in "block_reasons" (domain to
// reason, for those that have one). Config.BlockedDomains are not
// published.
func (r *Relay) nodeInfoPolicies(ctx context.Context, meta map[string]any) {
	if !r.cfg.HideApprovalRequired {
		meta["approval_required"] = r.approvalRequired()
	}
	if r.cfg.HideBlocks {
		return
	}
	blocks, err := r.readBlocked(ctx)
	if err != nil {
		r.log.Error("relay: nodeinfo: reading the block list", "err", err)
		return
	}
	domains, reasons := []string{}, map[string]string{}
	for _, b := range blocks {
		if b.Severity == SeverityNoop {
			continue
		}
		domains = append(domains, b.Domain)
		if b.Reason != "" {
			reasons[b.Domain] = b.Reason
		}
	}
	meta["blocks"], meta["block_reasons"] = domains, reasons
}
