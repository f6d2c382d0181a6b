package relay

// What the relay tells about its traffic without metrics: debug lines per
// activity and per failed delivery, a periodic info summary, and the
// counts the status page shows.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fedirelay/relay/store"
)

// summaryInterval is how often the relay logs a summary of its traffic at
// info, when something happened since the last one.
const summaryInterval = 10 * time.Minute

// activityLog counts the relay's traffic: since the last summary, and the
// posts relayed per minute over the last hour for the status page. It is
// safe for concurrent use; the zero value is ready.
type activityLog struct {
	relayed, delivered, failed atomic.Int64 // since the last summary

	mu      sync.Mutex
	minutes [60]int64 // posts relayed, by minute of the hour
	stamp   [60]int64 // the Unix minute each slot counts
}

// post counts a post relayed at now.
func (a *activityLog) post(now time.Time) {
	m := now.Unix() / 60
	i := m % 60
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stamp[i] != m {
		a.stamp[i], a.minutes[i] = m, 0
	}
	a.minutes[i]++
}

// postsLastHour returns the posts relayed in the 60 minutes before now.
func (a *activityLog) postsLastHour(now time.Time) int64 {
	m := now.Unix() / 60
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for i := range a.minutes {
		if m-a.stamp[i] < 60 {
			n += a.minutes[i]
		}
	}
	return n
}

// observeInbox reports an inbox answer to the Observer.
func (r *Relay) observeInbox(err error) {
	outcome, status := inboxOutcome(err)
	r.events.InboxRequest(outcome, status)
	var ie *inboxError
	if errors.As(err, &ie) && ie.signature != "" {
		r.events.SignatureFailure(ie.signature)
	}
}

// relayed records an activity whose fan-out b was stored: Observer.Relayed
// per form, the counts, and a debug line.
func (r *Relay) relayed(env *envelope, b *batch, body []byte) {
	verbatimID := payloadID(body)
	verbatim, announce := 0, 0
	for _, d := range b.deliveries {
		if d.PayloadID == verbatimID {
			verbatim++
		} else {
			announce++
		}
	}
	form := "none"
	switch {
	case verbatim > 0 && announce > 0:
		form = "verbatim+announce"
	case verbatim > 0:
		form = "verbatim"
	case announce > 0:
		form = "announce"
	}
	if verbatim > 0 {
		r.events.Relayed(env.Type, "verbatim", verbatim)
	}
	if announce > 0 {
		r.events.Relayed(env.Type, "announce", announce)
	}
	if verbatim+announce == 0 {
		r.events.Relayed(env.Type, "none", 0)
	}
	r.activity.relayed.Add(1)
	if env.isPost() {
		r.activity.post(r.now())
	}
	r.log.Debug("relay: activity accepted", "id", env.ID, "type", env.Type,
		"sender", hostOf(env.Actor), "fan_out", verbatim+announce, "form", form)
}

// observe reports one delivery attempt that ended as o (see outcomeOf)
// with status or err, and logs a failed one at debug.
func (q *deliveryQueue) observe(d store.Delivery, o outcome, status int, err error) {
	r := q.r
	var name string
	var latency time.Duration
	switch {
	case o == outcomeCanceled:
		return // shutting down: not an attempt
	case o == outcomeDelivered:
		name, latency = "delivered", r.now().Sub(d.Created)
		r.activity.delivered.Add(1)
	case o == outcomeRefused && status == http.StatusGone:
		name = "gone"
	case o == outcomeRefused:
		name = "refused"
	case o == outcomeThrottled:
		name = "throttled"
	default:
		name = "failed"
	}
	if name != "delivered" {
		r.activity.failed.Add(1)
	}
	if name != "delivered" && r.log.Enabled(q.bgCtx, slog.LevelDebug) {
		cause := fmt.Sprintf("HTTP %d", status)
		if err != nil {
			cause = err.Error()
		}
		r.log.Debug("relay: delivery failed", "inbox", d.Inbox, "subscriber", d.Subscriber,
			"type", d.ActivityType, "attempt", d.Attempts+1, "status", status, "err", cause)
	}
	r.events.Delivered(name, r.software.of(d.Host), latency)
}

// logSummaries logs a summary of the traffic every summaryInterval, when
// something happened, until the relay closes.
func (r *Relay) logSummaries() {
	defer r.bg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	if subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{}); err == nil {
		r.software.seedAll(subs)
	}
	cancel()
	for {
		select {
		case <-r.closed:
			return
		case <-r.clock.After(summaryInterval):
		}
		r.logSummary()
	}
}

// logSummary logs the traffic since the last summary, if there was any,
// and forgets the software of hosts that no longer have a subscriber.
func (r *Relay) logSummary() {
	relayed := r.activity.relayed.Swap(0)
	delivered := r.activity.delivered.Swap(0)
	failed := r.activity.failed.Swap(0)
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{}); err == nil {
		r.software.seedAll(subs)
	}
	if relayed == 0 && delivered == 0 && failed == 0 {
		return
	}
	backlog, err := r.store.CountDeliveries(ctx, store.DeliveryFilter{})
	if err != nil {
		backlog = -1
	}
	r.log.Info("relay: traffic summary", "period", summaryInterval, "relayed", relayed,
		"delivered", delivered, "failed", failed, "backlog", backlog)
}

// PostsLastHour returns how many posts (Creates and Announces) the relay
// accepted for relaying in the last 60 minutes, counted by this process
// since it started. It is safe for concurrent use.
func (r *Relay) PostsLastHour() int64 { return r.activity.postsLastHour(r.now()) }
