package relaytest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/memnet"
)

const waitTimeout = 10 * time.Second

var allFlavors = []Flavor{Mastodon, Misskey, Pleroma, GoToSocial, Friendica}

// mode is a way of running instances: on loopback servers or on a memnet network.
type mode struct {
	name string
	net  *memnet.Network
}

func modes() []mode {
	return []mode{{name: "loopback"}, {name: "memnet", net: &memnet.Network{}}}
}

func newInst(t *testing.T, m mode, f Flavor, host string) *Instance {
	t.Helper()
	opts := Options{}
	if m.net != nil {
		opts.Network, opts.Host = m.net, host
	}
	return NewInstance(t, f, opts)
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return b
}

// createBody is a public Create by actor on a's host.
func createBody(a *Instance, user, text string) []byte {
	actor := a.ActorID(user)
	b, _ := json.Marshal(map[string]any{
		"@context": asContext, "id": a.URL() + "/activities/" + newUUID(), "type": "Create", "actor": actor,
		"to":     []any{publicIRI},
		"object": map[string]any{"id": actor + "/statuses/" + newUUID(), "type": "Note", "attributedTo": actor, "content": text, "to": []any{publicIRI}},
	})
	return b
}

func TestSendVerifiesBetweenInstances(t *testing.T) {
	ctx := context.Background()
	for _, m := range modes() {
		for _, f := range allFlavors {
			t.Run(m.name+"/"+f.String(), func(t *testing.T) {
				a := newInst(t, m, Mastodon, "sender-"+strings.ToLower(f.String())+".test")
				b := newInst(t, m, f, strings.ToLower(f.String())+".test")

				resp, err := a.Send(ctx, b.Inbox(), "alice", createBody(a, "alice", "hi"))
				require.NoError(t, err)
				body := readAll(t, resp)
				require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)

				rs := b.Received()
				require.Len(t, rs, 1)
				assert.Equal(t, "Create", rs[0].Type)
				assert.Equal(t, a.ActorID("alice")+"#main-key", rs[0].KeyID)
				assert.Equal(t, a.ActorID("alice"), rs[0].Signer)
				assert.False(t, rs[0].Dropped, rs[0].Reason)
				assert.Empty(t, b.Rejected())

				// Every kind of bad request is refused and recorded.
				stale := b.skew() + 10*time.Minute
				cases := []struct {
					name   string
					opts   []SendOption
					status int
				}{
					{"tampered body", []SendOption{WithTamperedBody(createBody(a, "alice", "evil"))}, http.StatusUnauthorized},
					{"stale date", []SendOption{WithDate(time.Now().Add(-stale))}, http.StatusUnauthorized},
					{"future date", []SendOption{WithDate(time.Now().Add(stale))}, http.StatusUnauthorized},
					{"unsigned", []SendOption{WithoutSignature()}, http.StatusUnauthorized},
					{"digest not signed", []SendOption{WithSignedHeaders("(request-target)", "host", "date")}, http.StatusUnauthorized},
					{"host not signed", []SendOption{WithSignedHeaders("(request-target)", "date", "digest")}, http.StatusUnauthorized},
					{"wrong digest", []SendOption{WithDigest(digestHeader([]byte("other")))}, http.StatusUnauthorized},
					{"unsupported algorithm", []SendOption{WithAlgorithm("rsa-sha512")}, http.StatusUnauthorized},
					{"foreign keyId", []SendOption{WithKeyID(a.ActorID("bob") + "#main-key")}, http.StatusUnauthorized},
					{"unreachable keyId", []SendOption{WithKeyID("http://127.0.0.1:1/actor#main-key")}, http.StatusUnauthorized},
				}
				for _, c := range cases {
					resp, err := a.Send(ctx, b.Inbox(), "alice", createBody(a, "alice", c.name), c.opts...)
					require.NoError(t, err)
					body := readAll(t, resp)
					assert.Equal(t, c.status, resp.StatusCode, "%s: %s", c.name, body)
				}
				wantCT := http.StatusUnsupportedMediaType
				if f == GoToSocial {
					wantCT = http.StatusNotAcceptable
				}
				resp, err = a.Send(ctx, b.Inbox(), "alice", createBody(a, "alice", "ct"), WithContentType("application/json"))
				require.NoError(t, err)
				readAll(t, resp)
				assert.Equal(t, wantCT, resp.StatusCode)

				assert.Len(t, b.Received(), 1, "nothing bad was accepted")
				rej := b.Rejected()
				assert.Len(t, rej, len(cases)+1)
				for _, r := range rej {
					assert.NotEmpty(t, r.Reason)
				}

				// Accepted variants: no algorithm parameter, hs2019, extra signed headers in
				// another order, a query string on the inbox URL.
				for _, opts := range [][]SendOption{
					{WithAlgorithm("")},
					{WithAlgorithm("hs2019")},
					{WithSignedHeaders("date", "content-length", "digest", "host", "(request-target)", "content-type")},
				} {
					resp, err := a.Send(ctx, b.Inbox()+"?x=1", "alice", createBody(a, "alice", "ok"), opts...)
					require.NoError(t, err)
					body := readAll(t, resp)
					assert.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
				}
			})
		}
	}
}

func TestSignatureWithoutQuery(t *testing.T) {
	// A signature whose (request-target) omits the query string is accepted too (GoToSocial and
	// Mastodon retry without it).
	net := &memnet.Network{}
	a := NewInstance(t, Mastodon, Options{Network: net, Host: "a.test"})
	for _, f := range allFlavors {
		b := NewInstance(t, f, Options{Network: net})
		body := createBody(a, "alice", "q")
		req, err := http.NewRequest(http.MethodPost, b.Inbox(), bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentTypeAP)
		alice, err := a.actorFor("alice")
		require.NoError(t, err)
		require.NoError(t, signRequest(req, body, signSpec{
			keyID: a.keyID(alice), key: a.keyOf(alice), algorithm: "rsa-sha256",
			headers: []string{"(request-target)", "host", "date", "digest"},
		}))
		req.URL.RawQuery = "page=2"
		resp, err := net.Client().Do(req)
		require.NoError(t, err)
		b2 := readAll(t, resp)
		assert.Equal(t, http.StatusAccepted, resp.StatusCode, "%s: %s", f, b2)
	}
}

func TestMisskeyChecks(t *testing.T) {
	ctx := context.Background()
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			a := newInst(t, m, Mastodon, "a.test")
			mk := newInst(t, m, Misskey, "misskey.test")
			ma := newInst(t, m, Mastodon, "mastodon.test")

			// 64 KiB body limit.
			big := bytes.Repeat([]byte("x"), 65<<10)
			body, _ := json.Marshal(map[string]any{"@context": asContext, "id": a.URL() + "/x", "type": "Create", "actor": a.ActorID("alice"), "content": string(big)})
			resp, err := a.Send(ctx, mk.Inbox(), "alice", body)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
			// Mastodon takes it.
			resp, err = a.Send(ctx, ma.Inbox(), "alice", body)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusAccepted, resp.StatusCode)

			// ±300 s on Misskey, ±1 h on Mastodon.
			sixMin := WithDate(time.Now().Add(-6 * time.Minute))
			resp, err = a.Send(ctx, mk.Inbox(), "alice", createBody(a, "alice", "x"), sixMin)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			resp, err = a.Send(ctx, ma.Inbox(), "alice", createBody(a, "alice", "x"), sixMin)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusAccepted, resp.StatusCode)

			// The signed host must be Misskey's host.
			if m.net != nil {
				m.net.Handle("alias.test", mk)
				resp, err = a.Send(ctx, "https://alias.test/inbox", "alice", createBody(a, "alice", "x"))
				require.NoError(t, err)
				readAll(t, resp)
				assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
				assert.Contains(t, mk.Rejected()[len(mk.Rejected())-1].Reason, "signed host")
			}

			// The activity id must be on the signer's host.
			foreign, _ := json.Marshal(map[string]any{"@context": asContext, "id": "https://elsewhere.example/1", "type": "Create", "actor": a.ActorID("alice")})
			resp, err = a.Send(ctx, mk.Inbox(), "alice", foreign)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusAccepted, resp.StatusCode)
			rs := mk.Received()
			require.NotEmpty(t, rs)
			assert.True(t, rs[len(rs)-1].Dropped)
			assert.Contains(t, rs[len(rs)-1].Reason, "not on the host")
		})
	}
}

func TestGoToSocialFetchRules(t *testing.T) {
	ctx := context.Background()
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			gts := newInst(t, m, GoToSocial, "gts.test")
			ma := newInst(t, m, Mastodon, "mastodon.test")
			actor := gts.ActorID("alice")
			require.Equal(t, gts.URL()+"/users/alice", actor)

			resp, err := ma.Get(ctx, actor, "", WithoutSignature())
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "unsigned actor GET")

			resp, err = ma.Get(ctx, actor, "")
			require.NoError(t, err)
			b := readAll(t, resp)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
			var doc map[string]any
			require.NoError(t, json.Unmarshal(b, &doc))
			assert.Equal(t, actor, doc["id"])
			assert.Equal(t, actor+"/inbox", doc["inbox"])
			assert.NotContains(t, doc, "endpoints")
			pk := doc["publicKey"].(map[string]any)
			assert.Equal(t, actor+"/main-key", pk["id"])

			// The key stub needs no signature.
			resp, err = ma.Get(ctx, actor+"/main-key", "", WithoutSignature())
			require.NoError(t, err)
			b = readAll(t, resp)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			doc = nil
			require.NoError(t, json.Unmarshal(b, &doc))
			assert.Equal(t, actor, doc["id"])
			assert.NotContains(t, doc, "inbox")
			assert.Equal(t, actor+"/main-key", doc["publicKey"].(map[string]any)["id"])
			assert.Equal(t, actor, doc["publicKey"].(map[string]any)["owner"])

			// Posts come from the author but are signed with the instance key.
			relayInbox := ma.Inbox()
			note, err := gts.Post(ctx, relayInbox, "alice", "hello <world>")
			require.NoError(t, err)
			r := ma.Received()[0]
			assert.Equal(t, actor, r.Actor)
			assert.Equal(t, gts.RelayActorID()+"/main-key", r.KeyID)
			assert.Equal(t, gts.RelayActorID(), r.Signer)
			assert.Contains(t, r.Header.Get("Signature"), `algorithm="hs2019"`)
			assert.Contains(t, r.Header.Get("Signature"), `headers="(request-target) host date digest"`)
			assert.False(t, r.LDSigned)
			// Mastodon (HTTP signer != actor, no LD signature) drops it.
			assert.True(t, r.Dropped)
			var act map[string]any
			require.NoError(t, json.Unmarshal(r.Body, &act))
			assert.Equal(t, publicIRI, act["to"], "go-fed style single-valued to")

			// The status needs a signed GET.
			resp, err = ma.Get(ctx, note.ID, "", WithoutSignature())
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			resp, err = ma.Get(ctx, note.ID, "")
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusOK, resp.StatusCode)

			// An Announce without to/cc is refused with 400.
			ann, _ := json.Marshal(map[string]any{"@context": asContext, "id": ma.URL() + "/a/1", "type": "Announce", "actor": ma.ActorID("bob"), "object": note.ID})
			resp, err = ma.Send(ctx, gts.Inbox(), "bob", ann)
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

			// No shared inbox.
			resp, err = ma.Send(ctx, gts.URL()+"/inbox", "bob", createBody(ma, "bob", "x"))
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusNotFound, resp.StatusCode)

			// ld+json with the AS profile is accepted.
			resp, err = ma.Send(ctx, gts.Inbox(), "bob", createBody(ma, "bob", "x"), WithContentType(`application/ld+json; profile="https://www.w3.org/ns/activitystreams"`))
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, http.StatusAccepted, resp.StatusCode)
		})
	}
}

func TestDocumentsAndWebFinger(t *testing.T) {
	ctx := context.Background()
	for _, m := range modes() {
		for _, f := range allFlavors {
			t.Run(m.name+"/"+f.String(), func(t *testing.T) {
				inst := newInst(t, m, f, strings.ToLower(f.String())+".test")
				client := newInst(t, m, GoToSocial, "client.test") // signs its GETs

				for _, user := range []string{"", "alice"} {
					actorID := inst.ActorID(user)
					resp, err := client.Get(ctx, actorID, "")
					require.NoError(t, err)
					b := readAll(t, resp)
					require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
					assert.True(t, isAPContentType(resp.Header.Get("Content-Type")))
					var doc map[string]any
					require.NoError(t, json.Unmarshal(b, &doc))
					assert.Equal(t, []any{asContext, securityContext}, doc["@context"])
					assert.Equal(t, actorID, doc["id"])
					pk := doc["publicKey"].(map[string]any)
					assert.Equal(t, actorID, pk["owner"])
					assert.Contains(t, pk["publicKeyPem"], "-----BEGIN PUBLIC KEY-----")
					_, err = parsePublicKeyPEM(pk["publicKeyPem"].(string))
					assert.NoError(t, err)
					if f == GoToSocial {
						assert.NotContains(t, doc, "endpoints")
					} else {
						assert.Equal(t, inst.URL()+"/inbox", doc["endpoints"].(map[string]any)["sharedInbox"])
					}
					if user == "" {
						assert.Equal(t, "Application", doc["type"])
					} else {
						assert.Equal(t, "Person", doc["type"])
					}

					// WebFinger.
					username := doc["preferredUsername"].(string)
					wf := inst.URL() + "/.well-known/webfinger?resource=" + url.QueryEscape("acct:"+username+"@"+inst.Host())
					resp, err = client.Get(ctx, wf, "", WithoutSignature())
					require.NoError(t, err)
					b = readAll(t, resp)
					require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
					assert.Contains(t, resp.Header.Get("Content-Type"), "application/jrd+json")
					var jrd struct {
						Subject string
						Links   []struct{ Rel, Type, Href string }
					}
					require.NoError(t, json.Unmarshal(b, &jrd))
					assert.Equal(t, "acct:"+username+"@"+inst.Host(), jrd.Subject)
					require.NotEmpty(t, jrd.Links)
					assert.Equal(t, "self", jrd.Links[0].Rel)
					assert.Equal(t, "application/activity+json", jrd.Links[0].Type)
					assert.Equal(t, actorID, jrd.Links[0].Href)
				}
				switch f {
				case Mastodon:
					assert.Equal(t, inst.URL()+"/actor", inst.RelayActorID())
				case Pleroma:
					assert.Equal(t, inst.URL()+"/relay", inst.RelayActorID())
				case GoToSocial:
					assert.Equal(t, inst.URL()+"/users/"+inst.hostname(), inst.RelayActorID())
				case Misskey:
					assert.True(t, strings.HasPrefix(inst.RelayActorID(), inst.URL()+"/users/"))
				}
				resp, err := client.Get(ctx, inst.URL()+"/.well-known/webfinger?resource=acct:nobody@elsewhere.test", "", WithoutSignature())
				require.NoError(t, err)
				readAll(t, resp)
				assert.Equal(t, http.StatusNotFound, resp.StatusCode)
			})
		}
	}
}

func TestLoopbackAddresses(t *testing.T) {
	a := NewInstance(t, Mastodon, Options{})
	b := NewInstance(t, Mastodon, Options{})
	assert.True(t, strings.HasPrefix(a.URL(), "http://127."), a.URL())
	assert.NotEqual(t, a.Host(), b.Host())
	ua, _ := url.Parse(a.URL())
	ub, _ := url.Parse(b.URL())
	if ua.Hostname() != "127.0.0.1" && ub.Hostname() != "127.0.0.1" {
		assert.NotEqual(t, ua.Hostname(), ub.Hostname(), "distinct loopback addresses")
	}
}

// subscribeAll subscribes every instance to the relay and waits as far as each flavor gets.
func subscribeAll(t *testing.T, r *miniRelay, insts ...*Instance) {
	ctx := context.Background()
	for _, in := range insts {
		_, err := in.Subscribe(ctx, r.inbox(), r.actorID())
		require.NoError(t, err, in.Flavor().String())
	}
	for _, in := range insts {
		in.WaitSubscribed(t, waitTimeout)
	}
}

func TestSubscriptionFlows(t *testing.T) {
	ctx := context.Background()
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			relay := newMiniRelay(t, m.net, "relay.test")
			ma := newInst(t, m, Mastodon, "mastodon.test")
			mk := newInst(t, m, Misskey, "misskey.test")
			pl := newInst(t, m, Pleroma, "pleroma.test")
			gts := newInst(t, m, GoToSocial, "gts.test")
			subscribeAll(t, relay, ma, mk, pl, gts)
			for _, in := range []*Instance{ma, mk, pl, gts} {
				assert.Equal(t, StateAccepted, in.SubscriptionState(relay.inbox()), in.Flavor().String())
			}

			// Pleroma accepts the relay's follow-back with an Accept embedding it.
			pl.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Follow" && r.Actor == relay.actorID() })
			assert.Equal(t, []string{relay.actorID()}, pl.Followers())
			require.Eventually(t, func() bool {
				for _, ty := range relay.receivedTypes() {
					if ty == "Accept" {
						return true
					}
				}
				return false
			}, waitTimeout, 5*time.Millisecond)
			relay.mu.Lock()
			var accept map[string]any
			for _, a := range relay.received {
				if typeOf(a) == "Accept" {
					accept = a
				}
			}
			relay.mu.Unlock()
			assert.Equal(t, pl.RelayActorID(), accept["actor"])
			assert.Equal(t, "Follow", accept["object"].(map[string]any)["type"])
			assert.Equal(t, pl.RelayActorID(), accept["object"].(map[string]any)["object"])

			// GoToSocial never accepts it.
			r := gts.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Follow" })
			assert.True(t, r.Dropped)
			assert.Empty(t, gts.Followers())

			// The Follow shapes.
			relay.mu.Lock()
			follows := map[string]map[string]any{}
			for _, a := range relay.received {
				if typeOf(a) == "Follow" {
					follows[idOf(a["actor"])] = a
				}
			}
			relay.mu.Unlock()
			assert.Equal(t, publicIRI, follows[ma.RelayActorID()]["object"])
			assert.Equal(t, publicIRI, follows[mk.RelayActorID()]["object"])
			assert.Contains(t, follows[mk.RelayActorID()]["id"], "/activities/follow-relay/")
			assert.Equal(t, relay.actorID(), follows[pl.RelayActorID()]["object"])
			assert.Equal(t, "pending", follows[pl.RelayActorID()]["state"])
			assert.Equal(t, relay.actorID(), follows[gts.RelayActorID()]["object"])

			// Unsubscribe: an Undo embedding the Follow, except for GoToSocial.
			n := len(relay.receivedTypes())
			require.NoError(t, ma.Unsubscribe(ctx, relay.inbox()))
			require.NoError(t, gts.Unsubscribe(ctx, relay.inbox()))
			assert.Equal(t, StateNone, ma.SubscriptionState(relay.inbox()))
			assert.False(t, gts.Subscribed())
			types := relay.receivedTypes()
			require.Len(t, types, n+1)
			relay.mu.Lock()
			undo := relay.received[n]
			relay.mu.Unlock()
			assert.Equal(t, "Undo", typeOf(undo))
			emb := undo["object"].(map[string]any)
			assert.Equal(t, follows[ma.RelayActorID()]["id"], emb["id"])
			assert.NotContains(t, emb, "@context")
		})
	}
}

func TestMisskeyNeedsEmbeddedFollow(t *testing.T) {
	net := &memnet.Network{}
	relay := newMiniRelay(t, net, "relay.test")
	relay.embedAccept = false
	mk := NewInstance(t, Misskey, Options{Network: net, Host: "misskey.test"})
	ma := NewInstance(t, Mastodon, Options{Network: net, Host: "mastodon.test"})
	pl := NewInstance(t, Pleroma, Options{Network: net, Host: "pleroma.test"})
	ctx := context.Background()
	for _, in := range []*Instance{mk, ma, pl} {
		_, err := in.Subscribe(ctx, relay.inbox(), relay.actorID())
		require.NoError(t, err)
	}
	ma.WaitSubscribed(t, waitTimeout)
	pl.WaitSubscribed(t, waitTimeout)
	r := mk.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Accept" })
	assert.True(t, r.Dropped)
	assert.Contains(t, r.Reason, "must be embedded")
	assert.False(t, mk.Subscribed())
	assert.Equal(t, StatePending, mk.SubscriptionState(relay.inbox()))
}

func TestRelayedTraffic(t *testing.T) {
	ctx := context.Background()
	net := &memnet.Network{}
	relay := newMiniRelay(t, net, "relay.test")
	ma := NewInstance(t, Mastodon, Options{Network: net, Host: "mastodon.test"})
	ma2 := NewInstance(t, Mastodon, Options{Network: net, Host: "mastodon2.test"})
	mk := NewInstance(t, Misskey, Options{Network: net, Host: "misskey.test"})
	pl := NewInstance(t, Pleroma, Options{Network: net, Host: "pleroma.test"})
	gts := NewInstance(t, GoToSocial, Options{Network: net, Host: "gts.test"})
	subscribeAll(t, relay, ma, ma2, mk, pl, gts)

	note, err := ma.Post(ctx, relay.inbox(), "alice", "hello fediverse")
	require.NoError(t, err)
	assert.Equal(t, "https://mastodon.test/users/alice", note.Author)
	assert.Equal(t, note.ID+"/activity", note.ActivityID)

	// Mastodon-style receivers get the LD-signed Create verbatim and accept it.
	for _, in := range []*Instance{ma2, mk} {
		r := in.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ID == note.ActivityID })
		assert.Equal(t, relay.actorID(), r.Signer)
		assert.True(t, r.LDSigned)
		assert.True(t, r.LDVerified, r.Reason)
		assert.False(t, r.Dropped, r.Reason)
	}
	// LitePub receivers get an Announce and fetch the note from Mastodon.
	for _, in := range []*Instance{pl, gts} {
		r := in.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ObjectID == note.ID && r.FetchDone })
		assert.Equal(t, "Announce", r.Type)
		assert.True(t, r.FetchOK(), "%s: %s %d %s", in.Flavor(), r.Reason, r.FetchStatus, r.FetchErr)
		assert.Contains(t, string(r.FetchBody), "hello fediverse")
	}

	// An edit; a relay that alters the body breaks the LD signature.
	relay.setMutate(func(b []byte) []byte { return bytes.Replace(b, []byte("edited"), []byte("EVIL"), 1) })
	require.NoError(t, ma.Edit(ctx, relay.inbox(), note, "edited"))
	r := ma2.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Update" })
	assert.True(t, r.Dropped)
	assert.False(t, r.LDVerified)
	relay.setMutate(nil)

	// Delete: 410 afterwards, relayed Delete accepted by LD signature.
	require.NoError(t, ma.Delete(ctx, relay.inbox(), note))
	r = ma2.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Delete" })
	assert.False(t, r.Dropped, r.Reason)
	assert.Equal(t, note.ID+"#delete", r.ID)
	assert.Equal(t, "Tombstone", r.ObjectType)
	resp, err := ma2.Get(ctx, note.ID, "")
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, http.StatusGone, resp.StatusCode)
	// GoToSocial ignores relayed Deletes; Pleroma refuses relayed non-Creates with 400.
	r = gts.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.Type == "Delete" })
	assert.True(t, r.Dropped)
	require.Eventually(t, func() bool {
		for _, rj := range pl.Rejected() {
			if rj.Status == http.StatusBadRequest && strings.Contains(string(rj.Body), `"Delete"`) {
				return true
			}
		}
		return false
	}, waitTimeout, 5*time.Millisecond)

	// A Pleroma post reaches the relay as an Announce by /relay, signing content-length.
	pnote, err := pl.Post(ctx, relay.inbox(), "carol", "from pleroma")
	require.NoError(t, err)
	r = ma.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ObjectID == pnote.ID })
	// Mastodon receives the relay's Announce (the relay actor's inbox is the subscribed inbox).
	assert.Equal(t, "Announce", r.Type)
	assert.Equal(t, relay.actorID(), r.Actor)
	r = ma.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ObjectID == pnote.ID && r.FetchDone })
	assert.True(t, r.FetchOK(), r.FetchErr)
	relay.mu.Lock()
	var plAnnounce map[string]any
	for _, a := range relay.received {
		if typeOf(a) == "Announce" && idOf(a["object"]) == pnote.ID {
			plAnnounce = a
		}
	}
	relay.mu.Unlock()
	require.NotNil(t, plAnnounce)
	assert.Equal(t, pl.RelayActorID(), plAnnounce["actor"])
	assert.Equal(t, []any{pl.RelayActorID() + "/followers"}, plAnnounce["to"])

	// A Mastodon boost.
	boostID, err := ma.Boost(ctx, relay.inbox(), "alice", pnote.ID)
	require.NoError(t, err)
	r = ma2.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ID == boostID && r.FetchDone })
	assert.True(t, r.FetchOK(), "%s %s", r.Reason, r.FetchErr)
	_, err = pl.Boost(ctx, relay.inbox(), "carol", note.ID)
	assert.ErrorIs(t, err, ErrUnsupported)

	// Mastodon drops an Announce from an actor that is not an accepted relay.
	other := NewInstance(t, Mastodon, Options{Network: net, Host: "other.test"})
	ann, _ := json.Marshal(map[string]any{
		"@context": asContext, "id": other.URL() + "/a/1", "type": "Announce", "actor": other.RelayActorID(),
		"object": pnote.ID, "to": []any{publicIRI},
	})
	resp, err = other.Send(ctx, ma.Inbox(), "", ann)
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, http.StatusAccepted, resp.StatusCode)
	r = ma.WaitForMatch(t, waitTimeout, func(r Received) bool { return r.ID == other.URL()+"/a/1" })
	assert.True(t, r.Dropped)
	assert.Contains(t, r.Reason, "neither followed nor an accepted relay")
}

func TestKeyRotationAndFaults(t *testing.T) {
	ctx := context.Background()
	net := &memnet.Network{}
	a := NewInstance(t, Pleroma, Options{Network: net, Host: "a.test"})
	b := NewInstance(t, Mastodon, Options{Network: net, Host: "b.test"})
	send := func() int {
		resp, err := a.Send(ctx, b.Inbox(), "dave", createBody(a, "dave", "x"))
		require.NoError(t, err)
		readAll(t, resp)
		return resp.StatusCode
	}
	require.Equal(t, http.StatusAccepted, send())
	require.NoError(t, a.RotateKey("dave"))
	assert.Equal(t, http.StatusAccepted, send(), "the cached key is refreshed once")

	b.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodPost {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	assert.Equal(t, http.StatusServiceUnavailable, send())
	b.SetFault(nil)
	assert.Equal(t, http.StatusAccepted, send())

	// Mastodon accepts (and drops) a Delete of an actor whose key fetch answers 410.
	a.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodGet {
			return http.StatusGone
		}
		return 0
	})
	del, _ := json.Marshal(map[string]any{"@context": asContext, "id": a.ActorID("erin") + "#delete", "type": "Delete", "actor": a.ActorID("erin"), "object": a.ActorID("erin")})
	resp, err := a.Send(ctx, b.Inbox(), "erin", del)
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, http.StatusAccepted, resp.StatusCode)

	b.Close()
	_, err = a.Send(ctx, b.Inbox(), "dave", createBody(a, "dave", "x"))
	assert.Error(t, err, "a closed instance is unreachable")
}

func TestSignatureHeaderParsing(t *testing.T) {
	sp, err := parseSignature(`Signature keyId="https://a.test/actor#main-key", algorithm="hs2019",created=1700000000, headers="(request-target) (created) Host",signature="AAAA"`)
	require.NoError(t, err)
	assert.Equal(t, "https://a.test/actor#main-key", sp.keyID)
	assert.Equal(t, "hs2019", sp.algorithm)
	assert.Equal(t, []string{"(request-target)", "(created)", "host"}, sp.headers)
	assert.True(t, sp.hasCreated)
	assert.Equal(t, int64(1700000000), sp.created)

	_, err = parseSignature(`keyId="x",signature="not base64!"`)
	assert.Error(t, err)
	_, err = parseSignature(`algorithm="rsa-sha256",signature="AAAA"`)
	assert.Error(t, err)

	assert.NoError(t, checkDigest("sha-256="+strings.TrimPrefix(digestHeader([]byte("x")), "SHA-256="), []byte("x")))
	assert.Error(t, checkDigest("SHA-512=abc", []byte("x")))
	assert.Error(t, checkDigest(digestHeader([]byte("y")), []byte("x")))
}

func TestLDSignature(t *testing.T) {
	key := nextKey()
	doc := map[string]any{"@context": asContext, "id": "https://a.test/1", "type": "Create", "n": 1.5}
	require.NoError(t, ldSign(doc, key, "https://a.test/users/a#main-key", time.Now(), "abc"))
	raw, err := canonicalJSON(doc)
	require.NoError(t, err)
	lookup := func(string) (*rsa.PublicKey, string, error) { return &key.PublicKey, "https://a.test/users/a", nil }
	parsed, err := parseJSONObject(raw)
	require.NoError(t, err)
	owner, err := ldVerify(parsed, lookup)
	require.NoError(t, err)
	assert.Equal(t, "https://a.test/users/a", owner)

	parsed["type"] = "Update"
	_, err = ldVerify(parsed, lookup)
	assert.Error(t, err)
}
