package promrelay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/metrics/promrelay"
	"github.com/fedirelay/relay/relaytest"
)

const wait = 20 * time.Second

// startRelay runs a relay reporting to a new Exporter on a loopback
// server, with the exporter's /metrics on another.
func startRelay(t *testing.T) (*relay.Relay, *promrelay.Exporter, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	exp := promrelay.New()
	r, err := relay.New(relay.Config{
		BaseURL:      "http://" + ln.Addr().String(),
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		AllowHTTP:    true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Events:       exp,
	})
	require.NoError(t, err)
	exp.Watch(r)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: r.Handler()}}
	srv.Start()
	require.NoError(t, r.Start())
	metrics := httptest.NewServer(exp.Handler())
	t.Cleanup(func() {
		metrics.Close()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Close(ctx)
	})
	return r, exp, metrics.URL
}

func newInstance(t *testing.T, f relaytest.Flavor) *relaytest.Instance {
	return relaytest.NewInstance(t, f, relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}})
}

func subscribe(t *testing.T, r *relay.Relay, instances ...*relaytest.Instance) {
	t.Helper()
	for _, i := range instances {
		_, err := i.Subscribe(context.Background(), r.InboxURL(), r.ActorID())
		require.NoError(t, err)
	}
	for _, i := range instances {
		i.WaitSubscribed(t, wait)
	}
}

// sum adds the values of the family's series whose labels include want.
func sum(t *testing.T, exp *promrelay.Exporter, name string, want map[string]string) float64 {
	t.Helper()
	families, err := exp.Registry().Gather()
	require.NoError(t, err)
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			total += value(m)
		}
	}
	return total
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// TestMetricsMatchWhatHappened publishes N posts from one Mastodon
// subscriber to two others, one of which refuses every delivery with 413
// (as Misskey does for large bodies), then scrapes /metrics: the counters
// show N deliveries, N refusals and the rest of what happened.
func TestMetricsMatchWhatHappened(t *testing.T) {
	r, exp, metricsURL := startRelay(t)
	ctx := context.Background()
	author := newInstance(t, relaytest.Mastodon)
	reader := newInstance(t, relaytest.Mastodon)
	refuser := newInstance(t, relaytest.Misskey)
	subscribe(t, r, author, reader, refuser)
	// The three Accepts are counted once their 2xx is seen.
	require.Eventually(t, func() bool {
		return sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "delivered"}) == 3
	}, wait, 10*time.Millisecond)
	refuser.SetFault(func(req *http.Request) int {
		if req.Method == http.MethodPost {
			return http.StatusRequestEntityTooLarge
		}
		return 0
	})
	deliveredBefore := sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "delivered"})
	acceptedBefore := sum(t, exp, "fedirelay_inbox_requests_total", map[string]string{"outcome": "accepted"})

	const n = 5
	for i := range n {
		_, err := author.Post(ctx, r.InboxURL(), "alice", fmt.Sprintf("post %d", i))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		return sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "refused"}) == n &&
			sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "delivered"}) == deliveredBefore+n
	}, wait, 10*time.Millisecond, "refused %v, delivered %v (before %v), rejected %v",
		sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "refused"}),
		sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "delivered"}), deliveredBefore, refuser.Rejected())

	resp, err := http.Get(metricsURL)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	text := string(body)
	for _, family := range []string{
		"fedirelay_inbox_requests_total", "fedirelay_activities_relayed_total", "fedirelay_deliveries_total",
		"fedirelay_delivery_latency_seconds", "fedirelay_dropped_total", "fedirelay_store_operation_duration_seconds",
		"fedirelay_queue_deliveries", "fedirelay_queue_oldest_due_seconds", "fedirelay_deliveries_in_flight",
		"fedirelay_breaker_hosts", "fedirelay_subscribers", "fedirelay_posts_relayed_last_hour",
		"go_goroutines", "process_cpu_seconds_total",
	} {
		assert.Contains(t, text, "# TYPE "+family+" ", "family %s on /metrics", family)
	}
	assert.Equal(t, acceptedBefore+n, sum(t, exp, "fedirelay_inbox_requests_total", map[string]string{"outcome": "accepted", "status": "202"}))
	assert.Equal(t, float64(n), sum(t, exp, "fedirelay_activities_relayed_total", map[string]string{"type": "Create", "form": "verbatim"}))
	assert.Equal(t, float64(2*n), sum(t, exp, "fedirelay_deliveries_queued_total", map[string]string{"form": "verbatim"}))
	assert.Equal(t, float64(n), sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "refused", "software": "misskey/2025"}))
	assert.Equal(t, deliveredBefore+n, sum(t, exp, "fedirelay_delivery_latency_seconds", nil))
	assert.Equal(t, float64(n), sum(t, exp, "fedirelay_dropped_total", map[string]string{"reason": "budget"}))
	assert.Equal(t, float64(3), sum(t, exp, "fedirelay_subscribers", map[string]string{"state": "accepted", "protocol": "mastodon"}))
	assert.Equal(t, float64(n), sum(t, exp, "fedirelay_posts_relayed_last_hour", nil))
	assert.Zero(t, sum(t, exp, "fedirelay_signature_failures_total", nil))
	assert.Zero(t, sum(t, exp, "fedirelay_scrape_error", nil))

	// A forged request: a signature failure, refused.
	req, err := http.NewRequest(http.MethodPost, r.InboxURL(), strings.NewReader(`{}`))
	require.NoError(t, err)
	req.Header.Set("Signature", `keyId="x"`)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, float64(1), sum(t, exp, "fedirelay_signature_failures_total", nil))
	assert.Equal(t, float64(1), sum(t, exp, "fedirelay_inbox_requests_total", map[string]string{"outcome": "refused", "status": "401"}))
}

// TestLabelsDoNotGrowWithSubscribers runs the same traffic with 3 and 30
// subscribers: every family has the same label values both times.
func TestLabelsDoNotGrowWithSubscribers(t *testing.T) {
	labels := func(subscribers int) map[string][]string {
		r, exp, _ := startRelay(t)
		flavors := []relaytest.Flavor{relaytest.Mastodon, relaytest.Pleroma}
		var all []*relaytest.Instance
		for i := range subscribers {
			all = append(all, newInstance(t, flavors[i%len(flavors)]))
		}
		subscribe(t, r, all...)
		for _, i := range all[:2] {
			_, err := i.Post(context.Background(), r.InboxURL(), "alice", "hello")
			require.NoError(t, err)
		}
		want := 2 * (subscribers - 1)
		require.Eventually(t, func() bool {
			return sum(t, exp, "fedirelay_deliveries_total", map[string]string{"outcome": "delivered"}) >= float64(want+subscribers)
		}, wait, 10*time.Millisecond)
		families, err := exp.Registry().Gather()
		require.NoError(t, err)
		// The values of each label of each family.
		out := map[string][]string{}
		for _, f := range families {
			if !strings.HasPrefix(f.GetName(), "fedirelay_") {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					k := f.GetName() + " " + l.GetName()
					if !slices.Contains(out[k], l.GetValue()) {
						out[k] = append(out[k], l.GetValue())
					}
				}
			}
		}
		for k := range out {
			sort.Strings(out[k])
		}
		return out
	}
	few, many := labels(3), labels(30)
	require.NotEmpty(t, few["fedirelay_deliveries_total software"])
	// Which store operations run depends on caches (GetPayload is called
	// only on a cache miss): their label takes Store method names only.
	storeOps := "fedirelay_store_operation_duration_seconds op"
	for _, m := range [][]string{few[storeOps], many[storeOps]} {
		for _, op := range m {
			assert.Contains(t, storeMethods, op)
		}
	}
	delete(few, storeOps)
	delete(many, storeOps)
	assert.Equal(t, few, many)
}

var storeMethods = []string{"GetValue", "PutValue", "CreateValue", "DeleteValue", "ListValues",
	"GetSubscriber", "UpdateSubscriber", "DeleteSubscriber", "ListSubscribers", "MarkSeen", "ForgetSeen",
	"Enqueue", "Lease", "GetPayload", "Complete", "Retry", "CountDeliveries", "ShedDeliveries", "DropDeliveries"}
