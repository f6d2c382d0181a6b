// Package promrelay exports a relay's events and state as Prometheus
// metrics. It is the only package of the module that imports the
// Prometheus client: a program that imports only package relay does not
// compile it.
//
//	exp := promrelay.New()
//	r, err := relay.New(relay.Config{BaseURL: ..., Events: exp})
//	exp.Watch(r)
//	adminMux.Handle("GET /metrics", exp.Handler())
//
// Every family is named fedirelay_…; labels take their values from small
// fixed sets (outcomes, reasons, activity types, forms, software families,
// store operations, states, protocols), never a domain or an actor, so the
// number of series does not grow with the number of subscribers. The Go
// runtime and process collectors are registered too.
package promrelay

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store"
)

// maxSoftwareLabels bounds the software label's values: families seen
// beyond it are counted as "other".
const maxSoftwareLabels = 32

// scrapeTimeout bounds the store reads made for one scrape.
const scrapeTimeout = 10 * time.Second

// Exporter is a relay.Observer that counts the relay's events, and a
// prometheus.Collector of its gauges (queue, subscribers, breakers) once
// Watch names the relay. Its methods are safe for concurrent use.
type Exporter struct {
	registry *prometheus.Registry

	inbox      *prometheus.CounterVec
	signature  *prometheus.CounterVec
	keyFetch   *prometheus.CounterVec
	relayed    *prometheus.CounterVec
	queued     *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	dropped    *prometheus.CounterVec
	storeOps   *prometheus.HistogramVec

	backlog     *prometheus.Desc
	lag         *prometheus.Desc
	inFlight    *prometheus.Desc
	breakers    *prometheus.Desc
	subscribers *prometheus.Desc
	postsHour   *prometheus.Desc
	scrapeError *prometheus.Desc

	relay atomic.Pointer[relay.Relay]

	softMu   sync.Mutex
	software map[string]bool
}

var _ relay.Observer = (*Exporter)(nil)

// New returns an Exporter with its own registry, holding its families and
// the Go runtime and process collectors.
func New() *Exporter {
	e := &Exporter{
		registry: prometheus.NewRegistry(),
		inbox: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_inbox_requests_total",
			Help: "Inbox requests answered, by outcome (accepted, ignored, refused, failed) and HTTP status.",
		}, []string{"outcome", "status"}),
		signature: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_signature_failures_total",
			Help: "Inbox requests refused for their signature, by reason (malformed, invalid, key, gone, not_bound).",
		}, []string{"reason"}),
		keyFetch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_key_fetches_total",
			Help: "Fetches of signers' keys, by outcome (ok, gone, timeout, error, limited, busy).",
		}, []string{"outcome"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_activities_relayed_total",
			Help: "Activities accepted and queued for relaying, by type and form (verbatim, announce, none); an activity sent in both forms counts once per form.",
		}, []string{"type", "form"}),
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_deliveries_queued_total",
			Help: "Deliveries queued by relayed activities, by form (verbatim, announce).",
		}, []string{"form"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_deliveries_total",
			Help: "Delivery attempts, by outcome (delivered, refused, gone, throttled, failed) and receiving software family.",
		}, []string{"outcome", "software"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fedirelay_delivery_latency_seconds",
			Help:    "Time from queueing a delivery to its 2xx answer, retries included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600},
		}, []string{"software"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedirelay_dropped_total",
			Help: "Work dropped, by reason (filter, duplicate, budget, shed, dormant).",
		}, []string{"reason"}),
		storeOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fedirelay_store_operation_duration_seconds",
			Help:    "Duration of store calls, by operation.",
			Buckets: []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5},
		}, []string{"op"}),
		backlog:     prometheus.NewDesc("fedirelay_queue_deliveries", "Deliveries queued, all hosts together.", nil, nil),
		lag:         prometheus.NewDesc("fedirelay_queue_oldest_due_seconds", "Estimated age of the oldest due delivery (see relay.DeliveryStatus.Lag).", nil, nil),
		inFlight:    prometheus.NewDesc("fedirelay_deliveries_in_flight", "Deliveries leased by this process and not finished.", nil, nil),
		breakers:    prometheus.NewDesc("fedirelay_breaker_hosts", "Receiving hosts whose circuit breaker is not closed, by state (open, half-open).", []string{"state"}, nil),
		subscribers: prometheus.NewDesc("fedirelay_subscribers", "Subscriptions, by state and protocol.", []string{"state", "protocol"}, nil),
		postsHour:   prometheus.NewDesc("fedirelay_posts_relayed_last_hour", "Posts (Create, Announce) relayed in the last 60 minutes.", nil, nil),
		scrapeError: prometheus.NewDesc("fedirelay_scrape_error", "1 if reading the relay's state for this scrape failed (the store did not answer), else 0.", nil, nil),
		software:    map[string]bool{},
	}
	e.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		e.inbox, e.signature, e.keyFetch, e.relayed, e.queued, e.deliveries,
		e.latency, e.dropped, e.storeOps, gauges{e},
	)
	return e
}

// Watch makes the Exporter report r's queue, breakers and subscribers at
// every scrape (one CountDeliveries and one ListSubscribers). Until it is
// called those gauges are absent.
func (e *Exporter) Watch(r *relay.Relay) { e.relay.Store(r) }

// Registry returns the Exporter's registry, to add collectors of your own.
func (e *Exporter) Registry() *prometheus.Registry { return e.registry }

// Handler returns the http.Handler that serves the metrics in the
// Prometheus text (or OpenMetrics) format.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// InboxRequest implements relay.Observer.
func (e *Exporter) InboxRequest(outcome string, status int) {
	e.inbox.WithLabelValues(outcome, strconv.Itoa(status)).Inc()
}

// SignatureFailure implements relay.Observer.
func (e *Exporter) SignatureFailure(reason string) { e.signature.WithLabelValues(reason).Inc() }

// KeyFetch implements relay.Observer.
func (e *Exporter) KeyFetch(outcome string) { e.keyFetch.WithLabelValues(outcome).Inc() }

// Relayed implements relay.Observer.
func (e *Exporter) Relayed(activityType, form string, deliveries int) {
	e.relayed.WithLabelValues(activityType, form).Inc()
	if deliveries > 0 {
		e.queued.WithLabelValues(form).Add(float64(deliveries))
	}
}

// Delivered implements relay.Observer.
func (e *Exporter) Delivered(outcome, software string, latency time.Duration) {
	software = e.softwareLabel(software)
	e.deliveries.WithLabelValues(outcome, software).Inc()
	if outcome == "delivered" {
		e.latency.WithLabelValues(software).Observe(latency.Seconds())
	}
}

// Dropped implements relay.Observer.
func (e *Exporter) Dropped(reason string, n int) {
	if n > 0 {
		e.dropped.WithLabelValues(reason).Add(float64(n))
	}
}

// StoreOp implements relay.Observer.
func (e *Exporter) StoreOp(op string, d time.Duration) {
	e.storeOps.WithLabelValues(op).Observe(d.Seconds())
}

// softwareLabel returns the label for a software family: itself while
// fewer than maxSoftwareLabels families were seen, else "other".
func (e *Exporter) softwareLabel(s string) string {
	e.softMu.Lock()
	defer e.softMu.Unlock()
	if e.software[s] {
		return s
	}
	if len(e.software) >= maxSoftwareLabels {
		return "other"
	}
	e.software[s] = true
	return s
}

// gauges collects the state read from the relay at scrape time.
type gauges struct{ e *Exporter }

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	e := g.e
	for _, d := range []*prometheus.Desc{e.backlog, e.lag, e.inFlight, e.breakers, e.subscribers, e.postsHour, e.scrapeError} {
		ch <- d
	}
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	e := g.e
	r := e.relay.Load()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	failed := 0.0
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if st, err := r.DeliveryStatus(ctx); err != nil {
		failed = 1
	} else {
		gauge(e.backlog, float64(st.Backlog))
		gauge(e.lag, st.Lag.Seconds())
		gauge(e.inFlight, float64(st.InFlight))
		open, half := 0, 0
		for _, h := range st.Hosts {
			switch h.Circuit {
			case "open":
				open++
			case "half-open":
				half++
			}
		}
		gauge(e.breakers, float64(open), "open")
		gauge(e.breakers, float64(half), "half-open")
	}
	if subs, err := r.Store().ListSubscribers(ctx, store.SubscriberFilter{}); err != nil {
		failed = 1
	} else {
		counts := map[[2]string]int{}
		for _, s := range []store.State{store.StateAccepted, store.StatePending, store.StateRejected, store.StateDormant} {
			for _, p := range []store.Protocol{store.ProtocolMastodon, store.ProtocolLitePub} {
				counts[[2]string{string(s), string(p)}] = 0
			}
		}
		for i := range subs {
			counts[[2]string{string(subs[i].State), string(subs[i].Protocol)}]++
		}
		for k, n := range counts {
			gauge(e.subscribers, float64(n), k[0], k[1])
		}
	}
	gauge(e.postsHour, float64(r.PostsLastHour()))
	gauge(e.scrapeError, failed)
}
