package relaytest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedirelay/relay/memnet"
)

// miniRelay is a deliberately small relay used only to exercise the fake instances: it accepts
// both subscription styles, sends reciprocal Follows to LitePub subscribers and forwards
// activities (verbatim to Mastodon-style subscribers, as an Announce to LitePub ones). It does
// not verify anything.
type miniRelay struct {
	t      testing.TB
	base   string
	host   string
	key    *rsa.PrivateKey
	client *http.Client

	// embedAccept controls whether Accepts embed the Follow (default) or carry its id only.
	embedAccept bool
	mu          sync.Mutex
	// mutate, if set, rewrites forwarded bodies (to test LD-signature checks).
	mutate   func([]byte) []byte
	subs     map[string]*miniSub // by actor id
	received []map[string]any
	// closed is set by close: later requests are refused, so that no wg.Add runs concurrently
	// with close's wg.Wait.
	closed bool
	wg     sync.WaitGroup
}

type miniSub struct {
	actor, inbox string
	litepub      bool
}

func newMiniRelay(t testing.TB, network *memnet.Network, host string) *miniRelay {
	r := &miniRelay{t: t, key: nextKey(), embedAccept: true, subs: map[string]*miniSub{}}
	if network != nil {
		r.host, r.base = host, "https://"+host
		r.client = network.Client()
		network.Handle(host, r)
		t.Cleanup(func() { network.Remove(host); r.close() })
	} else {
		srv := httptest.NewServer(r)
		u, _ := url.Parse(srv.URL)
		r.host, r.base = u.Host, srv.URL
		r.client = &http.Client{Timeout: 10 * time.Second}
		t.Cleanup(func() { srv.Close(); r.close() })
	}
	return r
}

// close refuses further requests and waits until the ones accepted are handled. A request can
// still arrive after the host left the network: memnet runs a handler in a goroutine of its own
// and does not wait for it once the client gave up (e.g. an instance's background delivery
// cancelled by the instance's Close), so removing the host does not stop such a late request.
func (r *miniRelay) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *miniRelay) actorID() string { return r.base + "/actor" }
func (r *miniRelay) inbox() string   { return r.base + "/inbox" }

func (r *miniRelay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodGet && req.URL.Path == "/actor":
		b, _ := json.Marshal(map[string]any{
			"@context": []any{asContext, securityContext}, "id": r.actorID(), "type": "Application",
			"preferredUsername": "relay", "inbox": r.inbox(), "endpoints": map[string]any{"sharedInbox": r.inbox()},
			"followers": r.actorID() + "/followers", "following": r.actorID() + "/following", "outbox": r.actorID() + "/outbox",
			"publicKey": map[string]any{"id": r.actorID() + "#main-key", "owner": r.actorID(), "publicKeyPem": publicKeyPEM(&r.key.PublicKey)},
		})
		w.Header().Set("Content-Type", "application/activity+json")
		_, _ = w.Write(b)
	case req.Method == http.MethodPost && req.URL.Path == "/inbox":
		body, _ := io.ReadAll(req.Body)
		var act map[string]any
		if err := json.Unmarshal(body, &act); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			http.Error(w, "relay closed", http.StatusServiceUnavailable)
			return
		}
		r.received = append(r.received, act)
		r.wg.Add(1) // under r.mu, so never after close started waiting
		r.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		go func() {
			defer r.wg.Done()
			r.handle(act, body)
		}()
	default:
		http.NotFound(w, req)
	}
}

func (r *miniRelay) setMutate(f func([]byte) []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mutate = f
}

func (r *miniRelay) receivedTypes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.received {
		out = append(out, typeOf(a))
	}
	return out
}

func (r *miniRelay) handle(act map[string]any, body []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	actor := idOf(act["actor"])
	switch typeOf(act) {
	case "Follow":
		if idOf(act["object"]) != publicIRI && idOf(act["object"]) != r.actorID() {
			return // e.g. an unexpected follow
		}
		doc, err := r.fetch(ctx, actor)
		if err != nil {
			r.t.Logf("minirelay: fetching %s: %v", actor, err)
			return
		}
		inbox, _ := doc["inbox"].(string)
		if ep, ok := doc["endpoints"].(map[string]any); ok {
			if s, _ := ep["sharedInbox"].(string); s != "" {
				inbox = s
			}
		}
		litepub := idOf(act["object"]) == r.actorID()
		r.mu.Lock()
		r.subs[actor] = &miniSub{actor: actor, inbox: inbox, litepub: litepub}
		r.mu.Unlock()
		var object any = act["id"]
		if r.embedAccept {
			embedded := map[string]any{}
			for k, v := range act {
				embedded[k] = v
			}
			delete(embedded, "@context")
			object = embedded
		}
		r.send(ctx, inbox, map[string]any{
			"@context": asContext, "id": r.base + "/activities/" + newUUID(), "type": "Accept",
			"actor": r.actorID(), "to": []any{actor}, "object": object,
		})
		if litepub {
			r.send(ctx, inbox, map[string]any{
				"@context": asContext, "id": r.base + "/activities/" + newUUID(), "type": "Follow",
				"actor": r.actorID(), "object": actor, "to": []any{actor},
			})
		}
	case "Undo":
		r.mu.Lock()
		delete(r.subs, actor)
		r.mu.Unlock()
	case "Create", "Update", "Delete", "Announce":
		r.mu.Lock()
		var targets []*miniSub
		for _, s := range r.subs {
			if hostOf(s.actor) != hostOf(actor) {
				targets = append(targets, s)
			}
		}
		mutate := r.mutate
		r.mu.Unlock()
		_, ldSigned := act["signature"]
		for _, s := range targets {
			if s.litepub || !ldSigned {
				switch typeOf(act) {
				case "Create", "Announce":
					r.send(ctx, s.inbox, map[string]any{
						"@context": asContext, "id": r.base + "/activities/" + newUUID(), "type": "Announce",
						"actor": r.actorID(), "object": idOf(act["object"]), "published": nowISO(),
						"to": []any{r.actorID() + "/followers"}, "cc": []any{publicIRI},
					})
				default:
					r.post(ctx, s.inbox, body)
				}
				continue
			}
			b := body
			if mutate != nil {
				b = mutate(body)
			}
			r.post(ctx, s.inbox, b)
		}
	}
}

func (r *miniRelay) fetch(ctx context.Context, target string) (map[string]any, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	req.Header.Set("Accept", contentTypeAP)
	if err := signRequest(req, nil, signSpec{keyID: r.actorID() + "#main-key", key: r.key, algorithm: "rsa-sha256", headers: []string{"(request-target)", "host", "date"}}); err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &HTTPError{Method: "GET", URL: target, StatusCode: resp.StatusCode}
	}
	var doc map[string]any
	return doc, json.NewDecoder(resp.Body).Decode(&doc)
}

func (r *miniRelay) send(ctx context.Context, inbox string, doc map[string]any) {
	b, _ := json.Marshal(doc)
	r.post(ctx, inbox, b)
}

func (r *miniRelay) post(ctx context.Context, inbox string, body []byte) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, inbox, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentTypeAP)
	err := signRequest(req, body, signSpec{
		keyID: r.actorID() + "#main-key", key: r.key, algorithm: "rsa-sha256",
		headers: []string{"(request-target)", "host", "date", "digest", "content-type"},
	})
	if err != nil {
		r.t.Errorf("minirelay: signing: %v", err)
		return
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() == nil && !strings.Contains(err.Error(), "closed") {
			r.t.Logf("minirelay: POST %s: %v", inbox, err)
		}
		return
	}
	resp.Body.Close()
}
