package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/memstore"
)

// adminClient calls a relay's admin API in process.
type adminClient struct {
	t *testing.T
	h http.Handler
}

func admin(t *testing.T, r *relay.Relay) *adminClient { return &adminClient{t: t, h: r.AdminHandler()} }

// do sends a request and returns the status and body.
func (a *adminClient) do(method, path string, body string) (int, []byte) {
	a.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

// ok sends a request that must succeed and decodes its JSON answer into v
// (if not nil).
func (a *adminClient) ok(method, path, body string, v any) {
	a.t.Helper()
	code, b := a.do(method, path, body)
	require.Equal(a.t, http.StatusOK, code, "%s %s: %s", method, path, b)
	if v != nil {
		require.NoError(a.t, json.Unmarshal(b, v), "%s", b)
	}
}

func (a *adminClient) action(action, actor, extra string) relay.AdminSubscriber {
	a.t.Helper()
	var s relay.AdminSubscriber
	body := fmt.Sprintf(`{"actor": %q%s}`, actor, extra)
	if action == "remove" {
		a.ok("POST", "/api/v1/subscriber/remove", body, nil)
		return s
	}
	a.ok("POST", "/api/v1/subscriber/"+action, body, &s)
	return s
}

func (a *adminClient) list(query string) relay.AdminSubscriberPage {
	a.t.Helper()
	var p relay.AdminSubscriberPage
	a.ok("GET", "/api/v1/subscribers"+query, "", &p)
	return p
}

func actorsOf(p relay.AdminSubscriberPage) []string {
	var out []string
	for _, s := range p.Subscribers {
		out = append(out, s.ActorID)
	}
	return out
}

func memOpts(network *memnet.Network, host string) relaytest.Options {
	return relaytest.Options{Network: network, Host: host, Logf: func(string, ...any) {}}
}

// A relay holding requests for approval: a fake Mastodon and a fake
// GoToSocial stay pending, are listed, approved through the admin API and
// then relay to each other; a refusal with a reason reaches the requester
// as a Reject carrying it; every change is in the store, where another
// relay finds it.
func TestAdminAPIApprovalRoundTrip(t *testing.T) {
	var network memnet.Network
	st := newMemStore(t)
	r := memRelay(t, &network, "relay.test", st, relay.Config{FollowPolicy: relay.ManualApproval})
	a := admin(t, r)
	ctx := context.Background()
	masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "masto.test"))
	gts := relaytest.NewInstance(t, relaytest.GoToSocial, memOpts(&network, "gts.test"))
	misskey := relaytest.NewInstance(t, relaytest.Misskey, memOpts(&network, "misskey.test"))
	for _, i := range []*relaytest.Instance{masto, gts, misskey} {
		_, err := i.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
	}
	pending := a.list("?state=pending")
	assert.ElementsMatch(t, []string{masto.RelayActorID(), gts.RelayActorID(), misskey.RelayActorID()}, actorsOf(pending))
	for _, s := range pending.Subscribers {
		assert.Equal(t, "both", s.Mode)
		assert.NotEmpty(t, s.Inbox)
		assert.NotEmpty(t, s.Protocol)
	}
	// NodeInfo is read just after the Follow is answered.
	require.Eventually(t, func() bool { return len(actorsOf(a.list("?software=gotosocial"))) > 0 }, wait, 10*time.Millisecond)
	assert.Equal(t, []string{gts.RelayActorID()}, actorsOf(a.list("?software=gotosocial")), "software read from NodeInfo")
	assert.Equal(t, []string{masto.RelayActorID()}, actorsOf(a.list("?host=masto.test")))

	s := a.action("approve", masto.RelayActorID(), "")
	assert.Equal(t, store.StateAccepted, s.State)
	a.action("approve", gts.RelayActorID(), "")
	masto.WaitSubscribed(t, wait)
	gts.WaitSubscribed(t, wait)
	n, err := masto.Post(ctx, r.InboxURL(), "alice", "approved at last")
	require.NoError(t, err)
	waitFor(t, gts, "Announce", n.ID)

	s = a.action("refuse", misskey.RelayActorID(), `, "reason": "no bots, please"`)
	assert.Equal(t, store.StateRejected, s.State)
	assert.Equal(t, "no bots, please", s.Reason)
	rc := misskey.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "no bots, please", "the Reject carries the reason")

	a.action("note", gts.RelayActorID(), `, "note": "asked by mail"`)
	a.action("mode", gts.RelayActorID(), `, "mode": "receive-only"`)
	var one relay.AdminSubscriber
	a.ok("GET", "/api/v1/subscriber?actor="+gts.RelayActorID(), "", &one)
	assert.Equal(t, "receive-only", one.Mode)
	assert.Equal(t, "asked by mail", one.Note)
	require.NotNil(t, one.Backlog)

	var status relay.Overview
	a.ok("GET", "/api/v1/status", "", &status)
	assert.Equal(t, 2, status.Subscribers[store.StateAccepted])
	assert.Equal(t, 1, status.Subscribers[store.StateRejected])
	assert.Equal(t, 0, status.Subscribers[store.StatePending])
	assert.True(t, status.ApprovalRequired)

	// Another relay on the same store sees every change (not started: it
	// would deliver the shared queue under its own name; with its own
	// account, as two relays of one process must have).
	r2, err := relay.New(relay.Config{BaseURL: "https://relay.test", Username: "reader", Transport: &network, Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	defer r2.Close(ctx)
	got, err := r2.Subscriber(ctx, gts.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, store.ModeReceiveOnly, got.Mode)
	assert.Equal(t, "asked by mail", got.Note)

	s = a.action("approve", misskey.RelayActorID(), "")
	assert.Empty(t, s.Reason, "approval ends the refusal")
	misskey.WaitSubscribed(t, wait)
	rc = misskey.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Accept" })
	assert.NotContains(t, string(rc.Body), "no bots", "an Accept carries no reason")

	a.action("remove", masto.RelayActorID(), "")
	code, body := a.do("GET", "/api/v1/subscriber?actor="+masto.RelayActorID(), "")
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, string(body), "unknown actor "+masto.RelayActorID())
}

// Bad input gets 400 with a message, an unknown actor 404, and nothing
// changes.
func TestAdminAPIBadInput(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{})
	a := admin(t, r)
	masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "masto.test"))
	subscribe(t, r, masto)
	actor := masto.RelayActorID()
	for _, c := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"GET", "/api/v1/subscribers?state=bogus", "", 400, "unknown state"},
		{"GET", "/api/v1/subscribers?limit=0", "", 400, "limit"},
		{"GET", "/api/v1/subscribers?limit=x", "", 400, "limit"},
		{"GET", "/api/v1/subscribers?mode=sideways", "", 400, "unknown mode"},
		{"GET", "/api/v1/subscriber", "", 400, "missing actor"},
		{"GET", "/api/v1/subscriber?actor=https://nobody.test/actor", "", 404, "unknown actor https://nobody.test/actor"},
		{"POST", "/api/v1/subscriber/approve", `{"actor": "https://nobody.test/actor"}`, 404, "unknown actor"},
		{"POST", "/api/v1/subscriber/refuse", `{"actor": "https://nobody.test/actor"}`, 404, "unknown actor"},
		{"POST", "/api/v1/subscriber/remove", `{"actor": "https://nobody.test/actor"}`, 404, "unknown actor"},
		{"POST", "/api/v1/subscriber/approve", `{}`, 400, "missing actor"},
		{"POST", "/api/v1/subscriber/approve", `{"actor": `, 400, "bad JSON"},
		{"POST", "/api/v1/subscriber/approve", `{"actor": "x", "colour": 1}`, 400, "unknown field"},
		{"POST", "/api/v1/subscriber/approve", `{"actor": "x"} {}`, 400, "more than one"},
		{"POST", "/api/v1/subscriber/mode", `{"actor": "` + actor + `", "mode": "sideways"}`, 400, "unknown mode"},
		{"POST", "/api/v1/subscriber/note", `{"actor": "` + actor + `"}`, 400, "missing note"},
		{"POST", "/api/v1/subscriber/mode", `{"actor": "` + actor + `"}`, 400, "missing mode"},
		{"POST", "/api/v1/subscriber/explode", `{"actor": "` + actor + `"}`, 404, "unknown subscriber action"},
		{"GET", "/api/v1/subscriber/filter", "", 400, "missing actor"},
		{"GET", "/api/v1/subscriber/filter?actor=https://nobody.test/actor", "", 404, "unknown actor https://nobody.test/actor"},
		{"PUT", "/api/v1/subscriber/filter?actor=https://nobody.test/actor", `{}`, 404, "unknown actor https://nobody.test/actor"},
		{"DELETE", "/api/v1/subscriber/filter?actor=https://nobody.test/actor", ``, 404, "unknown actor"},
		{"PUT", "/api/v1/subscriber/filter?actor=" + actor, `{"media": "sometimes"}`, 400, `media must be "with", "without" or empty`},
		{"PUT", "/api/v1/subscriber/filter?actor=" + actor, `{"max_bytes": -1}`, 400, "negative limit"},
		{"PUT", "/api/v1/subscriber/filter?actor=" + actor, `{"allow_tags": ["#"]}`, 400, "invalid filter: tag"},
		{"PUT", "/api/v1/subscriber/filter?actor=" + actor, `{"langs": ["de"]}`, 400, "unknown field"},
		{"PUT", "/api/v1/blocks/not%20a%20domain", ``, 400, "not a domain"},
		{"PUT", "/api/v1/blocks/b%C3%A4d.test", ``, 400, "ASCII"},
		{"PUT", "/api/v1/blocks/bad.test", `{"severity": "obliterate"}`, 400, "unknown severity"},
		{"PUT", "/api/v1/blocks/bad.test", `{"reason": 5}`, 400, "bad JSON"},
		{"PUT", "/api/v1/allowlist/a,b", ``, 400, "not a domain"},
		{"POST", "/api/v1/blocks/import", "#domain,#severity\nok.test,suspend\nbad domain.test,suspend\n", 400, "line 3"},
		{"GET", "/api/v1/nothing", "", 404, "no such admin API route"},
		{"DELETE", "/api/v1/status", "", 404, "no such admin API route"},
	} {
		code, body := a.do(c.method, c.path, c.body)
		assert.Equal(t, c.status, code, "%s %s %s: %s", c.method, c.path, c.body, body)
		var e struct{ Error string }
		if assert.NoError(t, json.Unmarshal(body, &e), "%s %s: JSON error: %s", c.method, c.path, body) {
			assert.Contains(t, e.Error, c.msg, "%s %s", c.method, c.path)
		}
	}
	s, err := r.Subscriber(context.Background(), actor)
	require.NoError(t, err)
	assert.Equal(t, store.StateAccepted, s.State)
	assert.Equal(t, store.ModeBoth, s.Mode)
	assert.Empty(t, s.Filter, "no invalid filter was stored")
	blocks, err := r.DomainBlocks(context.Background())
	require.NoError(t, err)
	assert.Empty(t, blocks, "the malformed import changed nothing")
}

// A subscriber's filter is read, set and removed through the admin API,
// and applies to the next post.
func TestAdminAPISubscriberFilter(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{})
	a := admin(t, r)
	masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "masto.test"))
	gts := relaytest.NewInstance(t, relaytest.GoToSocial, memOpts(&network, "gts.test"))
	subscribe(t, r, masto, gts)
	path := "/api/v1/subscriber/filter?actor=" + gts.RelayActorID()

	var spec relay.FilterSpec
	a.ok("GET", path, "", &spec)
	assert.True(t, spec.IsZero())
	a.ok("PUT", path, `{"deny_tags": ["#Cats"], "max_posts_per_hour": 5}`, &spec)
	assert.Equal(t, relay.FilterSpec{DenyTags: []string{"#Cats"}, MaxPostsPerHour: 5}, spec)
	got, err := r.SubscriberFilter(context.Background(), gts.RelayActorID())
	require.NoError(t, err)
	assert.Equal(t, spec, got, "the API stores what the library reads")

	ctx := context.Background()
	cats, err := masto.PostWith(ctx, r.InboxURL(), "alice", "cats", relaytest.PostOptions{Tags: []string{"cats"}})
	require.NoError(t, err)
	dogs, err := masto.PostWith(ctx, r.InboxURL(), "alice", "dogs", relaytest.PostOptions{Tags: []string{"dogs"}})
	require.NoError(t, err)
	waitFor(t, gts, "Announce", dogs.ID)
	require.NoError(t, r.Close(ctx)) // every delivery has been attempted
	assert.Zero(t, countFor(gts, "Announce", cats.ID), "the filter denies #cats")

	var removed, after relay.FilterSpec
	a.ok("DELETE", path, "", &removed)
	assert.True(t, removed.IsZero())
	a.ok("GET", path, "", &after)
	assert.True(t, after.IsZero())
}

// A receive-only subscriber's posts are not relayed, and a send-only one
// gets nothing, while both keep their other direction.
func TestSubscriberModes(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{})
	ctx := context.Background()
	recv := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "recv.test"))
	send := relaytest.NewInstance(t, relaytest.Pleroma, memOpts(&network, "send.test"))
	both := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "both.test"))
	subscribe(t, r, recv, send, both)
	require.NoError(t, r.SetMode(ctx, recv.RelayActorID(), store.ModeReceiveOnly))
	require.NoError(t, r.SetMode(ctx, send.RelayActorID(), store.ModeSendOnly))
	assert.ErrorIs(t, r.SetMode(ctx, "https://nobody.test/actor", store.ModeSendOnly), relay.ErrNotSubscribed)
	assert.Error(t, r.SetMode(ctx, both.RelayActorID(), store.Mode("sideways")))

	fromRecv, err := recv.Post(ctx, r.InboxURL(), "alice", "not relayed")
	require.NoError(t, err)
	fromSend, err := send.Post(ctx, r.InboxURL(), "alice", "relayed")
	require.NoError(t, err)
	fromBoth, err := both.Post(ctx, r.InboxURL(), "alice", "to everyone but send.test")
	require.NoError(t, err)
	waitFor(t, recv, "Announce", fromSend.ID)
	waitFor(t, both, "Announce", fromSend.ID)
	waitFor(t, recv, "Create", fromBoth.ID)
	require.NoError(t, r.Close(ctx)) // every delivery has been attempted
	assert.Zero(t, countFor(both, "Create", fromRecv.ID), "a receive-only subscriber's post is not relayed")
	assert.Zero(t, countFor(send, "Announce", fromRecv.ID))
	assert.Zero(t, countFor(send, "Announce", fromBoth.ID), "a send-only subscriber gets nothing")
}

// A Mastodon CSV imported through the admin API blocks its domains (in one
// store change), ends their subscriptions, silences and keeps noop entries
// as documented, shows public reasons in NodeInfo, and exports byte for
// byte as imported.
func TestBlockListImportExport(t *testing.T) {
	var network memnet.Network
	st := newMemStore(t)
	r := memRelay(t, &network, "relay.test", st, relay.Config{})
	a := admin(t, r)
	ctx := context.Background()
	bad := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "bad.test"))
	loud := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "loud.test"))
	good := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "good.test"))
	subscribe(t, r, bad, loud, good)

	csv := "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n" +
		"bad.test,suspend,false,false,\"spam, lots of it\",false\n" +
		"fine.test,noop,true,false,,true\n" +
		"loud.test,silence,false,true,shouting,false\n"
	var imported map[string]int
	a.ok("POST", "/api/v1/blocks/import", csv, &imported)
	assert.Equal(t, 3, imported["imported"])
	_, err := r.Subscriber(ctx, bad.RelayActorID())
	assert.ErrorIs(t, err, relay.ErrNotSubscribed, "the suspended domain's subscription ended")
	_, err = r.Subscriber(ctx, loud.RelayActorID())
	assert.NoError(t, err, "a silenced domain stays subscribed")

	code, export := a.do("GET", "/api/v1/blocks/export", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, csv, string(export), "the export round-trips byte for byte")
	var buf bytes.Buffer
	require.NoError(t, r.ExportBlocks(ctx, &buf))
	assert.Equal(t, csv, buf.String())

	// Silenced: loud.test receives, but what it sends is not relayed.
	fromLoud, err := loud.Post(ctx, r.InboxURL(), "alice", "LOUD")
	require.NoError(t, err)
	fromGood, err := good.Post(ctx, r.InboxURL(), "alice", "quiet")
	require.NoError(t, err)
	waitFor(t, loud, "Create", fromGood.ID)

	// NodeInfo publishes the blocking domains with their public reasons.
	ni := nodeInfoMetadata(t, r)
	assert.Equal(t, []any{"bad.test", "loud.test"}, ni["blocks"])
	assert.Equal(t, map[string]any{"bad.test": "spam, lots of it", "loud.test": "shouting"}, ni["block_reasons"])
	assert.Equal(t, false, ni["approval_required"])

	// A malformed file changes nothing and names its line.
	before, err := st.GetValue(ctx, "relay/blocked-domains")
	require.NoError(t, err)
	for name, file := range map[string]string{
		"line 3: \"not a domain\"":   "new.test\n# comment\nnot a domain\n",
		"line 2: #reject_media":      "#domain,#severity,#reject_media\nnew.test,suspend,maybe\n",
		"line 3:":                    "#domain,#severity\nnew.test,suspend\nother.test,annihilate\n",
		"line 2: \"a@b.test\"":       "ok.test\na@b.test\n",
		"line 1: no #domain column":  "#domain_name,#severity\n",
		"line 2:":                    "#domain,#severity\n\"unterminated,suspend\n",
		"line 1: \"x.test,suspend\"": "x.test,suspend\n",
	} {
		code, body := a.do("POST", "/api/v1/blocks/import", file)
		assert.Equal(t, http.StatusBadRequest, code, name)
		assert.Contains(t, string(body), strings.ReplaceAll(name, `"`, `\"`), "the error names the line")
	}
	after, err := st.GetValue(ctx, "relay/blocked-domains")
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "nothing changed")

	require.NoError(t, r.Close(ctx))
	assert.Zero(t, countFor(good, "Create", fromLoud.ID), "a silenced domain's posts are not relayed")
}

// Plain-text lists hold one domain a line with # comments; blocks made one
// by one keep a public reason and a private note, and the note is neither
// exported nor published.
func TestBlockListPlainTextAndNotes(t *testing.T) {
	blocks, err := relay.ParseBlockList(strings.NewReader("# my list\n\nA.Example.  # shouting\n*.b.example\n"))
	require.NoError(t, err)
	assert.Equal(t, []relay.DomainBlock{
		{Domain: "a.example", Severity: relay.SeveritySuspend},
		{Domain: "b.example", Severity: relay.SeveritySuspend},
	}, blocks)

	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{})
	a := admin(t, r)
	a.ok("PUT", "/api/v1/blocks/c.example", `{"reason": "harassment", "note": "ticket 42"}`, nil)
	a.ok("PUT", "/api/v1/blocks/d.example", ``, nil)
	var list []relay.DomainBlock
	a.ok("GET", "/api/v1/blocks", "", &list)
	assert.Equal(t, []relay.DomainBlock{
		{Domain: "c.example", Severity: relay.SeveritySuspend, Reason: "harassment", Note: "ticket 42"},
		{Domain: "d.example", Severity: relay.SeveritySuspend},
	}, list)
	_, export := a.do("GET", "/api/v1/blocks/export", "")
	assert.NotContains(t, string(export), "ticket 42")
	assert.NotContains(t, fmt.Sprint(nodeInfoMetadata(t, r)), "ticket 42")
	a.ok("DELETE", "/api/v1/blocks/c.example", "", nil)
	domains, err := r.BlockedDomains(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"d.example"}, domains)
}

// NodeInfo says whether approval is required and lists blocks unless
// turned off.
func TestNodeInfoPolicyMetadata(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{FollowPolicy: relay.ManualApproval})
	require.NoError(t, r.BlockDomain(context.Background(), "bad.example"))
	ni := nodeInfoMetadata(t, r)
	assert.Equal(t, true, ni["approval_required"])
	assert.Equal(t, []any{"bad.example"}, ni["blocks"])

	hidden := memRelay(t, &network, "hidden.test", newMemStore(t), relay.Config{HideBlocks: true, HideApprovalRequired: true})
	require.NoError(t, hidden.BlockDomain(context.Background(), "bad.example"))
	ni = nodeInfoMetadata(t, hidden)
	assert.NotContains(t, ni, "blocks")
	assert.NotContains(t, ni, "block_reasons")
	assert.NotContains(t, ni, "approval_required")
}

func nodeInfoMetadata(t *testing.T, r *relay.Relay) map[string]any {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", strings.TrimSuffix(r.ActorID(), "/actor")+"/nodeinfo/2.1", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	var doc struct{ Metadata map[string]any }
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
	return doc.Metadata
}

// Follow-time rules: the allowlist, the software policy from the
// follower's NodeInfo and the actor type refuse with a Reject that carries
// the reason; what they let through goes on to the FollowPolicy.
func TestSubscriptionRules(t *testing.T) {
	var network memnet.Network
	ctx := context.Background()
	rejectedWith := func(i *relaytest.Instance, reason string) {
		t.Helper()
		rc := i.WaitForMatch(t, wait, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
		assert.Contains(t, string(rc.Body), reason)
	}

	t.Run("allowlist", func(t *testing.T) {
		r := memRelay(t, &network, "allow.test", newMemStore(t), relay.Config{Rules: relay.SubscriptionRules{AllowlistOnly: true}})
		a := admin(t, r)
		a.ok("PUT", "/api/v1/allowlist/listed.test", "", nil)
		listed := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "a.listed.test"))
		other := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "other.test"))
		subscribe(t, r, listed)
		_, err := other.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		rejectedWith(other, "allowlist")
		var list struct {
			AllowlistOnly bool `json:"allowlist_only"`
			Domains       []string
		}
		a.ok("GET", "/api/v1/allowlist", "", &list)
		assert.True(t, list.AllowlistOnly)
		assert.Equal(t, []string{"listed.test"}, list.Domains)
		a.ok("DELETE", "/api/v1/allowlist/listed.test", "", nil)
		allowed, err := r.AllowedDomains(ctx)
		require.NoError(t, err)
		assert.Empty(t, allowed)
	})

	t.Run("software", func(t *testing.T) {
		var asked []string
		r := memRelay(t, &network, "sw.test", newMemStore(t), relay.Config{
			Rules: relay.SubscriptionRules{DenySoftware: []string{"Misskey"}},
			FollowPolicy: func(_ context.Context, req relay.FollowRequest) (relay.Decision, string) {
				asked = append(asked, req.Host)
				return relay.DecisionAccept, ""
			},
		})
		mk := relaytest.NewInstance(t, relaytest.Misskey, memOpts(&network, "mk.test"))
		masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "masto-sw.test"))
		subscribe(t, r, masto)
		_, err := mk.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		rejectedWith(mk, "servers running misskey may not subscribe")
		assert.Equal(t, []string{"masto-sw.test"}, asked, "the FollowPolicy decides only what the rules let through")
		s, err := r.Subscriber(ctx, masto.RelayActorID())
		require.NoError(t, err)
		assert.Equal(t, "mastodon", s.Software)

		only := memRelay(t, &network, "only.test", newMemStore(t), relay.Config{
			Rules: relay.SubscriptionRules{AllowSoftware: []string{"gotosocial"}},
		})
		gts := relaytest.NewInstance(t, relaytest.GoToSocial, memOpts(&network, "gts-sw.test"))
		subscribe(t, only, gts)
		_, err = masto.Subscribe(ctx, only.InboxURL(), only.ActorID())
		require.NoError(t, err)
		rejectedWith(masto, "servers running mastodon may not subscribe")
	})

	t.Run("unreadable NodeInfo", func(t *testing.T) {
		r := memRelay(t, &network, "nodeinfo.test", newMemStore(t), relay.Config{
			Rules: relay.SubscriptionRules{AllowSoftware: []string{"mastodon"}},
		})
		masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "broken.test"))
		masto.SetFault(func(req *http.Request) int {
			if strings.Contains(req.URL.Path, "nodeinfo") {
				return http.StatusInternalServerError
			}
			return 0
		})
		_, err := masto.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		rejectedWith(masto, "could not be read")

		deny := memRelay(t, &network, "deny.test", newMemStore(t), relay.Config{
			Rules: relay.SubscriptionRules{DenySoftware: []string{"misskey"}},
		})
		subscribe(t, deny, masto) // passes a deny list
	})

	t.Run("actor type", func(t *testing.T) {
		r := memRelay(t, &network, "types.test", newMemStore(t), relay.Config{
			Rules: relay.SubscriptionRules{ActorTypes: []string{"Group"}},
		})
		masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "type.test"))
		_, err := masto.Subscribe(ctx, r.InboxURL(), r.ActorID())
		require.NoError(t, err)
		rejectedWith(masto, "actors of type")
	})
}

// 10,000 subscribers list through the admin API in one page, or in pages
// that follow each other without gaps or repeats.
func TestAdminAPIListsTenThousand(t *testing.T) {
	r, actors := relayWithSubscribers(t, 10000)
	a := admin(t, r)
	all := a.list("?limit=10000")
	require.Len(t, all.Subscribers, 10000)
	assert.Empty(t, all.Next)
	var paged []string
	next := ""
	for {
		p := a.list("?limit=3000&after=" + next)
		paged = append(paged, actorsOf(p)...)
		if p.Next == "" {
			break
		}
		next = p.Next
	}
	assert.Equal(t, actors, paged)
	odd := a.list("?state=dormant&limit=10000")
	assert.Len(t, odd.Subscribers, 5000)
}

func BenchmarkAdminAPIList10000(b *testing.B) {
	r, _ := relayWithSubscribers(b, 10000)
	h := r.AdminHandler()
	b.ResetTimer()
	for range b.N {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/subscribers?limit=10000", nil))
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
		_, _ = io.Copy(io.Discard, rec.Body)
	}
}

// relayWithSubscribers returns a relay (not started) on a memstore holding
// n subscribers, half accepted and half dormant, and their actor ids in
// order.
func relayWithSubscribers(t testing.TB, n int) (*relay.Relay, []string) {
	st := memstoreFor(t)
	ctx := context.Background()
	var actors []string
	for i := range n {
		id := fmt.Sprintf("https://h%05d.example/actor", i)
		state := store.StateAccepted
		if i%2 == 1 {
			state = store.StateDormant
		}
		_, err := st.UpdateSubscriber(ctx, id, func(s *store.Subscriber, _ bool) error {
			s.Host, s.State, s.Protocol = fmt.Sprintf("h%05d.example", i), state, store.ProtocolMastodon
			s.Inbox, s.Software = id+"/inbox", "mastodon"
			return nil
		})
		require.NoError(t, err)
		actors = append(actors, id)
	}
	r, err := relay.New(relay.Config{BaseURL: "https://relay.test", Store: st, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r, actors
}

// memstoreFor returns an in-memory store closed at the end of the test or
// benchmark.
func memstoreFor(t testing.TB) *memstore.Store {
	st := memstore.New()
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// With manual approval, instance follows of topic actors wait as pending
// in the admin API's list of topic followers; approving one sends the
// Accept, refusing one the Reject; bad input gets 400, an unknown follow
// 404.
func TestAdminAPITopicFollowers(t *testing.T) {
	var network memnet.Network
	r := memRelay(t, &network, "relay.test", newMemStore(t), relay.Config{FollowPolicy: relay.ManualApproval})
	a := admin(t, r)
	ctx := context.Background()
	masto := relaytest.NewInstance(t, relaytest.Mastodon, memOpts(&network, "masto.test"))
	pleroma := relaytest.NewInstance(t, relaytest.Pleroma, memOpts(&network, "pleroma.test"))
	const cats = "https://relay.test/tag/cats"
	_, err := masto.Subscribe(ctx, cats, "")
	require.NoError(t, err)
	_, err = pleroma.Subscribe(ctx, cats, cats)
	require.NoError(t, err)

	var pending []relay.TopicFollower
	a.ok("GET", "/api/v1/topic-followers?state=pending&topic=tag/Cats", "", &pending)
	require.Len(t, pending, 2)
	for _, f := range pending {
		assert.Equal(t, "tag/cats", f.Topic)
		assert.Equal(t, store.StatePending, f.State)
	}
	var none []relay.TopicFollower
	a.ok("GET", "/api/v1/topic-followers?topic=tag/dogs", "", &none)
	assert.Empty(t, none)

	var f relay.TopicFollower
	a.ok("POST", "/api/v1/topic-follower/approve", fmt.Sprintf(`{"topic": "tag/cats", "actor": %q}`, masto.RelayActorID()), &f)
	assert.Equal(t, store.StateAccepted, f.State)
	masto.WaitSubscribed(t, wait)
	a.ok("POST", "/api/v1/topic-follower/refuse", fmt.Sprintf(`{"topic": "tag/cats", "actor": %q}`, pleroma.RelayActorID()), &f)
	assert.Equal(t, store.StateRejected, f.State)
	require.Eventually(t, func() bool { return pleroma.SubscriptionState(cats) == relaytest.StateRejected },
		wait, 10*time.Millisecond, "the refused follower gets a Reject")

	var accepted []relay.TopicFollower
	a.ok("GET", "/api/v1/topic-followers?state=accepted", "", &accepted)
	require.Len(t, accepted, 1)
	assert.Equal(t, masto.RelayActorID(), accepted[0].Actor)

	for _, c := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"GET", "/api/v1/topic-followers?state=bogus", "", 400, "unknown state"},
		{"GET", "/api/v1/topic-followers?topic=cats", "", 400, "unknown topic"},
		{"POST", "/api/v1/topic-follower/approve", `{"topic": "tag/cats"}`, 400, "missing actor"},
		{"POST", "/api/v1/topic-follower/approve", `{"actor": "https://x.test/a"}`, 400, "unknown topic"},
		{"POST", "/api/v1/topic-follower/approve", `{"topic": "colour/red", "actor": "https://x.test/a"}`, 400, "unknown topic"},
		{"POST", "/api/v1/topic-follower/approve", `{"topic": "tag/dogs", "actor": "` + masto.RelayActorID() + `"}`, 404,
			"unknown follow of tag/dogs by " + masto.RelayActorID()},
		{"POST", "/api/v1/topic-follower/explode", `{"topic": "tag/cats", "actor": "https://x.test/a"}`, 404, "unknown topic follower action"},
	} {
		code, body := a.do(c.method, c.path, c.body)
		assert.Equal(t, c.status, code, "%s %s %s: %s", c.method, c.path, c.body, body)
		assert.Contains(t, string(body), c.msg, "%s %s", c.method, c.path)
	}
}
