// Package store defines the persistence contract of a fedirelay relay: the
// Store interface and the records it keeps (subscribers, small named
// values such as the relay key and policies, deduplication marks and the
// delivery queue).
//
// Implementations live in sub-packages: memstore keeps everything in memory
// (tests and ephemeral relays); filestore keeps everything durably in one
// local file (the standalone relay's default); pgstore keeps it in
// PostgreSQL, for several relay processes sharing one database. Every
// implementation must pass the conformance suite in storetest. Export and
// Import move a relay's state between stores as JSON.
//
// The contract is written so that several relay processes can share one
// Store backed by a distributed engine (PostgreSQL, Redis): every method is
// atomic on its own, read-modify-write goes through UpdateSubscriber, and the
// delivery queue hands out time-limited leases with tokens, so a delivery
// leased by a process that dies becomes due again when its lease expires,
// and a process whose lease ran out cannot finish a delivery another one
// took over (see LeaseRef).
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Errors returned by Store implementations. Callers match them with errors.Is.
var (
	// ErrNotFound is returned when a subscriber, value or payload does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrClosed is returned by every method of a store that has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrTooLong is wrapped by the error a store returns when an id or key
	// is longer than it accepts (see PortableKeyLen).
	ErrTooLong = errors.New("store: id or key too long")
	// ErrEmptyID is wrapped by the error UpdateSubscriber returns for an
	// empty actor id.
	ErrEmptyID = errors.New("store: empty id")
	// ErrLeaseLost is returned by Retry when the delivery was leased again
	// since the lease its token names (see Delivery.Token): another holder
	// now owns it, and the caller must leave it alone.
	ErrLeaseLost = errors.New("store: lease lost to another holder")
)

// Mark is a deduplication mark taken by Enqueue: ID is seen until Until.
// Whether a mark is live (Until after now) is decided by the store's own
// clock, as in MarkSeen.
type Mark struct {
	ID    string
	Until time.Time
}

// SeenError is the error Enqueue returns when some of the marks it was
// asked to take are live: it then stores nothing. IDs lists the live marks'
// ids, in the order they were given.
type SeenError struct {
	IDs []string
}

// Error implements error.
func (e *SeenError) Error() string {
	if len(e.IDs) == 1 {
		return "store: already seen: " + e.IDs[0]
	}
	return fmt.Sprintf("store: %d ids already seen, the first %s", len(e.IDs), e.IDs[0])
}

// Has reports whether id is one of the live marks.
func (e *SeenError) Has(id string) bool {
	return slices.Contains(e.IDs, id)
}

// PortableKeyLen is the length in bytes of the longest id or key that every
// Store accepts: value keys, subscriber actor ids, mark ids (MarkSeen, ForgetSeen,
// Enqueue), payload and delivery ids. A store may accept longer ones. One it
// refuses gets an error that wraps ErrTooLong, from that call only: nothing
// is changed, and the store keeps working for every other caller (a store
// must check lengths before a change can fail a commit it shares with other
// callers' changes). Methods that only read or remove may instead treat a
// key that is too long as absent. The relay stays below this length: its
// inbox refuses ids (of activities, actors, objects) over 2,048 bytes, and
// the ids it derives from them add a short prefix or are hashes.
const PortableKeyLen = 4096

// State is the state of a subscription.
type State string

// Subscription states.
const (
	// StatePending: the Follow was received and awaits the operator's decision.
	StatePending State = "pending"
	// StateAccepted: the subscriber receives and may publish activities.
	StateAccepted State = "accepted"
	// StateRejected: the Follow was refused; nothing is delivered or accepted.
	StateRejected State = "rejected"
	// StateDormant: the subscriber stopped answering; nothing is queued for
	// it until it sends something again.
	StateDormant State = "dormant"
)

// Protocol is the relay protocol a subscriber speaks (FEP-ae0c).
type Protocol string

// Relay protocols.
const (
	// ProtocolMastodon: the subscriber followed as:Public (Mastodon, Misskey).
	// It receives LD-signed activities verbatim and everything else as an
	// Announce by the relay.
	ProtocolMastodon Protocol = "mastodon"
	// ProtocolLitePub: the subscriber followed the relay actor (Pleroma,
	// Akkoma, Friendica, GoToSocial). The relay follows it back and sends it
	// Announces.
	ProtocolLitePub Protocol = "litepub"
)

// Mode is which way activities flow between the relay and a subscriber.
type Mode string

// Subscriber modes.
const (
	// ModeBoth (the zero value): the subscriber's posts are relayed and it
	// receives the others'.
	ModeBoth Mode = ""
	// ModeReceiveOnly: the subscriber receives the others' posts, and its
	// own are not relayed.
	ModeReceiveOnly Mode = "receive-only"
	// ModeSendOnly: the subscriber's posts are relayed, and it receives
	// nothing.
	ModeSendOnly Mode = "send-only"
)

// String returns the mode's name: "both", "receive-only" or "send-only".
func (m Mode) String() string {
	if m == ModeBoth {
		return "both"
	}
	return string(m)
}

// ParseMode returns the mode named s ("both", "receive-only",
// "send-only"; "" is "both"), or an error naming s.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeBoth, "both":
		return ModeBoth, nil
	case ModeReceiveOnly, ModeSendOnly:
		return Mode(s), nil
	}
	return "", fmt.Errorf("store: unknown mode %q (want both, receive-only or send-only)", s)
}

// Receives reports whether the subscriber is sent what others publish
// (its mode is not ModeSendOnly).
func (s *Subscriber) Receives() bool { return s.Mode != ModeSendOnly }

// Publishes reports whether the subscriber's own activities are relayed
// (its mode is not ModeReceiveOnly).
func (s *Subscriber) Publishes() bool { return s.Mode != ModeReceiveOnly }

// Subscriber is one subscription to the relay, keyed by the following
// actor's id.
type Subscriber struct {
	// ActorID is the id (URL) of the actor that followed the relay. It is
	// the subscriber's key.
	ActorID string `json:"actor"`
	// Host is the lower-cased host[:port] of ActorID.
	Host string `json:"host"`
	// Protocol is the relay protocol of the subscription.
	Protocol Protocol `json:"protocol"`
	// State is the subscription state.
	State State `json:"state"`
	// FollowID is the id of the subscriber's Follow, kept byte-identical so
	// that Accept, Reject and Undo match it.
	FollowID string `json:"follow_id"`
	// Inbox is the actor's inbox; SharedInbox its endpoints.sharedInbox, if any.
	Inbox       string `json:"inbox"`
	SharedInbox string `json:"shared_inbox,omitempty"`
	// FollowBackID is the id of the relay's reciprocal Follow (LitePub only)
	// and FollowBackState what the subscriber answered to it: pending until
	// an Accept or Reject arrives (some servers never answer).
	FollowBackID    string `json:"follow_back_id,omitempty"`
	FollowBackState State  `json:"follow_back_state,omitempty"`
	// Software is the subscriber's server software as its NodeInfo names it
	// (software.name, lower case: "mastodon", "misskey", "gotosocial",
	// "pleroma", ...), read when it subscribes, or later in the background
	// if it could not be then; "" when unknown. The relay sends edits,
	// deletions and un-boosts in the form that software applies. The
	// operator may set it; the relay never replaces a value that is set.
	Software string `json:"software,omitempty"`
	// Note is free text kept for the operator: private, never sent.
	Note string `json:"note,omitempty"`
	// Reason is the public reason of a refusal, sent to the subscriber
	// with its Reject.
	Reason string `json:"reason,omitempty"`
	// Mode says which way activities flow for the subscriber (ModeBoth,
	// the zero value, ModeReceiveOnly or ModeSendOnly).
	Mode Mode `json:"mode,omitempty"`
	// SignatureScheme is how deliveries to the subscriber are signed:
	// SignatureCavage (or "", the default) or SignatureRFC9421. The relay
	// sets it to SignatureRFC9421 when it is empty and the subscriber signs
	// its own requests with RFC 9421; the operator may set it either way.
	// A relay keeps what it read for up to a minute: a change made through
	// another process, or in the store directly, may take that long to be
	// used (one made through Relay.UpdateSubscriber takes effect at once in
	// that process).
	SignatureScheme string `json:"signature_scheme,omitempty"`
	// CreatedAt is when the first Follow arrived; UpdatedAt the last change.
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// Delivery statistics, maintained by the relay.
	Delivered   int64     `json:"delivered,omitempty"`
	Failed      int64     `json:"failed,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// FailingSince is when the current run of failed deliveries began; zero
	// while deliveries succeed.
	FailingSince time.Time `json:"failing_since,omitzero"`

	// Filter is the subscriber's own content filter and rate budget as the
	// relay encodes it (the JSON of a relay.FilterSpec), or "" for none:
	// set with relay.Relay.SetSubscriberFilter.
	Filter string `json:"filter,omitempty"`

	// RevivedAt is when the subscriber last came back from StateDormant: a
	// run of failures that a process observed before it is over. Processes
	// sharing a store compare their statistics with it (and with
	// LastSuccess) instead of overwriting each other's.
	RevivedAt time.Time `json:"revived_at,omitzero"`
}

// Signature schemes of Subscriber.SignatureScheme.
const (
	// SignatureCavage is draft-cavage HTTP Signatures (the Signature header
	// with keyId, algorithm, headers and signature), which every fediverse
	// server accepts.
	SignatureCavage = "cavage"
	// SignatureRFC9421 is RFC 9421 HTTP Message Signatures with an RFC 9530
	// Content-Digest, accepted by Mastodon 4.5 and later and Fedify.
	SignatureRFC9421 = "rfc9421"
)

// Active reports whether the subscription is accepted or dormant: the
// subscriber's server may publish through the relay (a dormant one is
// revived when it does).
func (s *Subscriber) Active() bool {
	return s.State == StateAccepted || s.State == StateDormant
}

// DeliveryInbox returns the inbox deliveries go to: the shared inbox when the
// subscriber has one, else its inbox.
func (s *Subscriber) DeliveryInbox() string {
	if s.SharedInbox != "" {
		return s.SharedInbox
	}
	return s.Inbox
}

// SubscriberFilter selects subscribers in ListSubscribers. Zero fields match
// everything.
type SubscriberFilter struct {
	Host  string // exact host[:port], lower case
	State State
}

// Match reports whether s passes the filter.
func (f SubscriberFilter) Match(s *Subscriber) bool {
	return (f.Host == "" || f.Host == s.Host) && (f.State == "" || f.State == s.State)
}

// Payload is a request body shared by deliveries. It is stored once however
// many deliveries refer to it and is removed with the last of them.
type Payload struct {
	ID   string
	Body []byte
}

// Delivery is one pending POST of a payload to one inbox.
type Delivery struct {
	// ID identifies the delivery; the relay assigns it. Enqueue is
	// idempotent by ID: enqueueing an ID that is already queued is a no-op
	// (the queued delivery keeps its fields and lease), also when several
	// callers enqueue the same IDs concurrently, so a fan-out can be
	// repeated safely. An ID that was completed or dropped is no longer
	// queued: enqueueing it again queues it anew.
	ID string
	// PayloadID names the Payload to send.
	PayloadID string
	// Inbox is the target URL; Host its lower-cased host[:port], the unit of
	// per-host isolation.
	Inbox string
	Host  string
	// Subscriber is the actor id of the subscriber the delivery is for, or
	// empty for messages to non-subscribers.
	Subscriber string
	// ActivityType is the type of the delivered activity ("Create",
	// "Delete", ...); the relay sheds Creates and Announces first.
	ActivityType string
	// Attempts counts the attempts made so far.
	Attempts int
	// NotBefore is when the delivery becomes due.
	NotBefore time.Time
	// LastError describes the last failed attempt.
	LastError string
	// Created is when the delivery was first enqueued.
	Created time.Time
	// Signer is the id of the relay's actor whose key signs the delivery:
	// "" for the relay actor, else a topic actor (such as
	// https://relay.example/tag/cats).
	Signer string
	// Token names the lease under which Lease returned the delivery: every
	// Lease of a delivery gives it a new token, unique within the store.
	// Complete and Retry act on the delivery only if it was not leased
	// again since (see LeaseRef). Enqueue ignores it; it is empty in
	// deliveries not returned by Lease.
	Token string
}

// Ref returns the LeaseRef that completes d under the lease it was
// returned with.
func (d *Delivery) Ref() LeaseRef { return LeaseRef{ID: d.ID, Token: d.Token} }

// LeaseRef names a delivery to complete, and the lease under which the
// caller holds it.
//
// A lease token stays valid until the delivery is leased again: after the
// lease ran out, its holder may still complete or retry the delivery as
// long as no one else leased it meanwhile; once another caller leased it,
// the old token is lost for good (Complete ignores the delivery, Retry
// returns ErrLeaseLost) and only the new holder's token acts. A delivery
// completed and enqueued again under the same ID is a new delivery: no
// token of the old one acts on it. So a process whose lease ran out (it
// stalled, or its clock or network did) can neither remove nor reschedule
// work another process now holds, and an old completion can never remove a
// newer copy of a delivery that nobody sent yet.
//
// An empty Token acts whoever holds the delivery: it is for callers that
// never leased it (tools, tests); the relay always passes its token.
type LeaseRef struct {
	ID    string
	Token string
}

// IDs returns LeaseRefs with empty tokens for ids: they complete the
// deliveries whoever holds them.
func IDs(ids ...string) []LeaseRef {
	refs := make([]LeaseRef, len(ids))
	for i, id := range ids {
		refs[i] = LeaseRef{ID: id}
	}
	return refs
}

// LeaseRequest asks Lease for due deliveries.
type LeaseRequest struct {
	// Now is the current time: deliveries with NotBefore <= Now and no live
	// lease are due.
	Now time.Time
	// Limit is the maximum number of deliveries returned; it must be > 0.
	Limit int
	// Duration is how long the leased deliveries stay reserved. After it
	// they become due again unless completed, retried or dropped.
	Duration time.Duration
	// SkipHosts lists hosts whose deliveries must not be leased (for
	// example hosts whose workers are saturated or whose breaker is open).
	SkipHosts map[string]bool
	// PerHost, if > 0, is the most deliveries for any one host that one
	// Lease call returns, so that one host's backlog cannot fill a batch.
	PerHost int
	// HostCap, if > 0, is the most live leases any one host may have: Lease
	// returns no delivery for a host that already has HostCap live leases,
	// held by any caller (other processes sharing the store included),
	// counting the deliveries this call returns. A lease is live from Lease
	// until the delivery is completed, retried or dropped, or until Now
	// reaches the end of the lease. Stores shared by several processes
	// make the cap hold however many of them lease at once. PerHost and
	// SkipHosts apply as well; HostCap 0 leaves hosts uncapped.
	HostCap int
}

// DeliveryFilter selects deliveries in DropDeliveries and CountDeliveries.
// Zero fields match everything: DropDeliveries with a zero filter empties
// the whole queue, so callers set at least one field.
type DeliveryFilter struct {
	Host       string
	Subscriber string
}

// Match reports whether d passes the filter.
func (f DeliveryFilter) Match(d *Delivery) bool {
	return (f.Host == "" || f.Host == d.Host) && (f.Subscriber == "" || f.Subscriber == d.Subscriber)
}

// Store persists a relay's state.
//
// Every method must be safe for concurrent use by multiple goroutines (and,
// for shared engines, by multiple processes) and must return ErrClosed
// after the store is closed. Methods never retain or modify the slices and
// structs passed to them, and the values they return are copies the caller
// may modify. Ids and keys up to PortableKeyLen bytes are accepted (see
// there for longer ones).
//
// Every method honours ctx cancellation and deadlines by returning
// ctx.Err() (possibly wrapped):
//
//   - If ctx is already done when the method is called, it changes nothing.
//   - If ctx ends while a change is being made, the method may return
//     ctx.Err() (or a result, if it finished meanwhile) with the change
//     either applied or not: a store cannot always know whether a commit it
//     submitted took effect (the file store waits for a change once it is
//     submitted; a database's commit may succeed as the connection drops).
//     A change is never applied in part: each method's change is atomic,
//     whatever ctx does. Callers that need to know re-read the state. A
//     method that returns nil has applied its change. (Exception: payloads
//     whose last deliveries Complete, DropDeliveries or ShedDeliveries
//     removed may be deleted in a separate step after the change, so a
//     payload may outlive its last delivery for a while, never the
//     reverse.)
type Store interface {
	// GetValue returns the value stored under key, or ErrNotFound.
	// Values hold small named documents: the relay key, policies, settings.
	GetValue(ctx context.Context, key string) ([]byte, error)
	// PutValue stores value under key, replacing any previous value.
	PutValue(ctx context.Context, key string, value []byte) error
	// CreateValue stores value under key only if key is absent, and returns
	// the value stored under key afterwards: value itself if it was absent,
	// the existing value otherwise. Concurrent callers all get the same
	// value back.
	CreateValue(ctx context.Context, key string, value []byte) ([]byte, error)
	// DeleteValue removes key. Removing an absent key returns nil.
	DeleteValue(ctx context.Context, key string) error
	// ListValues returns every key/value pair whose key starts with prefix
	// ("" lists all). It returns an empty, non-nil map when nothing matches.
	ListValues(ctx context.Context, prefix string) (map[string][]byte, error)

	// GetSubscriber returns the subscriber with the given actor id, or
	// ErrNotFound.
	GetSubscriber(ctx context.Context, actorID string) (Subscriber, error)
	// UpdateSubscriber atomically reads the subscriber with the given actor
	// id, calls fn with a copy of it and stores what fn leaves in the copy.
	// If the subscriber does not exist, fn gets a zero Subscriber whose
	// ActorID is set and found == false; returning nil creates it. If fn
	// returns an error, nothing is stored and UpdateSubscriber returns that
	// error. fn must not change ActorID and may be called more than once
	// (optimistic retries), so it must not have side effects. It returns the
	// subscriber as stored. An empty actorID is refused with an error
	// wrapping ErrEmptyID, before fn is called.
	UpdateSubscriber(ctx context.Context, actorID string, fn func(s *Subscriber, found bool) error) (Subscriber, error)
	// DeleteSubscriber removes a subscriber. Removing an absent one returns nil.
	DeleteSubscriber(ctx context.Context, actorID string) error
	// ListSubscribers returns the subscribers that match f, ordered by
	// ActorID. It returns an empty, non-nil slice when none match.
	ListSubscribers(ctx context.Context, f SubscriberFilter) ([]Subscriber, error)

	// MarkSeen records id (an activity or object id) as seen until the given
	// time, and reports whether it was new: true if id was not marked or its
	// mark had expired, false if a live mark exists (which is left as it is).
	// It is atomic: of concurrent callers with the same id exactly one sees
	// true, and it is atomic with the marks Enqueue takes (a MarkSeen of an
	// id and an Enqueue taking a mark on it never both succeed as new).
	// Whether a mark has expired is decided by the store's own clock (the
	// system clock for memstore and filestore; the engine's for a shared
	// store), not by the caller's. Expired marks are reclaimed by the store.
	// The relay takes its marks with Enqueue, in the change that queues the
	// work they guard; MarkSeen is for marks that guard nothing stored.
	MarkSeen(ctx context.Context, id string, until time.Time) (bool, error)
	// ForgetSeen removes the mark on id, so that the next MarkSeen of id
	// reports true. Forgetting an absent id returns nil.
	ForgetSeen(ctx context.Context, id string) error

	// Enqueue atomically stores the payloads and the deliveries that refer
	// to them, and takes marks (deduplication marks, as MarkSeen does), all
	// in one change. If any of marks is live, Enqueue stores nothing and
	// returns a *SeenError naming the live ones; of concurrent Enqueue and
	// MarkSeen calls taking a mark on the same id, at most one succeeds. A
	// mark whose Until is not after the store's now is checked but not
	// kept. With marks and no deliveries, Enqueue only takes the marks.
	// A payload whose ID is already stored keeps its body; a delivery whose
	// ID is already queued is left unchanged. Every delivery's PayloadID
	// must name one of payloads or an already stored payload, else Enqueue
	// fails and stores nothing. Once Enqueue returns nil the work and the
	// marks are as durable as the store: a crash cannot leave a mark
	// without the work it guards, so a sender's retry of an activity whose
	// queueing failed is never mistaken for a duplicate.
	Enqueue(ctx context.Context, payloads []Payload, deliveries []Delivery, marks ...Mark) error
	// Lease reserves up to r.Limit due deliveries (see LeaseRequest) for
	// r.Duration and returns them, oldest NotBefore first, each with a new
	// Token. It returns an empty slice when nothing is due.
	Lease(ctx context.Context, r LeaseRequest) ([]Delivery, error)
	// GetPayload returns the body of a stored payload, or ErrNotFound.
	GetPayload(ctx context.Context, id string) ([]byte, error)
	// Complete removes deliveries (delivered, or given up) in one atomic
	// change, and each payload once no delivery refers to it (with them,
	// or in a step of its own just after: see Store): a store makes one
	// transaction (and one sync) for all of them, so the relay confirms
	// completions in batches. A delivery is removed only if its
	// ref's token is still valid (see LeaseRef): one leased again by
	// another caller is left to its new holder, silently, like absent and
	// repeated ids, which are ignored too. (The old holder's copy was sent
	// or not; the new holder sends its own: at least once.)
	Complete(ctx context.Context, refs ...LeaseRef) error
	// Retry releases the lease on d.ID and stores d's Attempts, NotBefore and
	// LastError, so it becomes due again at d.NotBefore. It returns
	// ErrNotFound if the delivery is no longer queued, and ErrLeaseLost,
	// changing nothing, if d.Token is no longer valid (see LeaseRef).
	Retry(ctx context.Context, d Delivery) error
	// DropDeliveries removes every queued delivery matching f (leased or
	// not, payloads reclaimed as in Complete) and returns how many it removed.
	DropDeliveries(ctx context.Context, f DeliveryFilter) (int, error)
	// CountDeliveries returns how many queued deliveries match f.
	CountDeliveries(ctx context.Context, f DeliveryFilter) (int, error)
	// ShedDeliveries bounds the backlog of one host: while more than keep
	// deliveries are queued for host, it removes the oldest (by Created, then
	// NotBefore) unleased delivery whose ActivityType is one of types. It
	// never removes other deliveries, so the backlog may stay above keep. It
	// returns how many it removed. It takes no time: a delivery counts as
	// leased until it is completed or retried, or until the store itself
	// notices that its lease expired: memstore and filestore at the next
	// Lease, pgstore only when Lease takes that delivery again.
	ShedDeliveries(ctx context.Context, host string, keep int, types []string) (int, error)
}

// SubscribersUpdater is implemented by stores that change many
// subscribers in one transaction (store/pgstore does). The relay writes its
// delivery statistics (every 10 s, for every subscriber it delivered to)
// with it when the store has it, in one call per 500 subscribers instead
// of one UpdateSubscriber per subscriber: on a database shared by several
// processes those writes would otherwise be most of its transactions.
type SubscribersUpdater interface {
	// UpdateSubscribers calls fn with the record of each stored subscriber
	// among actorIDs (in no particular order) and stores what fn leaves,
	// atomically: all of the changes or none. Subscribers not stored are
	// skipped, not created, and returned in missing. fn must not change
	// ActorID, and may be called more than once for a subscriber (the
	// change may be tried again); an error from fn aborts the change, and
	// UpdateSubscribers returns it. It is safe for concurrent use with the
	// other methods: a concurrent UpdateSubscriber of one of the
	// subscribers is seen whole, before or after.
	UpdateSubscribers(ctx context.Context, actorIDs []string, fn func(s *Subscriber) error) (missing []string, err error)
}

// Notifier is implemented by stores that several processes share and that
// can tell one process about another's changes (store/pgstore does, with
// LISTEN/NOTIFY). The relay checks for it with a type assertion: its
// delivery loop wakes on QueueChanged instead of waiting for its next
// poll, and it re-reads the block list and policies on ValuesChanged
// instead of waiting for the next periodic reload.
//
// Each method returns the same channel every time; a store sends on it
// without blocking, so signals coalesce while the receiver is busy: one
// value means "something may have changed since you last looked". A store
// may send spurious signals (after a reconnection it cannot know what it
// missed), never a value for a change it has not committed. Each channel
// is meant for one receiver.
type Notifier interface {
	// QueueChanged signals that deliveries were enqueued or rescheduled.
	QueueChanged() <-chan struct{}
	// ValuesChanged signals that a value was put, created or deleted.
	ValuesChanged() <-chan struct{}
}
