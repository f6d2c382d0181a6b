package relay

// Storing a fan-out: the deliveries of one activity, with the
// deduplication marks that guard them, in one store change or in chunks,
// within each host's backlog bound.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"

	"github.com/fedirelay/relay/store"
)

// batch collects payloads and deliveries to enqueue, with the
// deduplication marks that guard them (see enqueue).
// One delivery is made per inbox: subscribers sharing an inbox get one copy,
// however they spell it (see inboxKey).
type batch struct {
	r          *Relay
	payloads   []store.Payload
	deliveries []store.Delivery
	seen       map[string]bool // payload ids, and inbox key + " " + payload id
	served     map[string]bool // inbox keys (inboxKey) the batch sends to
}

func newBatch(r *Relay) *batch {
	return &batch{r: r, seen: map[string]bool{}, served: map[string]bool{}}
}

// payloadID names a payload by its content.
func payloadID(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}

// add queues p for inbox. The delivery id is derived from the payload and
// the inbox's deduplication key (inboxKey), so queueing the same thing
// twice, to any spelling of the inbox, is a no-op in the store.
func (b *batch) add(p store.Payload, inbox, subscriber, activityType string) {
	if inbox == "" {
		return
	}
	key := inboxKey(inbox) // spellings of one inbox get one delivery
	seenKey := key + " " + p.ID
	if b.seen[seenKey] {
		return
	}
	b.seen[seenKey] = true
	b.served[key] = true
	if !b.seen[p.ID] {
		b.seen[p.ID] = true
		b.payloads = append(b.payloads, p)
	}
	sum := sha256.Sum256([]byte(p.ID + " " + key))
	now := b.r.now().UTC()
	b.deliveries = append(b.deliveries, store.Delivery{
		ID:           hex.EncodeToString(sum[:16]),
		PayloadID:    p.ID,
		Inbox:        inbox,
		Host:         hostOf(inbox),
		Subscriber:   subscriber,
		ActivityType: activityType,
		NotBefore:    now,
		Created:      now,
	})
}

// addAs queues p for inbox, signed by actor (see signerFor), for no
// subscriber of the relay actor.
func (b *batch) addAs(p store.Payload, inbox, actor, activityType string) {
	n := len(b.deliveries)
	b.add(p, inbox, "", activityType)
	if len(b.deliveries) > n {
		b.deliveries[n].Signer = actor
	}
}

// servesInbox reports whether the batch sends anything to inbox, however
// it is spelled (inboxKey).
func (b *batch) servesInbox(inbox string) bool {
	return inbox != "" && b.served[inboxKey(inbox)]
}

// enqueueChunk is the most deliveries one store change holds: a larger
// fan-out is stored in several changes, so that its transient memory (the
// encoded records and the store's transaction, ≈ 2 KB per delivery in the
// file store) is bounded, and so that its first deliveries start while the
// rest is being stored.
const enqueueChunk = 1000

// enqueue stores the batch and takes marks (see store.Store.Enqueue: a
// *store.SeenError, wrapped, if one is live), bounds the backlog of the
// hosts it adds to and wakes the dispatcher. Once it returns nil the work
// is as durable as the store.
//
// A batch of more than enqueueChunk deliveries is stored in chunks, the
// marks with the last one, so that a failure or crash between chunks
// leaves no mark and the sender's retry queues the activity again; the
// marks are checked before the first chunk. Within this process, batches
// taking the same marks are stored one after the other (markLocks), so a
// copy of the activity, or another post of the same object, waits and
// then finds the marks taken. What a failed fan-out stored stays: delivery
// ids derive from payload and inbox, and the relay's Announce of a post
// has an id (and payload id) derived from the object, so the retry queues
// the same deliveries, which the store does not queue twice (once
// completed, a delivery queued again is sent again: at least once).
func (b *batch) enqueue(ctx context.Context, marks ...store.Mark) error {
	if len(b.deliveries) == 0 && len(marks) == 0 {
		return nil
	}
	ids := make([]string, len(marks))
	for i, m := range marks {
		ids[i] = m.ID
	}
	unlock, err := b.r.markLocks.lock(ctx, ids)
	if err != nil {
		return err
	}
	defer unlock()
	chunk := b.r.enqueueChunk
	rest := b.deliveries
	if len(rest) > chunk && len(marks) > 0 {
		if err := b.r.store.Enqueue(ctx, nil, nil, checkOnly(marks)...); err != nil {
			return fmt.Errorf("relay: checking %d marks: %w", len(marks), err)
		}
	}
	for ; len(rest) > chunk; rest = rest[chunk:] {
		if err := b.storeChunk(ctx, rest[:chunk]); err != nil {
			return err
		}
	}
	return b.storeChunk(ctx, rest, marks...)
}

// storeChunk stores deliveries (and the payloads they refer to) in one change
// with marks, then caches the bodies, bounds the backlogs and wakes the
// dispatcher.
func (b *batch) storeChunk(ctx context.Context, deliveries []store.Delivery, marks ...store.Mark) error {
	payloads := b.payloads
	if len(deliveries) < len(b.deliveries) {
		payloads = nil
		for _, p := range b.payloads {
			if slices.ContainsFunc(deliveries, func(d store.Delivery) bool { return d.PayloadID == p.ID }) {
				payloads = append(payloads, p)
			}
		}
	}
	if err := b.r.store.Enqueue(ctx, payloads, deliveries, marks...); err != nil {
		return fmt.Errorf("relay: queueing %d deliveries: %w", len(deliveries), err)
	}
	q := b.r.queue
	for _, p := range payloads {
		q.bodies.put(p.ID, p.Body)
	}
	q.bound(ctx, deliveries)
	q.wake()
	return nil
}

// keyedLocks are mutual-exclusion locks named by strings, held by one
// goroutine at a time each; the zero value is ready to use.
type keyedLocks struct {
	mu      sync.Mutex
	held    map[string]chan struct{} // closed when the lock is released
	waiting int                      // goroutines waiting for a lock (tests)
}

// lock takes the locks named by ids (in sorted order, so that callers
// taking overlapping sets cannot deadlock), waiting while another holder
// has one, and returns the function that releases them. It returns
// ctx.Err(), holding nothing, if ctx ends first.
func (k *keyedLocks) lock(ctx context.Context, ids []string) (func(), error) {
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	unlock := func(n int) {
		k.mu.Lock()
		for _, id := range ids[:n] {
			close(k.held[id])
			delete(k.held, id)
		}
		k.mu.Unlock()
	}
	for i, id := range ids {
		for {
			k.mu.Lock()
			if k.held == nil {
				k.held = map[string]chan struct{}{}
			}
			ch, busy := k.held[id]
			if !busy {
				k.held[id] = make(chan struct{})
				k.mu.Unlock()
				break
			}
			k.waiting++
			k.mu.Unlock()
			var err error
			select {
			case <-ch:
			case <-ctx.Done():
				err = ctx.Err()
			}
			k.mu.Lock()
			k.waiting--
			k.mu.Unlock()
			if err != nil {
				unlock(i)
				return nil, err
			}
		}
	}
	return func() { unlock(len(ids)) }, nil
}

// checkOnly returns marks with a zero Until: Enqueue checks them, reporting
// live ones, but keeps none.
func checkOnly(marks []store.Mark) []store.Mark {
	out := make([]store.Mark, len(marks))
	for i, m := range marks {
		out[i] = store.Mark{ID: m.ID}
	}
	return out
}

// bound keeps the backlog of the hosts that ds were queued for within
// Config.MaxHostBacklog by shedding their oldest unleased Creates and
// Announces (Update, Delete, Move and subscription messages are kept). It
// counts a host's deliveries only when an upper estimate of its backlog
// (the last count plus what was queued since) is over the bound, so it
// costs the store nothing most of the time. On a store shared with other
// processes (a store.Notifier), whose queueing this one does not see, it
// also counts whenever this process queued another eighth of the bound
// for the host since its last count, so that N processes overshoot the
// bound by at most N/8 of it. Failures are logged: the deliveries are
// stored whatever happens here.
func (q *deliveryQueue) bound(ctx context.Context, ds []store.Delivery) {
	limit := q.r.cfg.MaxHostBacklog
	if limit <= 0 {
		return
	}
	_, shared := q.r.baseStore().(store.Notifier)
	var over []string
	q.mu.Lock()
	for _, d := range ds {
		q.backlog[d.Host]++
		if shared {
			q.added[d.Host]++
		}
		due := q.backlog[d.Host] > limit || shared && q.added[d.Host] >= max(limit/8, 1)
		if due && !slices.Contains(over, d.Host) {
			over = append(over, d.Host)
		}
	}
	q.mu.Unlock()
	for _, h := range over {
		n, err := q.r.store.CountDeliveries(ctx, store.DeliveryFilter{Host: h})
		if err == nil && n > limit {
			var shed int
			shed, err = q.r.store.ShedDeliveries(ctx, h, limit, sheddable)
			if shed > 0 {
				q.r.events.Dropped("shed", shed)
				q.r.log.Warn("relay: host backlog over its bound, shed oldest posts", "host", h, "backlog", n, "shed", shed)
			}
			n -= shed
		}
		if err != nil {
			q.r.log.Error("relay: bounding host backlog", "host", h, "err", err)
			continue
		}
		q.mu.Lock()
		q.backlog[h] = n
		delete(q.added, h)
		q.mu.Unlock()
	}
}

// sheddable are the activity types dropped first from a full host backlog.
var sheddable = []string{"Create", "Announce"}
