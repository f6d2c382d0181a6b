package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/fedirelay/relay/store"
)

// Subscriber software, as NodeInfo names it (software.name, lower case).
// The relay chooses the form of edits, deletions and un-boosts by it (see
// docs/protocol.md, "Which form each server applies").
const (
	softwareMastodon   = "mastodon"
	softwareMisskey    = "misskey"
	softwareGoToSocial = "gotosocial"
	softwarePleroma    = "pleroma"
	softwareAkkoma     = "akkoma"
	softwareFriendica  = "friendica"
)

// softwareKind folds forks into the software whose inbox they share:
// Misskey's forks (Sharkey, Firefish, Iceshrimp, CherryPick, ...) behave as
// Misskey, Mastodon's (Glitch, Hometown) report "mastodon" already. It
// returns "" for unknown or empty names.
func softwareKind(name string) string {
	switch n := strings.ToLower(strings.TrimSpace(name)); n {
	case softwareMastodon, softwareGoToSocial, softwarePleroma, softwareAkkoma, softwareFriendica:
		return n
	case softwareMisskey, "sharkey", "firefish", "calckey", "foundkey", "iceshrimp", "cherrypick", "meisskey":
		return softwareMisskey
	}
	return ""
}

// nodeInfoSchemaPrefix starts the rel of NodeInfo 2.x links.
const nodeInfoSchemaPrefix = "http://nodeinfo.diaspora.software/ns/schema/2."

// maxNodeInfoLinks bounds the links read from /.well-known/nodeinfo.
const maxNodeInfoLinks = 16

// discoverSoftware returns software.name (lower case) from the NodeInfo
// of actorID's host: /.well-known/nodeinfo, then the newest NodeInfo 2.x
// document it links on the same host. Both are fetched through the relay's
// signed, guarded fetch (the guard refuses private addresses and blocked
// domains; sizes and redirects are bounded). It returns an error when the
// host publishes no usable NodeInfo.
func (r *Relay) discoverSoftware(ctx context.Context, actorID string) (string, error) {
	actor, err := url.Parse(actorID)
	if err != nil || actor.Host == "" {
		return "", fmt.Errorf("relay: nodeinfo: actor %q has no host", actorID)
	}
	wellKnown := actor.Scheme + "://" + actor.Host + "/.well-known/nodeinfo"
	d, err := r.fetch(ctx, wellKnown)
	if err != nil {
		return "", err
	}
	if !sameOrigin(d.url.String(), wellKnown) {
		return "", fmt.Errorf("relay: nodeinfo: %s was served from another origin (%s)", wellKnown, originOf(d.url.String()))
	}
	var links struct {
		Links []struct {
			Rel  string `json:"rel"`
			Href string `json:"href"`
		} `json:"links"`
	}
	if err := json.Unmarshal(d.body, &links); err != nil {
		return "", fmt.Errorf("relay: nodeinfo: %s: %w", wellKnown, err)
	}
	href, best := "", ""
	for k, l := range links.Links {
		if k == maxNodeInfoLinks {
			break
		}
		if v, ok := strings.CutPrefix(l.Rel, nodeInfoSchemaPrefix); ok && v > best && sameOrigin(l.Href, actorID) {
			href, best = l.Href, v
		}
	}
	if href == "" {
		return "", fmt.Errorf("relay: nodeinfo: %s links no NodeInfo 2.x document on %s", wellKnown, actor.Host)
	}
	if d, err = r.fetch(ctx, href); err != nil {
		return "", err
	}
	if !sameOrigin(d.url.String(), href) {
		return "", fmt.Errorf("relay: nodeinfo: %s was served from another origin (%s)", href, originOf(d.url.String()))
	}
	var doc struct {
		Software struct {
			Name string `json:"name"`
		} `json:"software"`
	}
	if err := json.Unmarshal(d.body, &doc); err != nil {
		return "", fmt.Errorf("relay: nodeinfo: %s: %w", href, err)
	}
	name := strings.ToLower(strings.TrimSpace(doc.Software.Name))
	if name == "" || len(name) > 64 {
		return "", fmt.Errorf("relay: nodeinfo: %s names no software", href)
	}
	return name, nil
}

// learnSoftware returns the software of actorID's server from its
// NodeInfo (see discoverSoftware), remembered per host by the subscription
// rules (see followRules.softwareOf, which the rules on software ask
// first), or "" if it cannot be learnt: then the subscriber gets the forms
// every server of its protocol applies.
func (r *Relay) learnSoftware(ctx context.Context, actorID string) string {
	return r.rules.softwareOf(ctx, actorID)
}

// learnSoftwareSoon looks up the software of a subscriber that has just
// followed, in the background, and stores it (see storeSoftware). It is
// called within an inbox request: Close waits for it as for the request,
// and cancels it.
func (r *Relay) learnSoftwareSoon(ctx context.Context, actorID string) {
	r.inflight.Add(1)
	go func() {
		defer r.inflight.Done()
		ctx, cancel := r.untilClosed(ctx)
		defer cancel()
		if name := r.learnSoftware(ctx, actorID); name != "" {
			r.storeSoftware(ctx, hostOf(actorID), []string{actorID}, name)
		}
	}()
}

// Learning the software of subscribers stored without it.
const (
	// softwareRelearn is how long the relay waits before it looks again
	// for the software of subscribers whose NodeInfo could not be read.
	softwareRelearn = 24 * time.Hour
	// maxSoftwareLookups bounds the NodeInfo lookups of learnMissingSoftware
	// in flight at once.
	maxSoftwareLookups = 4
)

// errSoftwareKnown leaves a subscriber unchanged in storeSoftware.
var errSoftwareKnown = errors.New("relay: software known")

// learnMissingSoftware runs from Start until Close: at once, then every
// softwareRelearn, it learns the software of the accepted subscribers
// stored without one (they subscribed before the relay read NodeInfo, or
// their NodeInfo could not be read when they followed), so that they get
// the edits, deletions and un-boosts their software applies (see
// formFor). Close cancels the lookups in flight and waits for them.
func (r *Relay) learnMissingSoftware() {
	defer r.bg.Done()
	ctx, cancel := r.untilClosed(context.Background())
	defer cancel()
	for {
		r.learnSoftwareOnce(ctx)
		select {
		case <-r.closed:
			return
		case <-r.clock.After(softwareRelearn):
		}
	}
}

// learnSoftwareOnce looks up the NodeInfo of each host of accepted
// subscribers without Software once (learnSoftware, through the relay's
// guarded fetches, at most maxSoftwareLookups at once) and stores what it
// learns in them.
func (r *Relay) learnSoftwareOnce(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	subs, err := r.store.ListSubscribers(lctx, store.SubscriberFilter{State: store.StateAccepted})
	cancel()
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
			r.log.Warn("relay: cannot list subscribers to learn their software", "err", err)
		}
		return
	}
	byHost := map[string][]string{}
	for i := range subs {
		if s := &subs[i]; s.Software == "" && s.Host != "" {
			byHost[s.Host] = append(byHost[s.Host], s.ActorID)
		}
	}
	slots := make(chan struct{}, maxSoftwareLookups)
	var wg sync.WaitGroup
	for host, actors := range byHost {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			if name := r.learnSoftware(ctx, actors[0]); name != "" {
				r.storeSoftware(ctx, host, actors, name)
			}
		}()
	}
	wg.Wait()
}

// storeSoftware stores name as the Software of the subscribers actors on
// host, except those whose Software was set meanwhile (by the operator, or
// by a new Follow), which keep theirs.
func (r *Relay) storeSoftware(ctx context.Context, host string, actors []string, name string) {
	now := r.now().UTC()
	stored := 0
	for _, id := range actors {
		_, err := r.store.UpdateSubscriber(ctx, id, func(s *store.Subscriber, found bool) error {
			if !found || s.Software != "" {
				return errSoftwareKnown
			}
			s.Software, s.UpdatedAt = name, now
			return nil
		})
		switch {
		case err == nil:
			stored++
		case errors.Is(err, errSoftwareKnown):
		default:
			if ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
				r.log.Warn("relay: cannot store a subscriber's software", "actor", id, "err", err)
			}
			return
		}
	}
	r.software.seed(host, name)
	if stored > 0 {
		r.log.Info("relay: learnt the software of subscribers", "host", host, "software", name, "subscribers", stored)
	}
}
