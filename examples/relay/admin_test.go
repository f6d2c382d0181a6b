package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/relaytest"
)

// relayCmd runs an admin subcommand against the relay using dir and
// returns its standard output, or fails the test.
func relayCmd(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	out, err := relayCmdErr(dir, nil, name, args...)
	require.NoError(t, err, "relay %s %v", name, args)
	return out
}

func relayCmdErr(dir string, stdin []byte, name string, args ...string) (string, error) {
	var out bytes.Buffer
	err := runAdminCommand(name, append([]string{"-data", dir}, args...), bytes.NewReader(stdin), &out)
	return out.String(), err
}

type listedSubscriber struct {
	Actor, State, Protocol, Inbox, Host, Mode string
}

func listSubscribers(t *testing.T, dir string, args ...string) []listedSubscriber {
	t.Helper()
	var subs []listedSubscriber
	require.NoError(t, json.Unmarshal([]byte(relayCmd(t, dir, "subscribers", append(args, "-json")...)), &subs))
	return subs
}

func quietInstance(t *testing.T, f relaytest.Flavor) *relaytest.Instance {
	return relaytest.NewInstance(t, f, relaytest.Options{SignFetches: true, Logf: func(string, ...any) {}})
}

// The operator of a relay run with -approval sees the requests of a fake
// Mastodon and a fake GoToSocial with relay subscribers, approves them with
// relay approve, after which they relay to each other; relay refuse sends
// a Reject with the reason; receive-only and send-only hold.
func TestAdminCommandsApprovalRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := startRelayProcess(t, dir, "-approval")
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	masto := quietInstance(t, relaytest.Mastodon)
	gts := quietInstance(t, relaytest.GoToSocial)
	pleroma := quietInstance(t, relaytest.Pleroma)
	for _, i := range []*relaytest.Instance{masto, gts, pleroma} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
	}
	pending := listSubscribers(t, dir, "-state", "pending")
	require.Len(t, pending, 3)
	for _, s := range pending {
		assert.Equal(t, "pending", s.State)
		assert.NotEmpty(t, s.Actor)
		assert.NotEmpty(t, s.Protocol)
		assert.NotEmpty(t, s.Inbox)
		assert.NotEmpty(t, s.Host)
	}
	table := relayCmd(t, dir, "subscribers", "-state", "pending")
	assert.Contains(t, table, "ACTOR")
	assert.Contains(t, table, gts.RelayActorID())

	out := relayCmd(t, dir, "approve", masto.RelayActorID(), gts.RelayActorID())
	assert.Equal(t, "approved "+masto.RelayActorID()+"\napproved "+gts.RelayActorID()+"\n", out)
	masto.WaitSubscribed(t, 10*time.Second)
	gts.WaitSubscribed(t, 10*time.Second)
	n, err := masto.Post(ctx, inbox, "alice", "approved through the socket")
	require.NoError(t, err)
	gts.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.Type == "Announce" && rc.ObjectID == n.ID })

	relayCmd(t, dir, "refuse", "-reason", "closed for now", pleroma.RelayActorID())
	rc := pleroma.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "closed for now")
	assert.Len(t, listSubscribers(t, dir, "-state", "rejected"), 1)

	// gts receives only: its posts are not relayed; masto, send-only, gets
	// nothing.
	relayCmd(t, dir, "mode", gts.RelayActorID(), "receive-only")
	relayCmd(t, dir, "mode", masto.RelayActorID(), "send-only")
	modes := map[string]string{}
	for _, s := range listSubscribers(t, dir, "-state", "accepted") {
		modes[s.Actor] = s.Mode
	}
	assert.Equal(t, map[string]string{masto.RelayActorID(): "send-only", gts.RelayActorID(): "receive-only"}, modes)
	fromGts, err := gts.Post(ctx, inbox, "gus", "not relayed")
	require.NoError(t, err)
	fromMasto, err := masto.Post(ctx, inbox, "alice", "relayed to gts")
	require.NoError(t, err)
	gts.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.Type == "Announce" && rc.ObjectID == fromMasto.ID })

	var status struct {
		Subscribers map[string]int
		Backlog     int
	}
	require.NoError(t, json.Unmarshal([]byte(relayCmd(t, dir, "status", "-json")), &status))
	assert.Equal(t, map[string]int{"accepted": 2, "pending": 0, "rejected": 1, "dormant": 0}, status.Subscribers)
	assert.Contains(t, relayCmd(t, dir, "status"), "accepted 2")

	relayCmd(t, dir, "remove", pleroma.RelayActorID())
	_, err = relayCmdErr(dir, nil, "approve", pleroma.RelayActorID())
	assert.EqualError(t, err, "unknown actor "+pleroma.RelayActorID())
	p.stop(t) // every delivery has been attempted
	for _, rc := range masto.Received() {
		assert.NotEqual(t, fromGts.ID, rc.ObjectID, "a receive-only subscriber's post is not relayed, and send-only gets nothing")
	}
}

// blocks-import of a Mastodon CSV blocks its domains and ends their
// subscriptions; blocks-export gives the file back byte for byte; a
// malformed file changes nothing and names its line; the socket is the
// owner's only; the commands fail with one clear line when no relay runs.
func TestAdminCommandsBlockList(t *testing.T) {
	dir := t.TempDir()
	p := startRelayProcess(t, dir)
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	bad := quietInstance(t, relaytest.Mastodon)
	good := quietInstance(t, relaytest.Mastodon)
	for _, i := range []*relaytest.Instance{bad, good} {
		_, err := i.Subscribe(ctx, inbox, actor)
		require.NoError(t, err)
		i.WaitSubscribed(t, 10*time.Second)
	}
	badHost := strings.Split(bad.Host(), ":")[0]

	fi, err := os.Stat(filepath.Join(dir, adminSocketName))
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o600, fi.Mode()&(os.ModeSocket|os.ModePerm), "the socket is the owner's only")
	di, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), di.Mode().Perm())

	csv := "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n" +
		badHost + ",suspend,false,false,spam,false\n" +
		"other.example,silence,true,false,\"loud, very\",false\n"
	file := filepath.Join(t.TempDir(), "blocks.csv")
	require.NoError(t, os.WriteFile(file, []byte(csv), 0o600))
	assert.Equal(t, "imported 2 entries\n", relayCmd(t, dir, "blocks-import", file))
	assert.Equal(t, csv, relayCmd(t, dir, "blocks-export"), "the export round-trips byte for byte")
	for _, s := range listSubscribers(t, dir) {
		assert.NotEqual(t, bad.RelayActorID(), s.Actor, "the blocked domain's subscription ended")
	}
	var blocks []struct{ Domain, Reason string }
	require.NoError(t, json.Unmarshal([]byte(relayCmd(t, dir, "blocks", "-json")), &blocks))
	assert.Equal(t, []struct{ Domain, Reason string }{{badHost, "spam"}, {"other.example", "loud, very"}}, blocks)

	_, err = relayCmdErr(dir, []byte("fine.example\nnot a domain\n"), "blocks-import", "-")
	assert.ErrorContains(t, err, "line 2:")
	assert.Equal(t, csv, relayCmd(t, dir, "blocks-export"), "the malformed file changed nothing")

	relayCmd(t, dir, "block", "-reason", "harassment", "third.example")
	relayCmd(t, dir, "unblock", "other.example")
	assert.Contains(t, relayCmd(t, dir, "blocks"), "third.example  suspend   harassment")
	relayCmd(t, dir, "allow", "friends.example")
	assert.Contains(t, relayCmd(t, dir, "allowed"), "friends.example")
	relayCmd(t, dir, "disallow", "friends.example")
	assert.NotContains(t, relayCmd(t, dir, "allowed"), "friends.example")

	for _, c := range [][]string{
		{"mode", good.RelayActorID(), "sideways"},
		{"mode", good.RelayActorID()},
		{"approve"},
		{"block", "bad domain"},
		{"blocks-import", filepath.Join(dir, "missing.csv")},
	} {
		_, err := relayCmdErr(dir, nil, c[0], c[1:]...)
		assert.Error(t, err, "%v", c)
	}

	relayCmd(t, dir, "mode", good.RelayActorID(), "send-only")
	p.stop(t)
	_, err = os.Stat(filepath.Join(dir, adminSocketName))
	assert.ErrorIs(t, err, os.ErrNotExist, "the socket is removed at exit")
	_, err = relayCmdErr(dir, nil, "status")
	assert.EqualError(t, err, "no relay is running on "+dir)

	// Everything was stored: a restarted relay has it.
	startRelayProcess(t, dir)
	assert.Contains(t, relayCmd(t, dir, "blocks"), "third.example")
	subs := listSubscribers(t, dir)
	require.Len(t, subs, 1)
	assert.Equal(t, "send-only", subs[0].Mode)
}

// -allowlist and -deny-software decide Follows: refused requests get a
// Reject with the reason; relay allow lets a domain in.
func TestAdminFlagsSubscriptionRules(t *testing.T) {
	dir := t.TempDir()
	p := startRelayProcess(t, dir, "-allowlist", "-deny-software", "misskey")
	inbox, actor := p.BaseURL+"/inbox", p.BaseURL+"/actor"
	ctx := context.Background()
	gts := quietInstance(t, relaytest.GoToSocial)
	misskey := quietInstance(t, relaytest.Misskey)
	_, err := gts.Subscribe(ctx, inbox, actor)
	require.NoError(t, err)
	rc := gts.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "allowlist")

	for _, i := range []*relaytest.Instance{gts, misskey} {
		relayCmd(t, dir, "allow", strings.Split(i.Host(), ":")[0])
	}
	relayCmd(t, dir, "remove", gts.RelayActorID()) // the refusal lasts until removed
	_, err = gts.Subscribe(ctx, inbox, actor)
	require.NoError(t, err)
	gts.WaitSubscribed(t, 10*time.Second)
	_, err = misskey.Subscribe(ctx, inbox, actor)
	require.NoError(t, err)
	rc = misskey.WaitForMatch(t, 10*time.Second, func(rc relaytest.Received) bool { return rc.Type == "Reject" })
	assert.Contains(t, string(rc.Body), "servers running misskey may not subscribe")
	assert.Contains(t, relayCmd(t, dir, "subscribers", "-software", "gotosocial"), gts.RelayActorID())
}

// The binary exits 1 with one line for an admin command that fails, and
// relay help lists the commands.
func TestAdminCommandExitStatus(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "subscribers", "-data", dir)
	cmd.Env = append(os.Environ(), runAsRelay+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Equal(t, "relay: no relay is running on "+dir+"\n", stderr.String())

	help := exec.Command(os.Args[0], "help")
	help.Env = append(os.Environ(), runAsRelay+"=1")
	out, err := help.Output()
	require.NoError(t, err)
	for _, name := range []string{"subscribers", "approve", "refuse", "remove", "mode", "filter", "block", "unblock", "blocks",
		"blocks-import", "blocks-export", "allow", "disallow", "allowed", "topic-followers", "status"} {
		assert.Contains(t, string(out), "relay "+name+" ", name)
	}
}

// The TCP admin API refuses to start on a non-loopback address without a
// token, and with one answers only requests bearing it.
func TestAdminTCP(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"-data", t.TempDir(), "-admin-addr", "0.0.0.0:0"}, nil, &out)
	assert.ErrorContains(t, err, "not a loopback address")
	var ue *usageError
	assert.ErrorAs(t, err, &ue, "a command-line error: exit status 2, nothing started")
	err = run([]string{"-data", t.TempDir(), "-admin-addr", "127.0.0.1:0", "-admin-token-file", filepath.Join(t.TempDir(), "none")}, nil, &out)
	assert.ErrorContains(t, err, "-admin-token-file")

	tokenFile := filepath.Join(t.TempDir(), "token")
	const token = "s3cret-token-for-the-test"
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	adminAddr := freeAddr(t)
	startRelayProcess(t, t.TempDir(), "-admin-addr", adminAddr, "-admin-token-file", tokenFile)
	get := func(auth string) int {
		req, err := http.NewRequest("GET", "http://"+adminAddr+"/api/v1/status", nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		var resp *http.Response
		require.Eventually(t, func() bool { resp, err = http.DefaultClient.Do(req); return err == nil }, 10*time.Second, 10*time.Millisecond)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusUnauthorized, get(""))
	assert.Equal(t, http.StatusUnauthorized, get("Bearer wrong"))
	assert.Equal(t, http.StatusOK, get("Bearer "+token))
}
