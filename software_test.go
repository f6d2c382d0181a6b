package relay_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/relaytest"
)

// softwareEnv is a relay on a fake clock with a subscribed Mastodon and a
// GoToSocial whose NodeInfo could not be read when it subscribed: it is
// stored without Software.
type softwareEnv struct {
	*memEnv
	masto, gts   *relaytest.Instance
	nodeInfoDown *atomic.Bool
	lookups      *atomic.Int32 // GETs of gts.test's /.well-known/nodeinfo
}

func newSoftwareEnv(t *testing.T) *softwareEnv {
	t.Helper()
	e := &softwareEnv{memEnv: newMemEnv(t, relay.Config{}), nodeInfoDown: &atomic.Bool{}, lookups: &atomic.Int32{}}
	e.masto = e.subscribed("masto.test")[0]
	e.gts = relaytest.NewInstance(t, relaytest.GoToSocial, relaytest.Options{
		Network: e.net, Host: "gts.test", MaxClockSkew: farSkew, Logf: func(string, ...any) {},
	})
	e.nodeInfoDown.Store(true)
	e.gts.SetFault(func(req *http.Request) int {
		if req.URL.Path != "/.well-known/nodeinfo" {
			return 0
		}
		e.lookups.Add(1)
		if e.nodeInfoDown.Load() {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	_, err := e.gts.Subscribe(context.Background(), memRelayInbox, memRelayActor)
	require.NoError(t, err)
	e.gts.WaitSubscribed(t, wait)
	require.Empty(t, e.software(), "NodeInfo could not be read at Follow time")
	return e
}

// software returns the stored Software of the GoToSocial subscriber.
func (e *softwareEnv) software() string {
	e.t.Helper()
	s, err := e.r.Subscriber(context.Background(), e.gts.RelayActorID())
	require.NoError(e.t, err)
	return s.Software
}

// editReaches posts a note from Mastodon, edits it and reports whether
// GoToSocial shows the edit (it refetches the post when it gets the
// Update), waiting for the relay to deliver everything first.
func (e *softwareEnv) editReaches() bool {
	e.t.Helper()
	ctx := context.Background()
	note := e.post(e.masto, "first version")
	e.gts.WaitFor(e.t, wait, func([]relaytest.Received) bool { _, ok := e.gts.Status(note.ID); return ok })
	require.NoError(e.t, e.masto.Edit(ctx, memRelayInbox, note, "second version"))
	e.drained()
	e.gts.WaitFor(e.t, wait, func(rs []relaytest.Received) bool {
		for _, rc := range rs {
			if rc.Type == "Update" && rc.ObjectID == note.ID && !rc.FetchDone {
				return false // still refetching
			}
		}
		return true
	})
	doc, _ := e.gts.Status(note.ID)
	return strings.Contains(string(doc), "second version")
}

// A subscriber stored without Software (here: its NodeInfo failed when it
// followed) has it learnt after the next Start, in the background, and
// then gets the edits its software applies: GoToSocial the Update.
func TestSoftwareLearntAfterStart(t *testing.T) {
	e := newSoftwareEnv(t)
	require.NoError(t, e.r.Close(context.Background()))
	e.nodeInfoDown.Store(false)
	e.lookups.Store(0)

	e.r = e.newRelay(relay.Config{})
	require.NoError(t, e.r.Start())
	e.eventually(func() bool { return e.software() == "gotosocial" }, "the relay learns the software after Start")
	assert.Equal(t, int32(1), e.lookups.Load(), "one NodeInfo lookup")
	assert.True(t, e.editReaches(), "GoToSocial gets the edit")
	assert.Equal(t, "gotosocial", e.r.SoftwareOf("gts.test"), "the status page shows it")
}

// A subscriber whose NodeInfo could not be read gets no edits (unknown
// LitePub software); its NodeInfo is looked up again a day later, and then
// it gets them.
func TestSoftwareLearntLater(t *testing.T) {
	e := newSoftwareEnv(t)
	assert.False(t, e.editReaches(), "unknown LitePub software: no edits")

	e.nodeInfoDown.Store(false)
	e.advance(24 * time.Hour)
	e.eventually(func() bool { return e.software() == "gotosocial" }, "the relay looks again a day later")
	assert.True(t, e.editReaches(), "GoToSocial gets the edit")
}

// A Follow is answered without waiting for the follower's NodeInfo, which
// is read afterwards: the Accept arrives while the lookup hangs, and the
// software is stored once NodeInfo answers.
func TestFollowDoesNotWaitForNodeInfo(t *testing.T) {
	e := newMemEnv(t, relay.Config{})
	gts := relaytest.NewInstance(t, relaytest.GoToSocial, relaytest.Options{
		Network: e.net, Host: "gts.test", MaxClockSkew: farSkew, Logf: func(string, ...any) {},
	})
	release := make(chan struct{})
	var asked, answered atomic.Bool
	gts.SetFault(func(req *http.Request) int {
		if req.URL.Path == "/.well-known/nodeinfo" {
			asked.Store(true)
			select {
			case <-release:
			case <-req.Context().Done():
			}
			answered.Store(true)
		}
		return 0
	})
	_, err := gts.Subscribe(context.Background(), memRelayInbox, memRelayActor)
	require.NoError(t, err)
	gts.WaitSubscribed(t, wait)
	assert.False(t, answered.Load(), "the Accept came while NodeInfo was not answered")
	e.eventually(asked.Load, "NodeInfo is read")
	s, err := e.r.Subscriber(context.Background(), gts.RelayActorID())
	require.NoError(t, err)
	assert.Empty(t, s.Software, "accepted before NodeInfo answered")
	close(release)
	e.eventually(func() bool {
		s, err := e.r.Subscriber(context.Background(), gts.RelayActorID())
		return err == nil && s.Software == "gotosocial"
	}, "the software is learnt afterwards")
}
