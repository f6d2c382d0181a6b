package queueindex

import "fmt"

// Check verifies the consistency of the index — maps, heaps, reference
// counts — and returns the first inconsistency found, or nil. It visits
// everything: it is meant for tests.
func (x *Index[X]) Check() error {
	var err error
	check := func(ok bool, format string, args ...any) {
		if !ok && err == nil {
			err = fmt.Errorf("queueindex: "+format, args...)
		}
	}
	refs := map[string]int{}
	targetRefs := map[*target[X]]int{}
	leasedPerHost := map[*host[X]]int{}
	ready, leased := 0, 0
	for id, it := range x.ByID {
		d := it.Delivery()
		check(id == d.ID, "ByID[%s] holds %s", id, d.ID)
		check(x.hosts[d.Host] == it.target.host, "item %s: host", id)
		check(x.targets[targetKey{d.Host, d.Inbox, d.Subscriber, d.ActivityType, d.Signer}] == it.target, "item %s: target", id)
		targetRefs[it.target]++
		check(it.seq <= x.Seq, "item %s: seq %d after Seq %d", id, it.seq, x.Seq)
		if it.Leased() {
			leased++
			leasedPerHost[it.target.host]++
			check(int(it.idx) < len(x.leased) && x.leased[it.idx] == it, "item %s: lease heap index", id)
		} else {
			ready++
			r := it.target.host.ready
			check(int(it.idx) < len(r) && r[it.idx] == it, "item %s: ready heap index", id)
		}
		refs[d.PayloadID]++
		check(x.Payloads[d.PayloadID] == it.payload, "item %s: payload", id)
	}
	check(len(x.targets) == len(targetRefs), "%d targets, %d referred to", len(x.targets), len(targetRefs))
	for k, t := range x.targets {
		check(targetRefs[t] == t.refs, "target %+v: refs %d, referred to %d times", k, t.refs, targetRefs[t])
	}
	check(leased == len(x.leased), "%d leased items, %d in the lease heap", leased, len(x.leased))
	for i := 1; i < len(x.leased); i++ {
		check(!x.leased.Less(i, (i-1)/2), "lease heap order")
	}
	items, readyInHeaps := 0, 0
	for name, h := range x.hosts {
		check(name == h.name, "hosts[%s] holds %s", name, h.name)
		check(len(h.ready)+h.leased > 0, "host %s without items", name)
		check(h.leased == leasedPerHost[h], "host %s: %d leased, counted %d", name, leasedPerHost[h], h.leased)
		items += len(h.ready) + h.leased
		readyInHeaps += len(h.ready)
		for i := 1; i < len(h.ready); i++ {
			check(!h.ready.Less(i, (i-1)/2), "host %s: ready heap order", name)
		}
		if len(h.ready) > 0 {
			check(h.idx >= 0 && h.idx < len(x.due) && x.due[h.idx] == h, "host %s: due heap index", name)
			first := h.ready[0]
			check(h.key == dueKey{sec: first.nbSec, seq: first.seq, nsec: first.nbNsec}, "host %s: key", name)
		} else {
			check(h.idx == -1, "host %s without ready items in the due heap", name)
		}
	}
	check(items == len(x.ByID), "%d items in hosts, %d in ByID", items, len(x.ByID))
	check(ready == readyInHeaps, "%d ready items, %d in ready heaps", ready, readyInHeaps)
	for i, h := range x.due {
		check(x.hosts[h.name] == h, "due host %s not in hosts", h.name)
		check(i == 0 || !x.due.Less(i, (i-1)/2), "due heap order")
	}
	check(len(x.Payloads) == len(refs), "%d payloads, %d referred to", len(x.Payloads), len(refs))
	for id, p := range x.Payloads {
		check(id == p.ID, "Payloads[%s] holds %s", id, p.ID)
		check(refs[id] == p.refs, "payload %s: refs %d, referred to %d times", id, p.refs, refs[id])
	}
	return err
}

// Empty reports whether the index holds nothing at all: no item, payload,
// target, host or heap entry.
func (x *Index[X]) Empty() bool {
	return len(x.ByID) == 0 && len(x.Payloads) == 0 && len(x.targets) == 0 && len(x.hosts) == 0 &&
		len(x.due) == 0 && len(x.leased) == 0
}

// DueHosts returns the number of hosts with ready items.
func (x *Index[X]) DueHosts() int { return len(x.due) }
