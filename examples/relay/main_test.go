package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store/filestore"
)

// runAsRelay makes the test binary act as the relay command when a test
// starts it as a child process, so tests run the real program, flags and
// all, as README shows it.
const runAsRelay = "FEDIRELAY_TEST_RUN_RELAY"

// childSetups run in the child process before the relay command, to set
// up its environment (see storefail_linux_test.go).
var childSetups []func()

func TestMain(m *testing.M) {
	if os.Getenv(runAsRelay) == "1" {
		for _, setup := range childSetups {
			setup()
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// relayEnv is the environment of the relay command run as a child
// process. Under the race detector a process sleeps a second before it
// exits (to catch races at exit, GORACE's atexit_sleep_ms): the children
// do not, so that a relay's stop takes as long as its shutdown.
func relayEnv() []string {
	return append(os.Environ(), runAsRelay+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// relayProcess is the relay command running as a child process.
type relayProcess struct {
	cmd     *exec.Cmd
	BaseURL string
	addr    string // set by startRelayAt
	exited  chan error
	stdout  syncBuffer // what it printed, up to the end of its start-up lines
	stderr  syncBuffer // its logs
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// startRelayProcess runs the relay command with -addr, -base-url and -data
// set (plus args) and waits until it prints that it listens. The process
// is killed at the end of the test if still running.
func startRelayProcess(t *testing.T, dataDir string, args ...string) *relayProcess {
	t.Helper()
	return startRelayAt(t, freeAddr(t), dataDir, args...)
}

// startRelayAt is startRelayProcess on a given address, so that a relay
// restarted (after a crash, or on another data directory) keeps its URL.
// Later args override earlier ones (-log-level error, say).
//
// A relay started on a new data directory gets a fixed test key (through
// the key file earlier versions kept, which the relay adopts) instead of
// generating one, which takes a time that varies with the machine's load.
func startRelayAt(t *testing.T, addr, dataDir string, args ...string) *relayProcess {
	t.Helper()
	seedTestKey(t, dataDir)
	base := "http://" + addr
	// The fake instances serve plain http on loopback, which the relay
	// refuses by default.
	p := startRelayArgs(t, base, append([]string{"-addr", addr, "-base-url", base, "-data", dataDir, "-log-level", "warn",
		"-allow-private", "127.0.0.0/8"}, args...)...)
	p.addr = addr
	return p
}

// BackendURL returns the URL of the address the process listens on,
// which differs from BaseURL when a -base-url was given (a proxy's).
func (p *relayProcess) BackendURL() string { return "http://" + p.addr }

// seedTestKey gives a new data directory the test key of testdata.
func seedTestKey(t *testing.T, dataDir string) {
	t.Helper()
	for _, name := range []string{filestore.FileName, legacyKeyFile} {
		if _, err := os.Stat(filepath.Join(dataDir, name)); err == nil {
			return
		}
	}
	key, err := os.ReadFile(filepath.Join("testdata", legacyKeyFile))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(dataDir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, legacyKeyFile), key, 0o600))
}

// startRelayArgs runs the relay command with args, whose public URL is
// base, and waits until it prints that it listens. Its standard error goes
// to the test's and to p.Stderr.
func startRelayArgs(t *testing.T, base string, args ...string) *relayProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = relayEnv()
	p := &relayProcess{cmd: cmd, BaseURL: base, exited: make(chan error, 1)}
	cmd.Stderr = io.MultiWriter(os.Stderr, &p.stderr)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.stdout.Write([]byte(sc.Text() + "\n"))
			if strings.HasPrefix(sc.Text(), "  state in") {
				ready <- sc.Text()
			}
		}
	}()
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case <-ready:
	case err := <-p.exited:
		t.Fatalf("relay exited before listening: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not start listening")
	}
	return p
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (p *relayProcess) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.exited:
		assert.NoError(t, err, "clean exit on SIGTERM")
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not exit after SIGTERM")
	}
}

func TestExampleRelayRelaysBetweenInstances(t *testing.T) {
	p := startRelayProcess(t, t.TempDir())
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	a := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	b := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	require.NotEqual(t, "127.0.0.1", strings.Split(a.Host(), ":")[0], "instances live on their own 127.0.0.x")
	for _, i := range []*relaytest.Instance{a, b} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
		i.WaitSubscribed(t, 10*time.Second)
	}
	note, err := a.Post(ctx, inbox, "alice", "hello through the example relay")
	require.NoError(t, err)
	rc := b.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool {
		return rc.Type == "Create" && rc.ObjectID == note.ID
	})
	assert.True(t, rc.LDVerified, "forwarded verbatim")
	assert.Empty(t, b.Rejected())
	p.stop(t)
}
