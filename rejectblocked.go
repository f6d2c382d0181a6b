package relay

// A Follow from a blocked domain is answered with a Reject carrying the
// block's public reason: a refused request always gets a Reject, never
// silence. This is the one thing the relay ever sends to a blocked domain.

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/fedirelay/relay/httpsig"
	vocab "github.com/go-ap/activitypub"
)

// blockedRejectInterval is how often a blocked host is answered at most:
// one fetch of the follower's actor and one Reject per host per interval,
// however many Follows it sends.
const blockedRejectInterval = time.Hour

// maxBlockedRejectHosts bounds the hosts blockedRejects remembers; when it
// is full of hosts answered within the interval, further hosts get no
// Reject (a wildcard block covers unlimited host names).
const maxBlockedRejectHosts = 1024

// blockedRejects remembers when each blocked host was last answered. Its
// zero value is ready; it is safe for concurrent use.
type blockedRejects struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// take reports whether host may be answered now, and if so records it.
func (b *blockedRejects) take(host string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t, ok := b.last[host]; ok && now.Sub(t) < blockedRejectInterval {
		return false
	}
	if b.last == nil {
		b.last = map[string]time.Time{}
	}
	if len(b.last) >= maxBlockedRejectHosts {
		for h, t := range b.last {
			if now.Sub(t) >= blockedRejectInterval {
				delete(b.last, h)
			}
		}
		if len(b.last) >= maxBlockedRejectHosts {
			return false
		}
	}
	b.last[host] = now
	return true
}

// rejectBlockedFollow answers a Follow of the relay actor, of as:Public or
// of a topic actor whose keyId is on a blocked domain with a Reject (by
// the followed actor) whose summary is the block's public reason. The inbox still refuses the
// request (403); the Reject is sent in the background, and only when:
// the body is a Follow by the key's owner, the host was not answered in
// the last blockedRejectInterval, the follower's actor document (fetched
// by id, the one fetch allowed on the blocked domain) lists the key and
// the signature verifies with it, and the actor has an inbox on its own
// origin. The Reject goes to that inbox only, signed by the followed actor,
// once, without retries; it is not stored. Every other request to a
// blocked domain stays refused by the outbound guard.
func (r *Relay) rejectBlockedFollow(ctx context.Context, m *message) {
	env, req, sig := m.env, m.req, m.sig
	if env.Type != "Follow" || !keyOwnedBy(m.keyID, env.Actor) {
		return
	}
	actor, followed := r.actorID, env.Object.ID
	if topic := r.followedTopic(env); topic != "" {
		if !r.topicExists(topic) {
			return
		}
		actor = r.topicActorID(topic) // the topic actor answers its own follows
		if !isPublic(followed) {
			followed = actor
		}
	} else if !isPublic(followed) && followed != r.actorID {
		return
	}
	if isPublic(followed) {
		followed = PublicCollection
	}
	host := hostOf(env.Actor)
	if !r.blockedRejects.take(host, r.now()) {
		return
	}
	signed := req.Clone(context.WithoutCancel(ctx)) // the headers, read after the handler returns
	r.inflight.Add(1)                               // within an inbox request: Close waits for it too
	go func() {
		defer r.inflight.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.cfg.RequestTimeout)
		defer cancel()
		if err := r.sendBlockedReject(ctx, signed, sig, env, actor, followed); err != nil {
			r.log.Debug("relay: no Reject for a Follow from a blocked domain", "actor", env.Actor, "err", err)
		}
	}()
}

// sendBlockedReject authenticates the Follow env (see rejectBlockedFollow)
// and posts the Reject.
func (r *Relay) sendBlockedReject(ctx context.Context, req *http.Request, sig inboundSignature, env *envelope, actor, followed string) error {
	d, err := r.fetchByID(withBlockedException(ctx, env.Actor), env.Actor)
	if err != nil {
		return err
	}
	doc, err := parseKeyDocument(d.body)
	if err != nil {
		return err
	}
	pem := ""
	for _, k := range doc.keys() {
		if k.ID == sig.keyID() {
			pem = k.PublicKeyPem
		}
	}
	if pem == "" {
		return refuse(http.StatusUnauthorized, "actor %s does not list key %s", env.Actor, sig.keyID())
	}
	pub, err := httpsig.ParsePublicKeyPEM(pem)
	if err != nil {
		return err
	}
	if err := sig.verify(req, pub); err != nil {
		return err
	}
	inbox := doc.actor().ownInbox()
	if inbox == "" {
		return refuse(http.StatusBadRequest, "actor %s has no inbox on its own origin", env.Actor)
	}
	reply, err := r.actorFollowReply(actor, vocab.RejectType, env.ID, env.Actor, followed, r.blockReason(ctx, hostOf(env.Actor)))
	if err != nil {
		return err
	}
	out, err := http.NewRequestWithContext(withBlockedException(ctx, inbox), http.MethodPost, inbox, bytes.NewReader(reply))
	if err != nil {
		return err
	}
	out.Header.Set("Content-Type", activityJSON)
	out.Header.Set("Accept", acceptActivity)
	out.Header.Set("User-Agent", r.cfg.UserAgent)
	if err := r.signerFor(actor).SignRequest(out, reply, r.now()); err != nil {
		return err
	}
	resp, err := r.transport.RoundTrip(out)
	if err != nil {
		return err
	}
	drain(resp)
	r.log.Info("relay: Follow from a blocked domain answered with a Reject", "actor", env.Actor, "status", resp.StatusCode)
	return nil
}

// blockReason returns the public reason of the run-time block covering
// host, or "" (a block of Config.BlockedDomains has none).
func (r *Relay) blockReason(ctx context.Context, host string) string {
	blocks, err := r.readBlocked(ctx)
	if err != nil {
		return ""
	}
	reason, longest := "", 0
	for _, b := range blocks {
		if b.Severity.effective() == SeveritySuspend && len(b.Domain) > longest && newDomainSet([]string{b.Domain}).contains(host) {
			reason, longest = b.Reason, len(b.Domain)
		}
	}
	return reason
}
