// Command loadtest measures fedirelay's delivery: throughput, post-to-arrival
// latency, the relay's CPU time per delivery and its peak memory, next to the
// machine's raw RSA-2048 signing rate measured in the same run, so that every
// figure is also a ratio.
//
// It builds examples/relay and runs it as a child process (so that the
// relay's CPU time and memory are measured apart from the load), starts K
// simulated ActivityPub instances on loopback addresses (127.0.0.2 and up,
// each actor with its own key id, verifying every delivery's HTTP signature
// with the relay's key), subscribes them Mastodon-style, posts M public
// activities from the first one and waits until every delivery arrived.
//
//	go run ./examples/loadtest                          # K=200, M=50, as fast as possible
//	go run ./examples/loadtest -k 50 -m 100 -rate 10    # latency at 10 posts/s
//	go run ./examples/loadtest -scenario compare        # healthy vs one hanging + one failing subscriber
//	go run ./examples/loadtest -scenario compare10 -k 100 -m 100 -rounds 3   # healthy vs ten hanging, three pairs
//	go run ./examples/loadtest -scenario backlog -k 10000 -m 10 -per-host 10
//	go run ./examples/loadtest -database-url URL -processes 2 -scenario scaleout -rounds 3
//
// Scenarios:
//
//	normal    every subscriber answers 202
//	hang      one subscriber never answers (the relay's request timeout ends each attempt)
//	fail500   one subscriber answers 500 to every delivery
//	hangfail  both of the above
//	hang10    ten subscribers never answer
//	compare   normal, then hangfail: the others' deliveries/s with and without
//	compare10 normal, then hang10
//	backlog   every subscriber but the sender answers 503, so that all M × K
//	          deliveries stay queued: reports the relay's peak RSS with that backlog
//	scaleout  normal with one relay process, then with -processes, alternated
//	          -rounds times (needs -database-url): the time to deliver the
//	          fan-out with several processes on one database against one
//
// With -database-url (a PostgreSQL connection string) the relay keeps its
// state in that database, in a new schema per run (dropped afterwards),
// and -processes relay processes share it behind a round-robin reverse
// proxy in this process, which spreads the subscriptions and posts over
// them (the deliveries go from the relays to the instances directly). CPU
// time and peak RSS are then the sums over the processes.
//
// Every scenario but backlog also reports the healthy subscribers'
// deliveries per one-second window, from the first post until the last of
// them arrived (while they had work): a window without any is a stall.
//
// Generating RSA keys is slow, so -keys keys (default 4) are generated in
// parallel and shared: each simulated actor still has its own key id and
// actor document, so the relay fetches and caches every one separately.
// Only loopback addresses are used; every wait is bounded by -timeout.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store/pgstore"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	relayBin  string
	relayArgs string
	relayEnv  string
	k, m      int
	perHost   int
	rate      float64
	scenario  string
	rounds    int
	keys      int
	signTime  time.Duration
	timeout   time.Duration
	settle    time.Duration
	verbose   bool
	dbURL     string
	processes int
}

// runSpec is one scenario run: the scenario and how many relay processes
// share the work.
type runSpec struct {
	scenario  string
	processes int
}

func run(args []string) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.relayBin, "relay-bin", "", "relay binary to run (default: go build ./examples/relay into a temporary directory)")
	fs.StringVar(&o.relayArgs, "relay-args", "", "extra arguments for the relay, space-separated")
	fs.StringVar(&o.relayEnv, "relay-env", "", "extra environment for the relay, space-separated NAME=value (e.g. GOMEMLIMIT=64MiB)")
	fs.IntVar(&o.k, "k", 200, "number of subscribers")
	fs.IntVar(&o.m, "m", 50, "number of public posts")
	fs.IntVar(&o.perHost, "per-host", 1, "subscribers per simulated host (each with its own actor and inbox)")
	fs.Float64Var(&o.rate, "rate", 0, "posts per second (0: as fast as the relay takes them)")
	fs.StringVar(&o.scenario, "scenario", "normal", "normal, hang, fail500, hangfail, hang10, compare, compare10, backlog or scaleout")
	fs.IntVar(&o.rounds, "rounds", 1, "compare and scaleout scenarios: the two runs of a pair alternated this many times (pairs close in time share the machine's load)")
	fs.IntVar(&o.keys, "keys", 4, "distinct RSA keys shared by the simulated actors")
	fs.DurationVar(&o.signTime, "sign-time", 2*time.Second, "how long to measure the raw signing rate")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "bound on each scenario run")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "backlog scenario: wait after the last post before reading the relay's memory")
	fs.BoolVar(&o.verbose, "v", false, "show the relay's log")
	fs.StringVar(&o.dbURL, "database-url", "", "PostgreSQL connection string: the relay processes share this database (a new schema per run)")
	fs.IntVar(&o.processes, "processes", 1, "relay processes sharing -database-url, behind a round-robin reverse proxy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.k < 2 || o.m < 1 || o.perHost < 1 || o.keys < 1 || o.rounds < 1 || o.processes < 1 {
		return errors.New("need -k >= 2, -m >= 1, -per-host >= 1, -keys >= 1, -rounds >= 1, -processes >= 1")
	}
	if o.processes > 1 && o.dbURL == "" {
		return errors.New("-processes > 1 needs -database-url: the processes share a database")
	}
	var runs []runSpec
	for _, sc := range scenarioRuns(o.scenario, o.rounds) {
		runs = append(runs, runSpec{sc, o.processes})
	}
	switch o.scenario {
	case "normal", "hang", "fail500", "hangfail", "hang10", "backlog", "compare", "compare10":
	case "scaleout":
		if o.dbURL == "" || o.processes < 2 {
			return errors.New("-scenario scaleout needs -database-url and -processes >= 2")
		}
		runs = nil
		for range o.rounds {
			runs = append(runs, runSpec{"normal", 1}, runSpec{"normal", o.processes})
		}
	default:
		return fmt.Errorf("unknown -scenario %q", o.scenario)
	}
	scenarios := make([]string, len(runs))
	for i, r := range runs {
		scenarios[i] = r.scenario
	}
	if o.scenario != "normal" && o.scenario != "backlog" && o.k < 4 {
		return errors.New("the failure scenarios need -k >= 4")
	}
	if slices.Contains(scenarios, "hang10") && (o.k-o.perHost) < 12 {
		return errors.New("hang10 needs at least 12 subscribers outside the sender's host")
	}

	tmp, err := os.MkdirTemp("", "fedirelay-loadtest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.relayBin == "" {
		o.relayBin = filepath.Join(tmp, "relay")
		fmt.Println("building examples/relay ...")
		cmd := exec.Command("go", "build", "-o", o.relayBin, "./examples/relay")
		cmd.Dir = moduleRoot()
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building the relay: %w", err)
		}
	}

	fmt.Printf("generating %d RSA-2048 keys ...\n", o.keys)
	keys, err := generateKeys(o.keys)
	if err != nil {
		return err
	}
	printMachine()
	before := measureSigning(keys[0], o.signTime)
	fmt.Printf("raw RSA-2048 signing, %d goroutines for %v: %.0f signatures/s, %.3f ms CPU per signature\n",
		runtime.GOMAXPROCS(0), o.signTime, before.rate, ms(before.cpuPerSig))

	var results []*result
	for n, r := range runs {
		res, err := runScenario(o, r, keys, filepath.Join(tmp, fmt.Sprintf("%d-%s", n, r.scenario)))
		if err != nil {
			return fmt.Errorf("scenario %s: %w", r.scenario, err)
		}
		results = append(results, res)
	}
	after := measureSigning(keys[0], o.signTime)
	fmt.Printf("raw RSA-2048 signing again: %.0f signatures/s, %.3f ms CPU per signature\n", after.rate, ms(after.cpuPerSig))
	sig := signing{rate: (before.rate + after.rate) / 2, cpuPerSig: (before.cpuPerSig + after.cpuPerSig) / 2}
	fmt.Printf("reference (mean of both): %.0f signatures/s, %.3f ms CPU per signature\n\n", sig.rate, ms(sig.cpuPerSig))
	for _, res := range results {
		res.print(sig)
	}
	if strings.HasPrefix(o.scenario, "compare") {
		comparePairs(results)
	}
	if o.scenario == "scaleout" {
		compareProcesses(results)
	}
	return nil
}

// scenarioRuns returns the scenarios that -scenario runs, in order.
func scenarioRuns(scenario string, rounds int) []string {
	switch scenario {
	case "compare":
		return slices.Repeat([]string{"normal", "hangfail"}, rounds)
	case "compare10":
		return slices.Repeat([]string{"normal", "hang10"}, rounds)
	}
	return []string{scenario}
}

// compareProcesses prints, for each pair of runs of the scaleout
// scenario (one process, then several), the ratio of the times to
// deliver the whole fan-out, and their median and worst.
func compareProcesses(results []*result) {
	var ratios []float64
	fmt.Println()
	for i := 0; i+1 < len(results); i += 2 {
		one, many := results[i], results[i+1]
		if one.elapsed <= 0 {
			continue
		}
		ratio := many.elapsed.Seconds() / one.elapsed.Seconds()
		ratios = append(ratios, ratio)
		fmt.Printf("pair %d: %d process %.2f s, %d processes %.2f s: ratio %.2f; load average %s / %s\n",
			i/2+1, one.processes, one.elapsed.Seconds(), many.processes, many.elapsed.Seconds(), ratio, one.load, many.load)
	}
	if len(ratios) > 0 {
		fmt.Printf("time with several processes / time with one, over %d pairs: median %.2f, worst %.2f (below 1: faster)\n",
			len(ratios), median(ratios), slices.Max(ratios))
	}
}

// comparePairs prints the change in the healthy subscribers' deliveries/s
// from each healthy run to the failure run that followed it, and their
// median.
func comparePairs(results []*result) {
	what := map[string]string{"hangfail": "one hanging and one failing subscriber", "hang10": "ten hanging subscribers"}
	var changes []float64
	fmt.Println()
	for i := 0; i+1 < len(results); i += 2 {
		healthy, bad := results[i], results[i+1]
		if healthy.rate <= 0 {
			continue
		}
		change := 100 * (bad.rate/healthy.rate - 1)
		changes = append(changes, change)
		fmt.Printf("others' deliveries/s with %s: %.0f vs %.0f healthy = %+.1f %%; seconds without deliveries: %d vs %d; load average %s / %s\n",
			what[bad.scenario], bad.rate, healthy.rate, change, bad.zeroWindows, healthy.zeroWindows, healthy.load, bad.load)
	}
	if len(changes) > 1 {
		fmt.Printf("median change over %d pairs: %+.1f %% (from %+.1f to %+.1f %%)\n",
			len(changes), median(changes), slices.Min(changes), slices.Max(changes))
	}
}

// median returns the median of xs (not empty), which it leaves unchanged.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	return (s[(n-1)/2] + s[n/2]) / 2
}

// loadAverage returns the machine's 1-minute load average, as uptime shows it.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func printMachine() {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	fmt.Printf("machine: %d CPUs (%s), %s %s/%s\n", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// generateKeys generates n RSA-2048 keys in parallel.
func generateKeys(n int) ([]*rsa.PrivateKey, error) {
	keys := make([]*rsa.PrivateKey, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], errs[i] = rsa.GenerateKey(rand.Reader, 2048)
		}()
	}
	wg.Wait()
	return keys, errors.Join(errs...)
}

// signing is the machine's raw RSA-2048 signing performance.
type signing struct {
	rate      float64       // signatures per second, all cores
	cpuPerSig time.Duration // CPU time per signature
}

// measureSigning signs SHA-256 digests on every core for d.
func measureSigning(key *rsa.PrivateKey, d time.Duration) signing {
	digest := sha256.Sum256([]byte("fedirelay"))
	var count atomic.Int64
	cpu0 := selfCPU()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:]); err == nil {
					count.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	n := count.Load()
	if n == 0 {
		return signing{}
	}
	return signing{rate: float64(n) / elapsed.Seconds(), cpuPerSig: cpu / time.Duration(n)}
}

// selfCPU returns this process's CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// result is what one scenario run measured.
type result struct {
	scenario     string
	k, m, hosts  int
	expected     int // deliveries to healthy subscribers
	perPost      int // deliveries per post
	got, dups    int
	badSigs      int64
	rate         float64 // healthy deliveries per second
	p50, p99     time.Duration
	relayCPU     time.Duration // during the posting phase
	relayUser    time.Duration // its user part
	relaySys     time.Duration // its system (kernel) part
	cpuDeliv     int           // deliveries attempted the CPU time is divided by
	peakRSS      int64         // bytes
	backlog      int
	postDuration time.Duration
	// windows counts healthy deliveries per second from the first post
	// to the last healthy arrival; zeroWindows those without any.
	windows     []int
	zeroWindows int
	load        string        // 1-minute load average before the run
	processes   int           // relay processes
	elapsed     time.Duration // from the first post to the last healthy arrival
}

func (res *result) print(sig signing) {
	fmt.Printf("scenario %s: K=%d subscribers on %d hosts, M=%d posts, %d relay process(es) (load average %s)\n", res.scenario, res.k, res.hosts, res.m, res.processes, res.load)
	if res.scenario == "backlog" {
		fmt.Printf("  queued deliveries (M × subscribers not on the sender's host): %d, posted in %v\n", res.backlog, res.postDuration.Round(time.Millisecond))
		fmt.Printf("  relay peak RSS: %.1f MB\n", float64(res.peakRSS)/1e6)
		return
	}
	fmt.Printf("  delivered to healthy subscribers: %d of %d (duplicates %d, bad signatures %d)\n", res.got, res.expected, res.dups, res.badSigs)
	fmt.Printf("  throughput: %.0f deliveries/s = %.2f × the raw signing rate; all delivered in %.2f s\n", res.rate, res.rate/sig.rate, res.elapsed.Seconds())
	// The last delivery of a post cannot arrive before the relay signed
	// one request per subscriber on every core.
	floor := time.Duration(float64(sig.cpuPerSig) * float64(res.perPost) / float64(runtime.NumCPU()))
	fmt.Printf("  post-to-arrival latency: p50 %.1f ms, p99 %.1f ms (floor: %d signatures on %d cores = %.1f ms; p99 = %.1f × floor)\n",
		ms(res.p50), ms(res.p99), res.perPost, runtime.NumCPU(), ms(floor), float64(res.p99)/float64(floor))
	if res.cpuDeliv > 0 {
		per := res.relayCPU / time.Duration(res.cpuDeliv)
		fmt.Printf("  relay CPU: %.2f s (user %.2f s, system %.2f s) for %d deliveries = %.3f ms per delivery = %.2f × one signature\n",
			res.relayCPU.Seconds(), res.relayUser.Seconds(), res.relaySys.Seconds(), res.cpuDeliv, ms(per), float64(per)/float64(sig.cpuPerSig))
	}
	fmt.Printf("  relay peak RSS: %.1f MB\n", float64(res.peakRSS)/1e6)
	if len(res.windows) > 0 {
		fmt.Printf("  deliveries per second (%d windows, %d without any): %s\n", len(res.windows), res.zeroWindows, fmt.Sprint(res.windows))
	}
}

// runScenario runs one scenario against fresh relay processes, with their
// files in dir.
func runScenario(o options, run runSpec, keys []*rsa.PrivateKey, dir string) (*result, error) {
	scenario := run.scenario
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	fmt.Printf("\n== scenario %s: starting %d relay process(es)\n", scenario, run.processes)
	rp, err := startRelays(ctx, o, dir, run.processes)
	if err != nil {
		return nil, err
	}
	defer rp.stop()

	f, err := newFleet(ctx, o, keys, rp.baseURL)
	if err != nil {
		return nil, err
	}
	defer f.close()
	fmt.Printf("subscribing %d actors on %d hosts ...\n", len(f.actors), len(f.hosts))
	t0 := time.Now()
	if err := f.subscribeAll(ctx); err != nil {
		return nil, err
	}
	fmt.Printf("subscribed in %v\n", time.Since(t0).Round(time.Millisecond))

	sender := f.actors[0]
	var healthy []*simActor
	for _, a := range f.actors {
		if a.host == sender.host {
			continue
		}
		healthy = append(healthy, a)
	}
	// The failing subscribers are the first two on other hosts.
	switch scenario {
	case "hang":
		healthy[0].mode.Store(modeHang)
		healthy = healthy[1:]
	case "fail500":
		healthy[0].mode.Store(mode500)
		healthy = healthy[1:]
	case "hangfail":
		healthy[0].mode.Store(modeHang)
		healthy[1].mode.Store(mode500)
		healthy = healthy[2:]
	case "hang10":
		// Spread over the fleet, not all first in the fan-out order.
		step := len(healthy) / 10
		var rest []*simActor
		for i, a := range healthy {
			if i%step == 0 && i/step < 10 {
				a.mode.Store(modeHang)
				continue
			}
			rest = append(rest, a)
		}
		healthy = rest
	case "backlog":
		for _, a := range healthy {
			a.mode.Store(mode503)
		}
	}
	res := &result{scenario: scenario, k: o.k, m: o.m, hosts: len(f.hosts), load: loadAverage(), processes: run.processes}

	fmt.Printf("posting %d activities ...\n", o.m)
	user0, sys0, err := rp.cpuSplit()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := f.postAll(ctx, sender, o.m, o.rate); err != nil {
		return nil, err
	}
	res.postDuration = time.Since(start)

	if scenario == "backlog" {
		res.backlog = o.m * len(healthy)
		fmt.Printf("%d deliveries queued; waiting %v ...\n", res.backlog, o.settle)
		select {
		case <-time.After(o.settle):
		case <-ctx.Done():
		}
		res.peakRSS, err = rp.peakRSS()
		return res, err
	}

	res.expected = o.m * len(healthy)
	res.perPost = len(f.actors) - len(sender.host.actors)
	counted := func() int {
		n := 0
		for _, a := range healthy {
			n += int(a.got.Load())
		}
		return n
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for counted() < res.expected {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("only %d of %d deliveries arrived within -timeout", counted(), res.expected)
		case <-tick.C:
		}
		if time.Since(lastReport) > 5*time.Second {
			fmt.Printf("  %d of %d arrived\n", counted(), res.expected)
			lastReport = time.Now()
		}
	}
	user1, sys1, err := rp.cpuSplit()
	if err != nil {
		return nil, err
	}
	res.relayUser, res.relaySys = user1-user0, sys1-sys0
	res.relayCPU = res.relayUser + res.relaySys
	res.peakRSS, err = rp.peakRSS()
	if err != nil {
		return nil, err
	}

	var lat []time.Duration
	var last time.Time
	var arrived []time.Time
	for _, a := range healthy {
		a.mu.Lock()
		for _, arr := range a.arrivals {
			lat = append(lat, arr.latency)
			arrived = append(arrived, arr.at)
			if arr.at.After(last) {
				last = arr.at
			}
		}
		res.dups += a.dups
		a.mu.Unlock()
	}
	res.windows = make([]int, int(last.Sub(start)/time.Second)+1)
	for _, at := range arrived {
		res.windows[int(at.Sub(start)/time.Second)]++
	}
	for _, n := range res.windows {
		if n == 0 {
			res.zeroWindows++
		}
	}
	res.got = len(lat)
	slices.Sort(lat)
	res.p50 = lat[len(lat)*50/100]
	res.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	res.elapsed = last.Sub(start)
	res.rate = float64(res.got) / res.elapsed.Seconds()
	res.badSigs = f.badSigs.Load()
	// The relay's work: the deliveries that arrived plus the attempts to
	// the failing subscribers (a hanging one costs a signature per attempt
	// too).
	res.cpuDeliv = res.got
	for _, a := range f.actors {
		if m := a.mode.Load(); m == modeHang || m == mode500 {
			res.cpuDeliv += int(a.attempts.Load())
		}
	}
	return res, nil
}

// relayProcess is the relay running as a child process.
type relayProcess struct {
	cmd     *exec.Cmd
	baseURL string
	logPath string
	done    chan error
}

func startRelay(ctx context.Context, o options, dir, baseURL, dbURL string) (*relayProcess, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	base := "http://" + addr
	if baseURL == "" {
		baseURL = base
	}
	args := []string{"-addr", addr, "-base-url", baseURL, "-data", filepath.Join(dir, "data"), "-log-level", "warn"}
	if dbURL != "" {
		args = append(args, "-database-url", dbURL)
	}
	args = append(args, loopbackFlags(o.relayBin)...)
	args = append(args, strings.Fields(o.relayArgs)...)
	logPath := filepath.Join(dir, "relay.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.relayBin, args...)
	cmd.Env = append(os.Environ(), strings.Fields(o.relayEnv)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if o.verbose {
		cmd.Stderr = io.MultiWriter(logFile, os.Stderr)
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	shown := slices.Clone(args)
	for i, a := range shown {
		if a == dbURL && dbURL != "" {
			shown[i] = pgstore.RedactConnString(dbURL)
		}
	}
	fmt.Printf("relay pid %d: %s %s %s (log %s)\n", cmd.Process.Pid, o.relayEnv, o.relayBin, strings.Join(shown, " "), logPath)
	rp := &relayProcess{cmd: cmd, baseURL: base, logPath: logPath, done: make(chan error, 1)}
	go func() { rp.done <- cmd.Wait(); logFile.Close() }()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(base + "/actor")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return rp, nil
			}
		}
		select {
		case err := <-rp.done:
			rp.done <- err
			return nil, fmt.Errorf("the relay exited: %v (see %s)", err, logPath)
		case <-ctx.Done():
			rp.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			rp.stop()
			return nil, fmt.Errorf("the relay did not start (see %s)", logPath)
		}
	}
}

// loopbackFlags returns the flags that let the relay deliver to plain-http
// loopback addresses, as far as the binary knows them.
func loopbackFlags(bin string) []string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	help := string(out)
	var flags []string
	if strings.Contains(help, "-allow-private") {
		flags = append(flags, "-allow-private", "127.0.0.0/8")
	}
	if strings.Contains(help, "-allow-http") {
		flags = append(flags, "-allow-http")
	}
	if len(flags) == 0 {
		fmt.Fprintln(os.Stderr, "loadtest: warning: the relay has no -allow-private or -allow-http flag; "+
			"if it refuses plain-http loopback addresses, pass a binary that allows them with -relay-bin")
	}
	return flags
}

// stop ends the relay with SIGTERM (SIGKILL after a minute).
func (rp *relayProcess) stop() {
	_ = rp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-rp.done:
		rp.done <- err
	case <-time.After(time.Minute):
		_ = rp.cmd.Process.Kill()
		<-rp.done
	}
}

// cpuSplit returns the relay's user and system CPU time (all threads) from
// /proc/<pid>/stat.
func (rp *relayProcess) cpuSplit() (user, system time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", rp.cmd.Process.Pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading the relay's CPU time (Linux /proc needed): %w", err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 (1-based) of the whole line.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	ut, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(ut) * time.Second / clockTicks, time.Duration(st) * time.Second / clockTicks, nil
}

// peakRSS returns the relay's peak resident set size (VmHWM).
func (rp *relayProcess) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", rp.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/<pid>/status")
}

// Modes of a simulated actor's inbox.
const (
	modeOK int32 = iota
	modeHang
	mode500
	mode503
)

// fleet is the set of simulated instances.
type fleet struct {
	relayBase  string
	relayInbox string
	relayKey   crypto.PublicKey
	relayKeyID string
	client     *http.Client
	hosts      []*simHost
	actors     []*simActor
	done       chan struct{}
	badSigs    atomic.Int64

	mu     sync.Mutex
	posted map[string]time.Time // object id → when its signed post was handed to the HTTP client
}

// simHost is one loopback HTTP server holding some actors.
type simHost struct {
	base   string
	srv    *http.Server
	actors map[string]*simActor // by path
}

// simActor is a simulated instance actor that subscribes to the relay.
type simActor struct {
	host     *simHost
	id       string
	keyID    string
	key      *rsa.PrivateKey
	doc      []byte
	mode     atomic.Int32
	accepted chan struct{}
	once     sync.Once
	got      atomic.Int64 // distinct posts received
	attempts atomic.Int64 // deliveries refused by the mode

	mu       sync.Mutex
	seen     map[string]bool
	arrivals []arrival
	dups     int
}

type arrival struct {
	at      time.Time
	latency time.Duration
}

func newFleet(ctx context.Context, o options, keys []*rsa.PrivateKey, relayBase string) (*fleet, error) {
	f := &fleet{
		relayBase:  relayBase,
		relayInbox: relayBase + "/inbox",
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute,
		}},
		done:   make(chan struct{}),
		posted: map[string]time.Time{},
	}
	if err := f.fetchRelayKey(ctx); err != nil {
		return nil, err
	}
	nHosts := (o.k + o.perHost - 1) / o.perHost
	pems := make([]string, len(keys))
	for i, k := range keys {
		p, err := httpsig.MarshalPublicKeyPEM(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		pems[i] = p
	}
	for h := range nHosts {
		ln, err := listenLoopback(h)
		if err != nil {
			f.close()
			return nil, err
		}
		host := &simHost{base: "http://" + ln.Addr().String(), actors: map[string]*simActor{}}
		host.srv = &http.Server{Handler: f.handler(host), ReadHeaderTimeout: 10 * time.Second}
		go host.srv.Serve(ln)
		f.hosts = append(f.hosts, host)
		for j := 0; j < o.perHost && len(f.actors) < o.k; j++ {
			n := len(f.actors)
			path := fmt.Sprintf("/users/u%d", n)
			a := &simActor{
				host: host, id: host.base + path, key: keys[n%len(keys)],
				accepted: make(chan struct{}), seen: map[string]bool{},
			}
			a.keyID = a.id + "#main-key"
			a.doc, _ = json.Marshal(map[string]any{
				"@context":          []string{"https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"},
				"id":                a.id,
				"type":              "Application",
				"preferredUsername": fmt.Sprintf("u%d", n),
				"inbox":             a.id + "/inbox",
				"outbox":            a.id + "/outbox",
				"followers":         a.id + "/followers",
				"publicKey":         map[string]string{"id": a.keyID, "owner": a.id, "publicKeyPem": pems[n%len(keys)]},
			})
			host.actors[path] = a
			f.actors = append(f.actors, a)
		}
	}
	return f, nil
}

// listenLoopback listens on 127.0.0.<2 + n%250>:0 (127.0.0.1 if that
// address cannot be bound). Only loopback addresses are used.
func listenLoopback(n int) (net.Listener, error) {
	if ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.%d:0", 2+n%250)); err == nil {
		return ln, nil
	}
	return net.Listen("tcp4", "127.0.0.1:0")
}

func (f *fleet) close() {
	select {
	case <-f.done:
		return
	default:
	}
	close(f.done)
	for _, h := range f.hosts {
		_ = h.srv.Close()
	}
}

// fetchRelayKey reads the relay actor's public key, which every simulated
// inbox verifies deliveries with.
func (f *fleet) fetchRelayKey(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.relayBase+"/actor", nil)
	req.Header.Set("Accept", "application/activity+json")
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var doc struct {
		PublicKey struct {
			ID  string `json:"id"`
			PEM string `json:"publicKeyPem"`
		} `json:"publicKey"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return fmt.Errorf("relay actor: %w", err)
	}
	f.relayKeyID = doc.PublicKey.ID
	f.relayKey, err = httpsig.ParsePublicKeyPEM(doc.PublicKey.PEM)
	return err
}

func (f *fleet) handler(h *simHost) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		path, isInbox := strings.CutSuffix(r.URL.Path, "/inbox")
		a := h.actors[path]
		switch {
		case a == nil:
			http.NotFound(w, r)
		case r.Method == http.MethodGet && !isInbox:
			w.Header().Set("Content-Type", "application/activity+json")
			_, _ = w.Write(a.doc)
		case r.Method == http.MethodPost && isInbox:
			f.serveInbox(w, r, a, now)
		default:
			http.Error(w, "not here", http.StatusMethodNotAllowed)
		}
	})
}

// serveInbox verifies a delivery from the relay and records it.
func (f *fleet) serveInbox(w http.ResponseWriter, r *http.Request, a *simActor, now time.Time) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	switch a.mode.Load() {
	case modeHang:
		a.attempts.Add(1)
		select {
		case <-r.Context().Done():
		case <-f.done:
		}
		http.Error(w, "hung", http.StatusServiceUnavailable)
		return
	case mode500:
		a.attempts.Add(1)
		http.Error(w, "failing", http.StatusInternalServerError)
		return
	case mode503:
		a.attempts.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	sig, err := httpsig.FromRequest(r)
	if err == nil {
		err = sig.Check(r, body, httpsig.VerifyOptions{})
	}
	if err == nil && sig.KeyID != f.relayKeyID {
		err = fmt.Errorf("signed by %s", sig.KeyID)
	}
	if err == nil {
		err = sig.Verify(r, f.relayKey)
	}
	if err != nil {
		f.badSigs.Add(1)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var act struct {
		Type   string          `json:"type"`
		Object json.RawMessage `json:"object"`
	}
	if err := json.Unmarshal(body, &act); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusAccepted)
	switch act.Type {
	case "Accept":
		a.once.Do(func() { close(a.accepted) })
	case "Create", "Announce":
		var objectID string
		if json.Unmarshal(act.Object, &objectID) != nil {
			var o struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(act.Object, &o)
			objectID = o.ID
		}
		f.mu.Lock()
		postedAt, ok := f.posted[objectID]
		f.mu.Unlock()
		if !ok {
			return
		}
		a.mu.Lock()
		if a.seen[objectID] {
			a.dups++
		} else {
			a.seen[objectID] = true
			a.arrivals = append(a.arrivals, arrival{at: now, latency: now.Sub(postedAt)})
			a.got.Add(1)
		}
		a.mu.Unlock()
	}
}

// send posts a signed activity to the relay's inbox, retrying while the
// relay answers 429 or 503 (it may rate-limit key fetches per host). If
// sending is not nil, it is called as each attempt's signed request is
// handed to the HTTP client: the moment the relay could start on it.
func (f *fleet) send(ctx context.Context, a *simActor, doc map[string]any, sending func()) error {
	body, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	signer := httpsig.Signer{KeyID: a.keyID, Key: a.key}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.relayInbox, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/activity+json")
		if err := signer.SignRequest(req, body, time.Now()); err != nil {
			return err
		}
		if sending != nil {
			sending()
		}
		resp, err := f.client.Do(req)
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		switch {
		case resp.StatusCode/100 == 2:
			return nil
		case (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) && attempt < 20:
			wait := time.Second
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
				wait = time.Duration(min(s, 30)) * time.Second
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return ctx.Err()
			}
		default:
			return fmt.Errorf("%s %s: HTTP %d: %s", doc["type"], a.id, resp.StatusCode, strings.TrimSpace(string(msg)))
		}
	}
}

// subscribeAll subscribes every actor Mastodon-style and waits for the
// Accepts.
func (f *fleet) subscribeAll(ctx context.Context) error {
	work := make(chan *simActor)
	errs := make(chan error, len(f.actors))
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range work {
				err := f.send(ctx, a, map[string]any{
					"@context": "https://www.w3.org/ns/activitystreams",
					"id":       a.id + "#follow-" + strconv.FormatInt(time.Now().UnixNano(), 36),
					"type":     "Follow",
					"actor":    a.id,
					"object":   "https://www.w3.org/ns/activitystreams#Public",
				}, nil)
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	for _, a := range f.actors {
		work <- a
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	for _, a := range f.actors {
		select {
		case <-a.accepted:
		case <-ctx.Done():
			return fmt.Errorf("no Accept for %s: %w", a.id, ctx.Err())
		}
	}
	return nil
}

// postAll publishes m public notes from a, at rate posts per second (0:
// one after the other as fast as the relay answers).
func (f *fleet) postAll(ctx context.Context, a *simActor, m int, rate float64) error {
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	errs := make(chan error, m)
	var wg sync.WaitGroup
	for n := range m {
		if tick != nil && n > 0 {
			select {
			case <-tick:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		noteID := fmt.Sprintf("%s/statuses/%d", a.id, n)
		now := time.Now().UTC().Format(time.RFC3339)
		public := []string{"https://www.w3.org/ns/activitystreams#Public"}
		doc := map[string]any{
			"@context":  "https://www.w3.org/ns/activitystreams",
			"id":        noteID + "/activity",
			"type":      "Create",
			"actor":     a.id,
			"published": now,
			"to":        public,
			"cc":        []string{a.id + "/followers"},
			"object": map[string]any{
				"id": noteID, "type": "Note", "attributedTo": a.id, "published": now,
				"content": fmt.Sprintf("<p>load test post %d</p>", n), "to": public,
				"cc": []string{a.id + "/followers"},
			},
		}
		// Latency counts from the moment the signed post goes to the
		// relay: building and signing it is the instance's work.
		sending := func() {
			f.mu.Lock()
			f.posted[noteID] = time.Now()
			f.mu.Unlock()
		}
		if rate > 0 {
			// Paced posts are sent concurrently so that a slow answer does
			// not delay the next post.
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := f.send(ctx, a, doc, sending); err != nil {
					errs <- err
				}
			}()
			continue
		}
		if err := f.send(ctx, a, doc, sending); err != nil {
			return err
		}
	}
	wg.Wait()
	close(errs)
	return <-errs
}
