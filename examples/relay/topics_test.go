package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// relay filter prints, sets and removes a subscriber's filter in the data
// directory, refusing invalid filters and unknown subscribers.
func TestFilterCommand(t *testing.T) {
	dir := t.TempDir()
	st, err := openStore(dir)
	require.NoError(t, err)
	const actor = "https://m.example/actor"
	_, err = st.UpdateSubscriber(context.Background(), actor, func(s *store.Subscriber, _ bool) error {
		s.Host, s.State = "m.example", store.StateAccepted
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, st.Close())

	run := func(stdin string, args ...string) (string, error) {
		var out bytes.Buffer
		err := runFilter(append([]string{"-data", dir}, args...), strings.NewReader(stdin), &out)
		return strings.TrimSpace(out.String()), err
	}
	out, err := run("", actor)
	require.NoError(t, err)
	assert.Equal(t, "none", out)
	_, err = run(`{"languages": ["de"], "max_posts_per_hour": 60}`, actor, "-")
	require.NoError(t, err)
	out, err = run("", actor)
	require.NoError(t, err)
	assert.JSONEq(t, `{"languages": ["de"], "max_posts_per_hour": 60}`, out)
	_, err = run(`{"media": "sometimes"}`, actor, "-")
	assert.Error(t, err, "an invalid filter")
	_, err = run(`{"langs": ["de"]}`, actor, "-")
	assert.Error(t, err, "an unknown field")
	_, err = run(`{}`, "https://nobody.example/actor", "-")
	assert.Error(t, err, "an unknown subscriber")
	_, err = run("", actor, "none")
	require.NoError(t, err)
	out, err = run("", actor)
	require.NoError(t, err)
	assert.Equal(t, "none", out)
}
