package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/memnet"
	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store/memstore"
)

// BenchmarkFanOut measures fan-out through the in-memory transport: one
// op is one public post relayed to the other subscribers, each delivery
// signed. After subscribing, the receivers are replaced by sinks that
// answer 202 at once, so the figures are the relay's cost (plus the
// sender's one signature per post). Reported: deliveries/s, and the CPU
// time of the whole test process per delivery (cpu-ns/delivery), to
// compare with BenchmarkSignRequest's ns/op: the ratio is what the relay
// spends per delivery beyond its one signature, whatever else loads the
// machine.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) { benchFanOut(b, n) })
	}
}

func benchFanOut(b *testing.B, subscribers int) {
	var net memnet.Network
	st := memstore.New()
	require.NoError(b, st.PutValue(context.Background(), "relay/private-key.pem", testRelayKey(b)))
	r, err := relay.New(relay.Config{
		BaseURL: "https://relay.test", Store: st, Transport: &net, Logger: quietLogger(),
		// One instance posts as fast as it can: more than InboxLimit lets
		// one host send.
		InboxLimit: relay.RateLimit{Rate: -1},
	})
	require.NoError(b, err)
	net.Handle("relay.test", r.Handler())
	require.NoError(b, r.Start())
	b.Cleanup(func() { _ = r.Close(context.Background()) })

	var delivered atomic.Int64
	sink := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPost {
			delivered.Add(1)
		}
		w.WriteHeader(http.StatusAccepted)
	})
	var sender *relaytest.Instance
	for k := range subscribers {
		i := relaytest.NewInstance(b, relaytest.Mastodon, relaytest.Options{
			Network: &net, Host: fmt.Sprintf("i%d.test", k), Logf: func(string, ...any) {},
		})
		_, err := i.Subscribe(context.Background(), memRelayInbox, memRelayActor)
		require.NoError(b, err)
		i.WaitSubscribed(b, wait)
		if k == 0 {
			sender = i
			continue
		}
		net.Handle(i.Host(), sink)
	}
	perPost := int64(subscribers - 1)
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	for k := 0; k < b.N; k++ {
		_, err := sender.Post(context.Background(), memRelayInbox, "alice", fmt.Sprint("post ", k))
		require.NoError(b, err)
	}
	want := perPost * int64(b.N)
	deadline := time.Now().Add(5 * time.Minute)
	for delivered.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.StopTimer()
	require.Equal(b, want, delivered.Load(), "every delivery arrives")
	b.ReportMetric(float64(want)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(want), "cpu-ns/delivery")
}
