package relay

// The admin API: the operator API (admin.go) as JSON over HTTP.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/fedirelay/relay/store"
)

// AdminAPIPrefix is the path under which AdminHandler serves its API.
const AdminAPIPrefix = "/api/v1/"

// AdminHandler returns the relay's admin API: JSON over HTTP under
// /api/v1/, for the operator's tools. It does no authentication: mount it
// behind your own (the standalone relay serves it on a Unix socket only
// its user may open, and on TCP with a bearer token), never on the public
// handler. The routes (documented with examples in docs/operating.md):
//
//	GET    /api/v1/status                      Overview
//	GET    /api/v1/subscribers                 list: ?state= &host= &software= &mode= &limit= &after=
//	GET    /api/v1/subscriber?actor=URL        one subscriber with its delivery status
//	POST   /api/v1/subscriber/approve          {"actor": URL}
//	POST   /api/v1/subscriber/refuse           {"actor": URL, "reason": TEXT}
//	POST   /api/v1/subscriber/remove           {"actor": URL}
//	POST   /api/v1/subscriber/mode             {"actor": URL, "mode": "both"|"receive-only"|"send-only"}
//	POST   /api/v1/subscriber/note             {"actor": URL, "note": TEXT}
//	GET    /api/v1/subscriber/filter?actor=URL the subscriber's FilterSpec ({} for none)
//	PUT    /api/v1/subscriber/filter?actor=URL set it: the body is a FilterSpec
//	DELETE /api/v1/subscriber/filter?actor=URL remove it
//	GET    /api/v1/topic-followers             follows of topic actors: ?state= &topic=
//	POST   /api/v1/topic-follower/approve      {"topic": "tag/cats", "actor": URL}
//	POST   /api/v1/topic-follower/refuse       {"topic": "tag/cats", "actor": URL}
//	GET    /api/v1/blocks                      the run-time block list (DomainBlock objects)
//	PUT    /api/v1/blocks/{domain}             block: {"severity", "reason", "note"} (all optional)
//	DELETE /api/v1/blocks/{domain}             unblock
//	POST   /api/v1/blocks/import               a Mastodon CSV or plain-text block list (see ParseBlockList)
//	GET    /api/v1/blocks/export               the block list as Mastodon CSV
//	GET    /api/v1/allowlist                   the allowlist
//	PUT    /api/v1/allowlist/{domain}          allow
//	DELETE /api/v1/allowlist/{domain}          disallow
//
// The list of subscribers is ordered by actor id and paged: at most limit
// entries (default 500, at most 10,000), starting after the actor id
// given as after; the answer's "next" is the after of the next page, or
// empty on the last. Every change goes through the store, so it survives
// a restart and reaches relays sharing the store. Errors are JSON
// {"error": "..."}: 400 for bad input, 404 for an unknown actor or an
// unknown route or method, 500 for a store failure (logged). The handler
// is safe for concurrent use.
func (r *Relay) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	p := strings.TrimSuffix(AdminAPIPrefix, "/")
	mux.HandleFunc("GET "+p+"/status", r.adminStatus)
	mux.HandleFunc("GET "+p+"/subscribers", r.adminSubscribers)
	mux.HandleFunc("GET "+p+"/subscriber", r.adminSubscriber)
	mux.HandleFunc("POST "+p+"/subscriber/{action}", r.adminSubscriberAction)
	mux.HandleFunc("GET "+p+"/subscriber/filter", r.adminFilter)
	mux.HandleFunc("PUT "+p+"/subscriber/filter", r.adminFilter)
	mux.HandleFunc("DELETE "+p+"/subscriber/filter", r.adminFilter)
	mux.HandleFunc("GET "+p+"/topic-followers", r.adminTopicFollowers)
	mux.HandleFunc("POST "+p+"/topic-follower/{action}", r.adminTopicFollowerAction)
	mux.HandleFunc("GET "+p+"/blocks", r.adminBlocks)
	mux.HandleFunc("PUT "+p+"/blocks/{domain}", r.adminBlock)
	mux.HandleFunc("DELETE "+p+"/blocks/{domain}", r.adminUnblock)
	mux.HandleFunc("POST "+p+"/blocks/import", r.adminImportBlocks)
	mux.HandleFunc("GET "+p+"/blocks/export", r.adminExportBlocks)
	mux.HandleFunc("GET "+p+"/allowlist", r.adminAllowlist)
	mux.HandleFunc("PUT "+p+"/allowlist/{domain}", r.adminAllow)
	mux.HandleFunc("DELETE "+p+"/allowlist/{domain}", r.adminDisallow)
	mux.HandleFunc(p+"/", func(w http.ResponseWriter, req *http.Request) {
		writeAdminError(w, http.StatusNotFound, "no such admin API route: %s %s", req.Method, req.URL.Path)
	})
	return mux
}

// AdminSubscriber is a subscriber as the admin API shows it: the store
// record (with delivery statistics that include what is not yet flushed)
// with its mode always named ("both" for the zero mode), and, for one
// subscriber, its backlog of queued deliveries.
type AdminSubscriber struct {
	store.Subscriber
	Mode    string `json:"mode"`
	Backlog *int   `json:"backlog,omitempty"`
}

// AdminSubscriberPage is one page of the admin API's list of subscribers.
type AdminSubscriberPage struct {
	Subscribers []AdminSubscriber `json:"subscribers"`
	// Next is the after parameter of the next page; empty on the last page.
	Next string `json:"next"`
}

// Page sizes of the list of subscribers.
const (
	defaultAdminPage = 500
	maxAdminPage     = 10000
)

func (r *Relay) adminStatus(w http.ResponseWriter, req *http.Request) {
	o, err := r.Overview(req.Context())
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, o)
}

func (r *Relay) adminSubscribers(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	f := store.SubscriberFilter{Host: strings.ToLower(q.Get("host")), State: store.State(q.Get("state"))}
	if msg := checkState(f.State); msg != "" {
		writeAdminError(w, http.StatusBadRequest, "%s", msg)
		return
	}
	software := strings.ToLower(q.Get("software"))
	var mode *store.Mode
	if v := q.Get("mode"); v != "" {
		m, err := store.ParseMode(v)
		if err != nil {
			writeAdminError(w, http.StatusBadRequest, "%v", err)
			return
		}
		mode = &m
	}
	limit := defaultAdminPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAdminPage {
			writeAdminError(w, http.StatusBadRequest, "limit %q: want a number from 1 to %d", v, maxAdminPage)
			return
		}
		limit = n
	}
	after := q.Get("after")
	subs, err := r.Subscribers(req.Context(), f)
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	start, _ := slices.BinarySearchFunc(subs, after, func(s store.Subscriber, a string) int { return strings.Compare(s.ActorID, a) })
	if start < len(subs) && after != "" && subs[start].ActorID == after {
		start++
	}
	page := AdminSubscriberPage{Subscribers: []AdminSubscriber{}}
	for i := start; i < len(subs); i++ {
		s := &subs[i]
		if (software != "" && s.Software != software) || (mode != nil && s.Mode != *mode) {
			continue
		}
		if len(page.Subscribers) == limit {
			page.Next = page.Subscribers[limit-1].ActorID
			break
		}
		page.Subscribers = append(page.Subscribers, AdminSubscriber{Subscriber: *s, Mode: s.Mode.String()})
	}
	writeAdminJSON(w, http.StatusOK, page)
}

func (r *Relay) adminSubscriber(w http.ResponseWriter, req *http.Request) {
	actor := req.URL.Query().Get("actor")
	if actor == "" {
		writeAdminError(w, http.StatusBadRequest, "missing actor parameter")
		return
	}
	st, err := r.Status(req.Context(), actor)
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, AdminSubscriber{Subscriber: st.Subscriber, Mode: st.Mode.String(), Backlog: &st.Backlog})
}

// adminActionRequest is the body of the POST /api/v1/subscriber/ actions.
type adminActionRequest struct {
	Actor  string  `json:"actor"`
	Reason string  `json:"reason"`
	Mode   string  `json:"mode"`
	Note   *string `json:"note"`
}

func (r *Relay) adminSubscriberAction(w http.ResponseWriter, req *http.Request) {
	var body adminActionRequest
	if !readAdminJSON(w, req, &body) {
		return
	}
	if body.Actor == "" {
		writeAdminError(w, http.StatusBadRequest, "missing actor")
		return
	}
	ctx := req.Context()
	var err error
	switch action := req.PathValue("action"); action {
	case "approve":
		err = r.Approve(ctx, body.Actor)
	case "refuse":
		err = r.Refuse(ctx, body.Actor, body.Reason)
	case "remove":
		err = r.Remove(ctx, body.Actor)
	case "mode":
		if body.Mode == "" {
			writeAdminError(w, http.StatusBadRequest, "missing mode (both, receive-only or send-only)")
			return
		}
		m, perr := store.ParseMode(body.Mode)
		if perr != nil {
			writeAdminError(w, http.StatusBadRequest, "%v", perr)
			return
		}
		err = r.SetMode(ctx, body.Actor, m)
	case "note":
		if body.Note == nil {
			writeAdminError(w, http.StatusBadRequest, "missing note")
			return
		}
		err = r.SetNote(ctx, body.Actor, *body.Note)
	default:
		writeAdminError(w, http.StatusNotFound, "unknown subscriber action %q (want approve, refuse, remove, mode or note)", action)
		return
	}
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	if req.PathValue("action") == "remove" {
		writeAdminJSON(w, http.StatusOK, map[string]string{"actor": body.Actor, "removed": "true"})
		return
	}
	st, err := r.Status(ctx, body.Actor)
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, AdminSubscriber{Subscriber: st.Subscriber, Mode: st.Mode.String(), Backlog: &st.Backlog})
}

// adminFilter reads, sets (PUT, a FilterSpec body) or removes (DELETE) the
// filter of the subscriber named by the actor parameter, and answers the
// filter in force afterwards.
func (r *Relay) adminFilter(w http.ResponseWriter, req *http.Request) {
	actor := req.URL.Query().Get("actor")
	if actor == "" {
		writeAdminError(w, http.StatusBadRequest, "missing actor parameter")
		return
	}
	ctx := req.Context()
	var err error
	switch req.Method {
	case http.MethodPut:
		var spec FilterSpec
		if !readAdminJSON(w, req, &spec) {
			return
		}
		if _, cerr := spec.Compile(); cerr != nil {
			writeAdminError(w, http.StatusBadRequest, "%v", cerr)
			return
		}
		err = r.SetSubscriberFilter(ctx, actor, spec)
	case http.MethodDelete:
		err = r.SetSubscriberFilter(ctx, actor, FilterSpec{})
	}
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	spec, err := r.SubscriberFilter(ctx, actor)
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, spec)
}

// checkState returns a 400 message for a state parameter that is not
// empty or one of the subscription states, or "".
func checkState(state store.State) string {
	switch state {
	case "", store.StatePending, store.StateAccepted, store.StateRejected, store.StateDormant:
		return ""
	}
	return fmt.Sprintf("unknown state %q (want pending, accepted, rejected or dormant)", state)
}

func (r *Relay) adminTopicFollowers(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	state := store.State(q.Get("state"))
	if msg := checkState(state); msg != "" {
		writeAdminError(w, http.StatusBadRequest, "%s", msg)
		return
	}
	topic := ""
	if v := q.Get("topic"); v != "" {
		if topic = parseTopicKey(v); topic == "" {
			writeAdminError(w, http.StatusBadRequest, "unknown topic %q (want tag/NAME, language/CODE or instance/HOST)", v)
			return
		}
	}
	out := []TopicFollower{}
	for _, f := range r.TopicFollowers() {
		if (state == "" || f.State == state) && (topic == "" || f.Topic == topic) {
			out = append(out, f)
		}
	}
	writeAdminJSON(w, http.StatusOK, out)
}

// adminTopicRequest is the body of the POST /api/v1/topic-follower/
// actions.
type adminTopicRequest struct {
	Topic string `json:"topic"`
	Actor string `json:"actor"`
}

func (r *Relay) adminTopicFollowerAction(w http.ResponseWriter, req *http.Request) {
	var body adminTopicRequest
	if !readAdminJSON(w, req, &body) {
		return
	}
	if body.Actor == "" {
		writeAdminError(w, http.StatusBadRequest, "missing actor")
		return
	}
	topic := parseTopicKey(body.Topic)
	if topic == "" {
		writeAdminError(w, http.StatusBadRequest, "unknown topic %q (want tag/NAME, language/CODE or instance/HOST)", body.Topic)
		return
	}
	var err error
	switch action := req.PathValue("action"); action {
	case "approve":
		err = r.ApproveTopicFollower(req.Context(), topic, body.Actor)
	case "refuse":
		err = r.RefuseTopicFollower(req.Context(), topic, body.Actor)
	default:
		writeAdminError(w, http.StatusNotFound, "unknown topic follower action %q (want approve or refuse)", action)
		return
	}
	if errors.Is(err, ErrNotSubscribed) {
		writeAdminError(w, http.StatusNotFound, "unknown follow of %s by %s", topic, body.Actor)
		return
	}
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	for _, f := range r.TopicFollowers() {
		if f.Topic == topic && f.Actor == body.Actor {
			writeAdminJSON(w, http.StatusOK, f)
			return
		}
	}
	writeAdminError(w, http.StatusNotFound, "unknown follow of %s by %s", topic, body.Actor)
}

func (r *Relay) adminBlocks(w http.ResponseWriter, req *http.Request) {
	blocks, err := r.DomainBlocks(req.Context())
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, blocks)
}

func (r *Relay) adminBlock(w http.ResponseWriter, req *http.Request) {
	var b DomainBlock
	if req.ContentLength != 0 && !readAdminJSON(w, req, &b) {
		return
	}
	b.Domain = req.PathValue("domain")
	b, err := b.Check()
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := r.BlockDomains(req.Context(), b); err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, b)
}

func (r *Relay) adminUnblock(w http.ResponseWriter, req *http.Request) {
	d, err := checkDomain(req.PathValue("domain"))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := r.UnblockDomain(req.Context(), d); err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]string{"domain": d, "blocked": "false"})
}

func (r *Relay) adminImportBlocks(w http.ResponseWriter, req *http.Request) {
	blocks, err := ParseBlockList(http.MaxBytesReader(w, req.Body, maxBlockListBytes))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := r.BlockDomains(req.Context(), blocks...); err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]int{"imported": len(blocks)})
}

func (r *Relay) adminExportBlocks(w http.ResponseWriter, req *http.Request) {
	blocks, err := r.DomainBlocks(req.Context())
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	if err := WriteBlockList(w, blocks); err != nil {
		r.log.Warn("relay: admin API: writing the block list", "err", err)
	}
}

func (r *Relay) adminAllowlist(w http.ResponseWriter, req *http.Request) {
	list, err := r.AllowedDomains(req.Context())
	if err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"allowlist_only": r.cfg.Rules.AllowlistOnly, "domains": list})
}

func (r *Relay) adminAllow(w http.ResponseWriter, req *http.Request) {
	b, err := DomainBlock{Domain: req.PathValue("domain")}.Check()
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := r.AllowDomain(req.Context(), b.Domain); err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]string{"domain": b.Domain, "allowed": "true"})
}

func (r *Relay) adminDisallow(w http.ResponseWriter, req *http.Request) {
	d, err := checkDomain(req.PathValue("domain"))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := r.DisallowDomain(req.Context(), d); err != nil {
		r.adminFailed(w, err)
		return
	}
	writeAdminJSON(w, http.StatusOK, map[string]string{"domain": d, "allowed": "false"})
}

// adminFailed answers an error of the Relay's methods: 404 for an unknown
// actor, 400 for a refused value, 500 (logged, without details) otherwise.
func (r *Relay) adminFailed(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotSubscribed):
		writeAdminError(w, http.StatusNotFound, "unknown actor %s", strings.TrimPrefix(err.Error(), ErrNotSubscribed.Error()+": "))
	case errors.Is(err, store.ErrEmptyID), errors.Is(err, store.ErrTooLong):
		writeAdminError(w, http.StatusBadRequest, "%v", err)
	default:
		r.log.Error("relay: admin API", "err", err)
		writeAdminError(w, http.StatusInternalServerError, "internal error (see the relay's log)")
	}
}

// maxAdminBody bounds the JSON bodies the admin API reads.
const maxAdminBody = 64 << 10

// readAdminJSON decodes the request's JSON body into v, or answers 400.
func readAdminJSON(w http.ResponseWriter, req *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeAdminError(w, http.StatusBadRequest, "bad JSON body: %v", err)
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeAdminError(w, http.StatusBadRequest, "bad JSON body: more than one value")
		return false
	}
	return true
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeAdminError(w http.ResponseWriter, status int, format string, args ...any) {
	writeAdminJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// sortBy sorts s by the string key returns.
func sortBy[T any](s []T, key func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return strings.Compare(key(a), key(b)) })
}
