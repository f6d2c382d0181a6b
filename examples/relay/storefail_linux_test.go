//go:build linux

package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/relaytest"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

// fileSizeLimit, set in the child's environment, limits the size of the
// files the relay may write (RLIMIT_FSIZE), like a full disk: writing past
// it fails with EFBIG (the Go runtime ignores SIGXFSZ).
const fileSizeLimit = "FEDIRELAY_TEST_FSIZE"

func init() {
	childSetups = append(childSetups, func() {
		v := os.Getenv(fileSizeLimit)
		if v == "" {
			return
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err == nil {
			err = syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: n})
		}
		if err != nil {
			os.Stderr.WriteString("relay test: " + fileSizeLimit + ": " + err.Error() + "\n")
			os.Exit(2)
		}
	})
}

// TestExampleRelayExitsWhenStoreFails fills the relay's disk (a file size
// limit the database file soon reaches) while activities arrive: the
// store's commit fails, and the relay must exit with an error, not keep
// answering without storing anything. Restarted without the limit, it
// continues from the last commit.
func TestExampleRelayExitsWhenStoreFails(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o700)) // private, as a data directory should be
	t.Setenv(fileSizeLimit, strconv.Itoa(256<<10))
	p := startRelayProcess(t, dir)
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	quiet := relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}}
	a := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	b := relaytest.NewInstance(t, relaytest.Mastodon, quiet)
	for _, i := range []*relaytest.Instance{a, b} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
		i.WaitSubscribed(t, 10*time.Second)
	}
	b.SetFault(func(r *http.Request) int { // deliveries to b stay queued
		if r.Method == http.MethodPost {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	text := strings.Repeat("a long post to fill the disk. ", 300) // ≈ 9 KB per payload
	var exitErr error
	exited := false
	for n := 0; n < 1000 && !exited; n++ {
		_, _ = a.Post(ctx, inbox, "alice", text) // fails once the store fails
		select {
		case exitErr = <-p.exited:
			exited = true
		default:
		}
	}
	if !exited {
		select {
		case exitErr = <-p.exited:
		case <-time.After(30 * time.Second):
			t.Fatal("the relay did not exit after its store failed")
		}
	}
	var ee *exec.ExitError
	require.True(t, errors.As(exitErr, &ee), "exit status: %v", exitErr)
	assert.Equal(t, 1, ee.ExitCode(), "the relay exits with status 1 when its store fails")
	fi, err := os.Stat(filepath.Join(dir, filestore.FileName))
	require.NoError(t, err)
	t.Logf("database file: %d bytes at the failure", fi.Size())

	// Without the limit the store opens at its last commit: both
	// subscribers are there.
	t.Setenv(fileSizeLimit, "")
	s, err := filestore.Open(dir, nil)
	require.NoError(t, err)
	require.NoError(t, s.Check(ctx))
	subs, err := s.ListSubscribers(ctx, store.SubscriberFilter{State: store.StateAccepted})
	require.NoError(t, err)
	assert.Len(t, subs, 2)
	require.NoError(t, s.Close())
	p = startRelayProcess(t, dir)
	p.stop(t)
}
