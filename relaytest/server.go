package relaytest

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The HTTP side of an Instance: routing, actor/key/object documents, WebFinger and NodeInfo.

// ServeHTTP implements http.Handler: it is the handler NewInstance serves on loopback or
// registers on the memnet network.
func (i *Instance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		http.Error(w, "instance closed", http.StatusServiceUnavailable)
		return
	}
	i.wg.Add(1)
	fault := i.fault
	i.mu.Unlock()
	defer i.wg.Done()

	// Work done for this request stops when the client goes away or the instance closes.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(i.ctx, cancel)
	defer stop()
	r = r.WithContext(ctx)

	if fault != nil {
		if code := fault(r); code != 0 {
			body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			i.refuse(w, r, body, code, "injected fault", "")
			return
		}
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		i.serveGet(w, r)
	case http.MethodPost:
		i.servePost(w, r)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// refuse answers status and records the refusal.
func (i *Instance) refuse(w http.ResponseWriter, r *http.Request, body []byte, status int, reason, keyID string) {
	i.mu.Lock()
	i.rejected = append(i.rejected, Rejection{
		Method: r.Method, Path: r.URL.Path, Status: status, Reason: reason, KeyID: keyID,
		Body: body, Header: r.Header.Clone(), At: time.Now(),
	})
	i.mu.Unlock()
	i.log("refused %s %s with %d: %s", r.Method, r.URL.Path, status, reason)
	http.Error(w, reason, status)
}

func writeJSON(w http.ResponseWriter, contentType string, status int, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (i *Instance) writeDoc(w http.ResponseWriter, doc map[string]any) {
	b, err := canonicalJSON(doc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ct := "application/activity+json; charset=utf-8"
	if i.flavor == GoToSocial {
		ct = "application/activity+json"
	}
	writeJSON(w, ct, http.StatusOK, b)
}

func (i *Instance) serveGet(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch path {
	case "/.well-known/webfinger":
		i.serveWebFinger(w, r)
		return
	case "/.well-known/nodeinfo":
		b, _ := canonicalJSON(map[string]any{"links": []any{map[string]any{
			"rel": "http://nodeinfo.diaspora.software/ns/schema/2.0", "href": i.base + "/nodeinfo/2.0",
		}}})
		writeJSON(w, "application/json", http.StatusOK, b)
		return
	case "/nodeinfo/2.0":
		name, version := i.software()
		b, _ := canonicalJSON(map[string]any{
			"version": "2.0", "software": map[string]any{"name": name, "version": version},
			"protocols": []any{"activitypub"}, "services": map[string]any{"inbound": []any{}, "outbound": []any{}},
			"openRegistrations": false, "usage": map[string]any{"users": map[string]any{"total": 1}}, "metadata": map[string]any{},
		})
		writeJSON(w, `application/json; profile="http://nodeinfo.diaspora.software/ns/schema/2.0#"`, http.StatusOK, b)
		return
	}

	a, suffix := i.actorByPath(path, true)
	if i.flavor == GoToSocial {
		if a != nil && suffix == "/main-key" {
			// The public key stub is served to anyone (protocol.md §5.4).
			i.writeDoc(w, i.renderKeyStub(a))
			return
		}
		// Everything else needs a valid signed GET.
		keyID, _, verr := i.verifyRequest(r.Context(), r, nil)
		if verr != nil {
			i.refuse(w, r, nil, http.StatusUnauthorized, verr.reason, keyID)
			return
		}
	}
	if a != nil {
		switch suffix {
		case "":
			i.writeDoc(w, i.renderActor(a))
			return
		case "/followers", "/following", "/outbox":
			i.writeDoc(w, map[string]any{
				"@context": asContext, "id": a.id + suffix, "type": "OrderedCollection",
				"totalItems": 0, "first": a.id + suffix + "?page=true",
			})
			return
		case "/inbox":
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
	}
	i.mu.Lock()
	o, ok := i.objects[path]
	var stored storedObject
	if ok {
		stored = *o // Edit and Delete change it under i.mu
	}
	i.mu.Unlock()
	o = &stored
	if !ok {
		http.NotFound(w, r)
		return
	}
	if o.gone {
		http.Error(w, "gone", http.StatusGone)
		return
	}
	ct := "application/activity+json; charset=utf-8"
	if i.flavor == GoToSocial {
		ct = "application/activity+json"
	}
	writeJSON(w, ct, http.StatusOK, o.doc)
}

// serveWebFinger answers acct:<user>@<host> (host with or without port) and actor URLs.
func (i *Instance) serveWebFinger(w http.ResponseWriter, r *http.Request) {
	res := r.URL.Query().Get("resource")
	if res == "" {
		http.Error(w, "resource required", http.StatusBadRequest)
		return
	}
	var a *localActor
	if acct, ok := strings.CutPrefix(res, "acct:"); ok {
		user, host, ok := strings.Cut(acct, "@")
		if !ok || !(strings.EqualFold(host, i.host) || strings.EqualFold(host, i.hostname())) {
			http.NotFound(w, r)
			return
		}
		if user == i.system.username {
			a = i.system
		} else if u, err := i.user(user); err == nil {
			a = u
		}
	} else if u, err := url.Parse(res); err == nil && strings.EqualFold(u.Host, i.host) {
		if la, suffix := i.actorByPath(u.Path, true); suffix == "" {
			a = la
		}
	}
	if a == nil {
		http.NotFound(w, r)
		return
	}
	b, _ := canonicalJSON(map[string]any{
		"subject": "acct:" + a.username + "@" + i.host,
		"aliases": []any{a.id},
		"links": []any{
			map[string]any{"rel": "self", "type": "application/activity+json", "href": a.id},
			map[string]any{"rel": "http://webfinger.net/rel/profile-page", "type": "text/html", "href": a.id},
		},
	})
	writeJSON(w, "application/jrd+json; charset=utf-8", http.StatusOK, b)
}

func (i *Instance) servePost(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if path == "/inbox" && i.flavor != GoToSocial {
		i.serveInbox(w, r, nil)
		return
	}
	if a, suffix := i.actorByPath(path, true); a != nil && suffix == "/inbox" {
		i.serveInbox(w, r, a)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	i.refuse(w, r, body, http.StatusNotFound, "no inbox at "+path, "")
}
