package filestore_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

// childEnv makes the test binary run crashWriter instead of the tests; its
// value is the store's directory.
const childEnv = "FILESTORE_TEST_CRASH_WRITER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		crashWriter(dir)
		return
	}
	os.Exit(m.Run())
}

// Parameters of the crash writer.
const (
	crashWorkers = 4  // goroutines writing concurrently (so commits are shared)
	crashFanout  = 10 // deliveries per step
)

// crashWriter runs in a child process. Each of crashWorkers goroutines w
// repeats steps i = 1, 2, ...: enqueue payload w/p<i> with crashFanout
// deliveries; put value w = i; set subscriber w's Delivered to i; mark w/i
// seen; increment the Delivered count of the shared subscriber, which all
// workers update concurrently; complete the first half of step i-1's deliveries. After each step
// it prints "w i": everything up to step i was acknowledged. It runs until
// it is killed, and starts again with the last step whose value it finds
// committed (every change of a step can be repeated).
func crashWriter(dir string) {
	s, err := filestore.Open(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	var out sync.Mutex
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash writer:", err)
		os.Exit(3)
	}
	for w := range crashWorkers {
		// Repeat the last step whose value was committed.
		first := 1
		if v, err := s.GetValue(ctx, strconv.Itoa(w)); err == nil {
			first, _ = strconv.Atoi(string(v))
		}
		go func() {
			for i := first; ; i++ {
				pid := fmt.Sprintf("%d/p%d", w, i)
				var ds []store.Delivery
				for j := range crashFanout {
					ds = append(ds, delivery(fmt.Sprintf("%s-%d", pid, j), pid, fmt.Sprintf("h%d.example", j), t0))
				}
				if err := s.Enqueue(ctx, []store.Payload{{ID: pid, Body: []byte(pid)}}, ds); err != nil {
					fail(err)
				}
				if err := s.PutValue(ctx, strconv.Itoa(w), []byte(strconv.Itoa(i))); err != nil {
					fail(err)
				}
				if _, err := s.UpdateSubscriber(ctx, crashActor(w), func(p *store.Subscriber, _ bool) error {
					p.Host, p.State, p.Delivered = "w.example", store.StateAccepted, int64(i)
					return nil
				}); err != nil {
					fail(err)
				}
				if _, err := s.UpdateSubscriber(ctx, sharedActor, func(p *store.Subscriber, _ bool) error {
					p.Host, p.State = "w.example", store.StateAccepted
					p.Delivered++
					return nil
				}); err != nil {
					fail(err)
				}
				if _, err := s.MarkSeen(ctx, fmt.Sprintf("%d/%d", w, i), time.Now().Add(time.Hour)); err != nil {
					fail(err)
				}
				for j := range crashFanout / 2 {
					if err := s.Complete(ctx, store.IDs(fmt.Sprintf("%d/p%d-%d", w, i-1, j))...); err != nil {
						fail(err)
					}
				}
				out.Lock()
				fmt.Printf("%d %d\n", w, i)
				out.Unlock()
			}
		}()
	}
	select {}
}

func crashActor(w int) string { return fmt.Sprintf("https://w.example/actors/%d", w) }

// sharedActor is the subscriber all workers update.
const sharedActor = "https://w.example/shared"

// Kill points of TestCrash: round r kills the writer once it acknowledged
// a random number of steps in the r-th of crashRounds equal slices of
// 1..crashMaxSteps, so that over the rounds the kills spread from the first
// steps to the last, then waits a random moment of up to crashJitter so
// that the kill lands anywhere within a step (between a change and its
// sync, between two commits, ...).
const (
	crashRounds   = 5
	crashMaxSteps = 400
	crashJitter   = 3 * time.Millisecond
)

// crashKillPoint returns how many steps round acknowledges before the kill.
func crashKillPoint(round int) int {
	slice := crashMaxSteps / crashRounds
	return round*slice + 1 + rand.IntN(slice)
}

// TestCrash kills a process that writes to a store at a random moment,
// several times over the same directory, and checks after each kill that
// the store opens, is intact, holds every change that was acknowledged and
// holds changes in the order they were made (a later change of a worker
// never without an earlier one).
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	acked := make([]int, crashWorkers) // last step acknowledged per worker, over all rounds
	ackedSteps := 0                    // steps acknowledged, over all rounds
	for round := range crashRounds {
		target := crashKillPoint(round)
		jitter := time.Duration(rand.Int64N(int64(crashJitter)))
		last, steps := runAndKill(t, dir, target, jitter)
		t.Logf("round %d: killed %v after step %d of this run (%d acknowledged by the kill)", round, jitter, target, steps)
		for w, i := range last {
			acked[w] = max(acked[w], i)
		}
		ackedSteps += steps
		t.Logf("round %d: acknowledged steps %v, %d in all", round, acked, ackedSteps)
		// Each worker may have made one more increment per round than it
		// acknowledged (the one in flight at the kill).
		verifyCrashState(t, dir, acked, ackedSteps, ackedSteps+(round+1)*crashWorkers)
		if t.Failed() {
			return
		}
	}
}

// runAndKill runs the crash writer on dir, SIGKILLs it a time jitter after
// it acknowledged target steps in all (and every worker one at least), and
// returns the last step each worker acknowledged and how many steps were
// acknowledged in all.
func runAndKill(t *testing.T, dir string, target int, jitter time.Duration) ([]int, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var (
		mu    sync.Mutex
		last  = make([]int, crashWorkers)
		steps int
		read  = make(chan struct{})
	)
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			w, _ := strconv.Atoi(f[0])
			i, _ := strconv.Atoi(f[1])
			mu.Lock()
			last[w] = max(last[w], i)
			steps++
			mu.Unlock()
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		ready := !slicesContainsZero(last) && steps >= target
		mu.Unlock()
		if ready {
			time.Sleep(jitter)
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("the crash writer did not get going")
		}
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, cmd.Process.Kill())
	<-read // every line the process wrote before it died
	_ = cmd.Wait()
	return last, steps
}

func slicesContainsZero(s []int) bool {
	for _, v := range s {
		if v == 0 {
			return true
		}
	}
	return false
}

// verifyCrashState opens dir and checks it against the steps acknowledged:
// the last step per worker, and the range the shared count must be in.
func verifyCrashState(t *testing.T, dir string, acked []int, minShared, maxShared int) {
	t.Helper()
	ctx := t.Context()
	s, err := filestore.Open(dir, nil)
	require.NoError(t, err, "the store opens after a kill")
	defer s.Close()
	require.NoError(t, s.Check(ctx), "the file is intact")
	vals, err := s.ListValues(ctx, "")
	require.NoError(t, err)
	has := queued(t, s)

	wantDeliveries, wantPayloads := 0, 0
	for w, a := range acked {
		// Step v is the last one whose PutValue was committed: at least
		// the last acknowledged step, at most the one after it.
		v, err := strconv.Atoi(string(vals[strconv.Itoa(w)]))
		require.NoError(t, err, "value of worker %d", w)
		assert.GreaterOrEqual(t, v, a, "worker %d: an acknowledged value was lost", w)
		assert.LessOrEqual(t, v, a+1, "worker %d: value from the future", w)

		// Changes are committed in order: the subscriber update of step
		// v comes after its value, the mark after that.
		sub, err := s.GetSubscriber(ctx, crashActor(w))
		require.NoError(t, err)
		assert.Contains(t, []int64{int64(v) - 1, int64(v)}, sub.Delivered, "worker %d: subscriber out of order with value %d", w, v)
		for i := 1; i <= int(sub.Delivered)-1; i++ {
			fresh, err := s.MarkSeen(ctx, fmt.Sprintf("%d/%d", w, i), time.Now().Add(time.Hour))
			require.NoError(t, err)
			if !assert.False(t, fresh, "worker %d: mark of step %d lost", w, i) {
				break
			}
		}

		// Step e is the last step whose Enqueue was committed (v or v+1).
		// The first half of step i is completed in step i+1, after its
		// value: completely for i+2 <= v.
		e := v
		if has[fmt.Sprintf("%d/p%d-9", w, v+1)] {
			e = v + 1
		}
		for i := 1; i <= e; i++ {
			pid := fmt.Sprintf("%d/p%d", w, i)
			for j := crashFanout / 2; j < crashFanout; j++ {
				assert.True(t, has[fmt.Sprintf("%s-%d", pid, j)], "worker %d: delivery %s-%d lost", w, pid, j)
			}
			completed := 0
			for j := range crashFanout / 2 {
				if !has[fmt.Sprintf("%s-%d", pid, j)] {
					completed++
				}
			}
			if i+2 <= v {
				assert.Equal(t, crashFanout/2, completed, "worker %d: completions of step %d lost", w, i)
			}
			body, err := s.GetPayload(ctx, pid)
			if assert.NoError(t, err, "payload %s", pid) {
				assert.Equal(t, []byte(pid), body)
			}
			wantDeliveries += crashFanout - completed
			wantPayloads++
		}
		assert.False(t, has[fmt.Sprintf("%d/p%d-0", w, e+1)], "worker %d: enqueue from the future", w)
	}
	shared, err := s.GetSubscriber(ctx, sharedActor)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, shared.Delivered, int64(minShared), "acknowledged increments of the shared subscriber lost")
	assert.LessOrEqual(t, shared.Delivered, int64(maxShared), "increments of the shared subscriber from the future")

	st, err := s.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, wantDeliveries, st.Deliveries, "no delivery but those of the steps")
	assert.Equal(t, wantPayloads, st.Payloads, "no payload but those of the steps")
	assert.Equal(t, crashWorkers+1, st.Subscribers)
}

// queued returns the IDs of every queued delivery, leasing them all.
func queued(t *testing.T, s store.Store) map[string]bool {
	t.Helper()
	got, err := s.Lease(t.Context(), store.LeaseRequest{Now: t0.Add(time.Hour), Limit: 1 << 30, Duration: time.Hour})
	require.NoError(t, err)
	ids := make(map[string]bool, len(got))
	for _, d := range got {
		ids[d.ID] = true
	}
	return ids
}
