// Package subindex keeps subscribers in memory for the store
// implementations (store/memstore and store/filestore): by actor id, in
// actor id order, and by host, so that ListSubscribers of a host visits
// only that host's subscribers.
//
// An Index is not safe for concurrent use: the stores guard it with their
// lock.
package subindex

import (
	"slices"
	"strings"

	"github.com/fedirelay/relay/store"
)

// Index holds subscribers. Create one with New.
type Index struct {
	byID  map[string]*store.Subscriber
	order []*store.Subscriber                       // the same, sorted by ActorID
	hosts map[string]map[*store.Subscriber]struct{} // the same, by Host
}

// New returns an empty Index.
func New() *Index {
	return &Index{
		byID:  make(map[string]*store.Subscriber),
		hosts: make(map[string]map[*store.Subscriber]struct{}),
	}
}

// Len returns the number of subscribers.
func (x *Index) Len() int { return len(x.byID) }

// Get returns a copy of the subscriber with the given actor id, or
// store.ErrNotFound.
func (x *Index) Get(actorID string) (store.Subscriber, error) {
	sub, ok := x.byID[actorID]
	if !ok {
		return store.Subscriber{}, store.ErrNotFound
	}
	return *sub, nil
}

// Update does the first half of store.Store.UpdateSubscriber: it calls fn
// once with a copy of the subscriber with the given actor id, or with a
// new one holding only that id, and returns the subscriber fn left. It
// stores nothing (see Put). If fn fails, Update returns its error; if fn
// changed ActorID, it returns errChanged.
func (x *Index) Update(actorID string, fn func(sub *store.Subscriber, found bool) error, errChanged error) (store.Subscriber, error) {
	stored, found := x.byID[actorID]
	sub := store.Subscriber{ActorID: actorID}
	if found {
		sub = *stored
	}
	if err := fn(&sub, found); err != nil {
		return store.Subscriber{}, err
	}
	if sub.ActorID != actorID {
		return store.Subscriber{}, errChanged
	}
	return sub, nil
}

// Put stores a copy of sub, adding it or replacing the subscriber with its
// ActorID.
func (x *Index) Put(sub store.Subscriber) {
	stored, found := x.byID[sub.ActorID]
	switch {
	case !found:
		stored = new(store.Subscriber)
		*stored = sub
		x.byID[sub.ActorID] = stored
		i, _ := slices.BinarySearchFunc(x.order, sub.ActorID, compareActorID)
		x.order = slices.Insert(x.order, i, stored)
		x.addHost(stored)
	case stored.Host != sub.Host:
		x.removeHost(stored)
		*stored = sub
		x.addHost(stored)
	default:
		*stored = sub
	}
}

// Delete removes the subscriber with the given actor id and reports
// whether there was one.
func (x *Index) Delete(actorID string) bool {
	sub, ok := x.byID[actorID]
	if !ok {
		return false
	}
	delete(x.byID, actorID)
	x.removeHost(sub)
	if i, ok := slices.BinarySearchFunc(x.order, actorID, compareActorID); ok {
		x.order = slices.Delete(x.order, i, i+1)
	}
	return true
}

// List returns copies of the subscribers matching f, ordered by ActorID,
// in a non-nil slice. With f.Host set it only visits that host's
// subscribers.
func (x *Index) List(f store.SubscriberFilter) []store.Subscriber {
	subs := x.order
	if f.Host != "" {
		set := x.hosts[f.Host]
		subs = make([]*store.Subscriber, 0, len(set))
		for sub := range set {
			subs = append(subs, sub)
		}
		slices.SortFunc(subs, func(a, b *store.Subscriber) int { return strings.Compare(a.ActorID, b.ActorID) })
	}
	n := 0 // count first: the result is allocated once
	for _, sub := range subs {
		if f.Match(sub) {
			n++
		}
	}
	out := make([]store.Subscriber, 0, n)
	for _, sub := range subs {
		if f.Match(sub) {
			out = append(out, *sub)
		}
	}
	return out
}

func compareActorID(sub *store.Subscriber, actorID string) int {
	return strings.Compare(sub.ActorID, actorID)
}

func (x *Index) addHost(sub *store.Subscriber) {
	set := x.hosts[sub.Host]
	if set == nil {
		set = make(map[*store.Subscriber]struct{})
		x.hosts[sub.Host] = set
	}
	set[sub] = struct{}{}
}

func (x *Index) removeHost(sub *store.Subscriber) {
	set := x.hosts[sub.Host]
	delete(set, sub)
	if len(set) == 0 {
		delete(x.hosts, sub.Host)
	}
}
