package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runRelay runs the relay command with args to its end and returns its
// exit status, standard output and standard error.
func runRelay(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = relayEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	require.NoError(t, err)
	return 0, stdout.String(), stderr.String()
}

// A wrong command line starts nothing and creates nothing: exit status 2,
// one line naming the problem (the usage text only for an unknown flag).
func TestCommandLineRefusedBeforeAnything(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string // -data DIR is added first, -addr a free address last
		want  string   // the whole first line of standard error
		usage bool
	}{
		{"stray argument first", []string{"extra"}, `relay: unknown command "extra" (commands: ` + commandNames() + `; flags start with -; see relay help)`, false},
		{"stray argument after flags", []string{"-name", "x", "extra", "-approval"}, `relay: unexpected argument "extra": flags go first, and commands (` + commandNames() + `) before them`, false},
		{"bad -base-url", []string{"-base-url", "relay.example"}, `relay: -base-url must be an absolute http(s) URL: "relay.example"`, false},
		{"-base-url with a query", []string{"-base-url", "https://relay.example/?a=b"}, `relay: -base-url must not have a query, fragment or user info: "https://relay.example/?a=b"`, false},
		{"bad -allow-private", []string{"-allow-private", "127.0.0.0/8,localhost"}, `relay: -allow-private must be comma-separated address ranges such as 127.0.0.0/8 (or addresses): "localhost" is not one`, false},
		{"bad -trusted-proxies", []string{"-trusted-proxies", "10.0.0.0/33"}, `relay: -trusted-proxies must be comma-separated address ranges such as 127.0.0.0/8 (or addresses): "10.0.0.0/33" is not one`, false},
		{"bad -log-level", []string{"-log-level", "loud"}, `relay: -log-level must be debug, info, warn or error: "loud"`, false},
		{"bad -addr", []string{"-addr", "8080"}, `relay: -addr must be host:port or :port, such as localhost:8080: "8080"`, false},
		{"bad boolean", []string{"-approval=maybe"}, `relay: invalid boolean value "maybe" for -approval: parse error (see relay -h)`, false},
		{"unknown flag", []string{"-bogus"}, `relay: flag provided but not defined: -bogus`, true},
		{"import with a stray argument", nil, `relay: import: unexpected argument "extra"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"-data", dir}, tc.args...)
			if tc.args == nil {
				args = []string{"import", "-data", dir, "extra"}
			} else if !strings.HasPrefix(tc.args[0], "-") {
				args = append(tc.args, "-data", dir)
			}
			if tc.name != "bad -addr" {
				args = append(args, "-addr", freeAddr(t))
			}
			code, stdout, stderr := runRelay(t, args...)
			assert.Equal(t, exitUsage, code, stderr)
			assert.Empty(t, stdout)
			first, rest, _ := strings.Cut(stderr, "\n")
			assert.Equal(t, tc.want, first)
			assert.NotContains(t, stderr, "relay: relay:")
			assert.Equal(t, tc.usage, strings.Contains(rest, "Usage:"), "usage text only for an unknown flag")
			assert.NoDirExists(t, dir, "nothing created")
		})
	}
}

// A busy port stops the relay (exit status 1) before the data directory
// and the key are created.
func TestBusyPortCreatesNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dir := filepath.Join(t.TempDir(), "data")
	code, _, stderr := runRelay(t, "-addr", ln.Addr().String(), "-data", dir)
	assert.Equal(t, exitFailure, code)
	last := strings.TrimSpace(stderr)[strings.LastIndex(strings.TrimSpace(stderr), "\n")+1:]
	assert.True(t, strings.HasPrefix(last, "relay: -addr "+ln.Addr().String()+": listen tcp"), stderr)
	assert.Contains(t, stderr, "address already in use")
	assert.NotContains(t, stderr, "relay: relay:")
	assert.NoDirExists(t, dir)
}

func TestHelpListsCommands(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}} {
		code, stdout, stderr := runRelay(t, args...)
		assert.Equal(t, exitOK, code, args)
		assert.Empty(t, stderr)
		for _, c := range commands {
			assert.Contains(t, stdout, "relay "+c.name, args)
		}
		assert.Contains(t, stdout, "-trusted-proxies", args)
	}
}

// Without -base-url, the public URL follows -addr, with a warning when it
// is plain http on a loopback host.
func TestBaseURLFollowsAddr(t *testing.T) {
	addr := freeAddr(t)
	base := "http://" + addr
	p := startRelayArgs(t, base, "-addr", addr, "-data", t.TempDir())
	assert.Contains(t, p.stdout.String(), "public URL  "+base+"\n")
	assert.Contains(t, p.stderr.String(), "plain http on a loopback host: fine for a local try; other servers cannot reach it")
	doc := getJSON(t, base+"/actor")
	assert.Equal(t, base+"/actor", doc["id"])
	p.stop(t)

	assert.Equal(t, "http://localhost:8099", defaultBaseURL("", "8099"))
	assert.Equal(t, "http://localhost:8099", defaultBaseURL("0.0.0.0", "8099"))
	assert.Equal(t, "http://127.0.0.1:8099", defaultBaseURL("127.0.0.1", "8099"))
	assert.Equal(t, "http://[::1]:8099", defaultBaseURL("::1", "8099"))
	assert.Equal(t, "http://relay.example:80", defaultBaseURL("relay.example", "80"))
}

// With -approval, NodeInfo says that registrations are not open.
func TestApprovalClosesRegistrations(t *testing.T) {
	for _, approval := range []bool{false, true} {
		args := []string{}
		if approval {
			args = append(args, "-approval")
		}
		p := startRelayProcess(t, t.TempDir(), args...)
		for _, version := range []string{"2.0", "2.1"} {
			doc := getJSON(t, p.BaseURL+"/nodeinfo/"+version)
			assert.Equal(t, !approval, doc["openRegistrations"], "-approval=%v, NodeInfo %s", approval, version)
		}
		p.stop(t)
	}
}

// Logs name the client from X-Forwarded-For or Forwarded for requests
// from -trusted-proxies only.
func TestTrustedProxiesInLogs(t *testing.T) {
	p := startRelayProcess(t, t.TempDir(), "-log-level", "info", "-trusted-proxies", "127.0.0.1")
	post := func(from string, header, value string) {
		t.Helper()
		client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
			LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)},
		}).DialContext}}
		req, err := http.NewRequest(http.MethodPost, p.BaseURL+"/inbox", strings.NewReader(`{}`))
		require.NoError(t, err)
		req.Header.Set(header, value)
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "unsigned")
	}
	refusals := func() []string {
		var out []string
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(line, "inbox: refused") {
				_, remote, _ := strings.Cut(line, " remote=")
				out = append(out, remote)
			}
		}
		return out
	}
	post("127.0.0.1", "X-Forwarded-For", "198.51.100.9, 203.0.113.7")
	post("127.0.0.1", "Forwarded", `for="[2001:db8::7]:4711";proto=https`)
	post("127.0.0.2", "X-Forwarded-For", "203.0.113.66") // not a trusted proxy
	require.Eventually(t, func() bool { return len(refusals()) == 3 }, 10*time.Second, 10*time.Millisecond, "three refusals logged")
	got := refusals()
	assert.Equal(t, "203.0.113.7", got[0], "rightmost hop of X-Forwarded-For")
	assert.Equal(t, "2001:db8::7", got[1], "for= of Forwarded")
	assert.True(t, strings.HasPrefix(got[2], "127.0.0.2:"), "the peer's address, not its header: %s", got[2])
	p.stop(t)
}

// Shutdown does not wait for connections that have sent no request (Go's
// http.Server waits up to 5 seconds for them): with nothing in flight,
// shutdown succeeds even with a context that has already ended.
func TestShutdownDoesNotWaitForFreshConnections(t *testing.T) {
	srv := newHTTPServer(http.NotFoundHandler(), quietLogger())
	// The client reads the answer before the server marks the connection
	// idle: Shutdown must not be called before, or with an ended context it
	// rightly fails on a connection still active.
	var idleMu sync.Mutex
	idleConns := 0
	track := srv.Server.ConnState
	srv.Server.ConnState = func(c net.Conn, state http.ConnState) {
		track(c, state)
		if state == http.StateIdle {
			idleMu.Lock()
			idleConns++
			idleMu.Unlock()
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// One connection that made a request and is idle, one that sent
	// nothing.
	idle := &http.Client{}
	resp, err := idle.Get("http://" + ln.Addr().String() + "/")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fresh, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer fresh.Close()
	require.Eventually(t, func() bool {
		idleMu.Lock()
		defer idleMu.Unlock()
		return srv.freshConns() == 1 && idleConns == 1
	}, 10*time.Second, time.Millisecond)

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, srv.shutdown(ended), "nothing in flight: nothing to wait for")
	_, err = fresh.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "the fresh connection is closed")
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// getJSON GETs url and decodes its JSON object.
func getJSON(t *testing.T, url string) map[string]any {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/activity+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, url)
	var doc map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	return doc
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
