package relay

// The status pages: the public one at P/ (HTML, plain text or JSON) and
// the operator's, with per-subscriber health, for the admin listener.

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fedirelay/relay/store"
)

//go:embed templates/status.html templates/operator.html templates/status.css templates/favicon.svg
var templateFiles embed.FS

var (
	statusTemplate   = template.Must(template.ParseFS(templateFiles, "templates/status.html"))
	operatorTemplate = template.Must(template.ParseFS(templateFiles, "templates/operator.html"))
	statusCSS        = mustRead("templates/status.css")
	favicon          = mustRead("templates/favicon.svg")
)

func mustRead(name string) []byte {
	b, err := templateFiles.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}

// pageCSP is the Content-Security-Policy of the status pages: nothing but
// the relay's own style sheet, no scripts, no frames, no forms.
const pageCSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// PublicStatus is what the public status page shows: only what the relay
// publishes anyway (its name, description and URLs) and counts, plus the
// run-time block list with its public reasons, as NodeInfo publishes it
// (unless Config.HideBlocks). It never holds a
// subscriber's actor, a pending request or an operator's note.
type PublicStatus struct {
	Name             string          `json:"name"`
	Summary          string          `json:"summary,omitempty"`
	Version          string          `json:"version"`
	InboxURL         string          `json:"inbox"`
	ActorURL         string          `json:"actor"`
	ApprovalRequired bool            `json:"approval_required"`
	Subscribers      int             `json:"subscribers"`
	BySoftware       []SoftwareCount `json:"subscribers_by_software"`
	PostsLastHour    int64           `json:"posts_last_hour"`
	BlockedCount     int             `json:"blocked_domains_count"`
	Blocks           []PublicBlock   `json:"blocks,omitempty"`
	// Topics lists the topic actors' URL patterns (see Config.Topics),
	// such as P/tag/{hashtag}; empty when topics are disabled.
	Topics []string `json:"topics,omitempty"`
	CSS    string   `json:"-"`
	Icon   string   `json:"-"`
}

// PublicBlock is a blocked domain with its public reason (never the
// operator's note).
type PublicBlock struct {
	Domain string `json:"domain"`
	Reason string `json:"reason,omitempty"`
}

// SoftwareCount is the number of accepted subscribers running a software
// family (see SoftwareFamily; "unknown" until a server sent something).
type SoftwareCount struct {
	Software string `json:"software"`
	Count    int    `json:"count"`
}

// PublicStatus returns what the public status page shows. It reads the
// subscribers and the run-time block list from the store.
func (r *Relay) PublicStatus(ctx context.Context) (PublicStatus, error) {
	st := PublicStatus{
		Name: r.cfg.Name, Summary: r.cfg.Summary, Version: Version,
		InboxURL: r.inboxURL, ActorURL: r.actorID,
		ApprovalRequired: r.approvalRequired(),
		PostsLastHour:    r.PostsLastHour(),
		BySoftware:       []SoftwareCount{},
		Topics:           r.topicPatterns(),
		CSS:              r.prefix + "/status.css",
		Icon:             r.prefix + "/favicon.svg",
	}
	subs, err := r.store.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
	if err != nil {
		return st, err
	}
	st.Subscribers = len(subs)
	counts := map[string]int{}
	for i := range subs {
		r.software.seed(subs[i].Host, subs[i].Software)
		counts[r.software.of(subs[i].Host)]++
	}
	for s, n := range counts {
		st.BySoftware = append(st.BySoftware, SoftwareCount{s, n})
	}
	slices.SortFunc(st.BySoftware, func(a, b SoftwareCount) int {
		return cmp.Or(b.Count-a.Count, strings.Compare(a.Software, b.Software))
	})
	blocks, err := r.DomainBlocks(ctx)
	if err != nil {
		return st, err
	}
	all := slices.Clone(r.cfg.BlockedDomains)
	for _, b := range blocks {
		all = append(all, b.Domain)
		if !r.cfg.HideBlocks {
			st.Blocks = append(st.Blocks, PublicBlock{Domain: b.Domain, Reason: b.Reason})
		}
	}
	slices.Sort(all)
	st.BlockedCount = len(slices.Compact(all))
	return st, nil
}

// topicPatterns returns the URL patterns of the topic actors, or nil.
func (r *Relay) topicPatterns() []string {
	if r.cfg.Topics.Disabled {
		return nil
	}
	b := r.base.String()
	return []string{b + "/tag/{hashtag}", b + "/language/{code}", b + "/instance/{host}"}
}

// serveIndex serves the status page at P/: JSON with ?format=json or
// Accept: application/json, HTML when the client accepts text/html (a
// browser), the plain text otherwise.
func (r *Relay) serveIndex(w http.ResponseWriter, req *http.Request) {
	st, err := r.PublicStatus(req.Context())
	if err != nil {
		r.log.Error("relay: status page", "err", err)
	}
	w.Header().Set("Vary", "Accept")
	accept := req.Header.Get("Accept")
	switch {
	case req.URL.Query().Get("format") == "json" || strings.Contains(accept, "application/json"):
		b, err := json.MarshalIndent(st, "", "  ")
		writeDoc(w, r, "application/json", b, err)
	case strings.Contains(accept, "text/html"):
		r.writePage(w, statusTemplate, st)
	default:
		body := fmt.Sprintf("%s — an ActivityPub relay (fedirelay %s)\n\n"+
			"Mastodon, Misskey: subscribe with the inbox URL  %s\n"+
			"Pleroma, Akkoma, Friendica, GoToSocial: follow the actor  %s\n\n"+
			"%d subscribed servers.\n", st.Name, Version, st.InboxURL, st.ActorURL, st.Subscribers)
		body += r.topicsIndexText()
		writeDoc(w, r, "text/plain; charset=utf-8", []byte(body), nil)
	}
}

// writePage renders a status page with its security headers.
func (r *Relay) writePage(w http.ResponseWriter, t *template.Template, data any) {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		writeDoc(w, r, "", nil, err)
		return
	}
	w.Header().Set("Content-Security-Policy", pageCSP)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}

// serveCSS serves the status pages' style sheet.
func serveCSS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=3600")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(statusCSS)
}

// serveIcon serves the status pages' icon.
func serveIcon(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "max-age=86400")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(favicon)
}

// operatorRow is one subscriber on the operator page.
type operatorRow struct {
	ActorID, State, Protocol, Software string
	LastSuccess, FailingSince          string
	LastSuccessAt, FailingSinceAt      string // full timestamps
	Failing                            bool
	Failed                             int64
	Backlog                            int
	Breaker                            string
	Detail                             string
}

// operatorPage is the operator page's data.
type operatorPage struct {
	Public       PublicStatus
	Now          string
	Queue        DeliveryStatus
	Lag          string
	OpenBreakers int
	States       []struct {
		State string
		Count int
	}
	Rows []operatorRow
}

// OperatorHandler returns the operator's status page: the public facts,
// the delivery queue and, for every subscriber (pending and rejected ones
// included), its state, software, last success, failing run, backlog,
// circuit breaker and last error or note. It serves the page for any path
// not ending in "/status.css" or "/favicon.svg", and the style sheet and
// icon for those, so it can be mounted at any prefix. It shows actor ids and notes: serve it
// only where the operator alone can reach it (examples/relay serves it on
// the admin listener). It costs one CountDeliveries per subscriber.
func (r *Relay) OperatorHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			http.Error(w, "relay: method not allowed", http.StatusMethodNotAllowed)
			return
		}
		switch {
		case strings.HasSuffix(req.URL.Path, "/status.css"):
			serveCSS(w, req)
			return
		case strings.HasSuffix(req.URL.Path, "/favicon.svg"):
			serveIcon(w, req)
			return
		}
		page, err := r.operatorPage(req.Context())
		if err != nil {
			r.log.Error("relay: operator page", "err", err)
			http.Error(w, "relay: cannot read the relay's state: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		r.writePage(w, operatorTemplate, page)
	})
}

func (r *Relay) operatorPage(ctx context.Context) (operatorPage, error) {
	now := r.now()
	var p operatorPage
	var err error
	if p.Public, err = r.PublicStatus(ctx); err != nil {
		return p, err
	}
	if p.Queue, err = r.DeliveryStatus(ctx); err != nil {
		return p, err
	}
	p.Now = now.UTC().Format("2006-01-02 15:04:05 MST")
	p.Lag = roughly(p.Queue.Lag)
	breakers := map[string]string{}
	for _, h := range p.Queue.Hosts {
		breakers[h.Host] = h.Circuit
		if h.Circuit == "open" {
			p.OpenBreakers++
		}
	}
	statuses, err := r.Statuses(ctx, store.SubscriberFilter{})
	if err != nil {
		return p, err
	}
	states := map[string]int{}
	for _, s := range statuses {
		r.software.seed(s.Host, s.Software)
		states[string(s.State)]++
		row := operatorRow{
			ActorID: s.ActorID, State: string(s.State), Protocol: string(s.Protocol),
			Software: r.software.of(s.Host), LastSuccess: ago(now, s.LastSuccess),
			FailingSince: ago(now, s.FailingSince), Failing: !s.FailingSince.IsZero(),
			LastSuccessAt: stamp(s.LastSuccess), FailingSinceAt: stamp(s.FailingSince),
			Failed: s.Failed, Backlog: s.Backlog, Breaker: cmp.Or(breakers[s.Host], "closed"),
			Detail: cmp.Or(s.LastError, s.Note),
		}
		p.Rows = append(p.Rows, row)
	}
	for _, st := range []store.State{store.StateAccepted, store.StatePending, store.StateDormant, store.StateRejected} {
		p.States = append(p.States, struct {
			State string
			Count int
		}{string(st), states[string(st)]})
	}
	return p, nil
}

// ago formats t relative to now for the operator page: "never" for zero.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return roughly(now.Sub(t)) + " ago"
}

// stamp formats t in full for the operator page's tooltips: "" for zero.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// roughly formats a duration the way people say it: 45s, 12m, 5h, 9d.
func roughly(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(int(d.Seconds()), 0))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
