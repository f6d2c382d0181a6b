package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/memstore"
)

var t0 = time.Date(2025, time.March, 14, 15, 9, 26, 535897000, time.FixedZone("UTC+2", 2*60*60))

const keyPEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"

// populate fills s with subscribers in every state and protocol and with
// values: a key, a JSON policy, binary bytes, an empty value.
func populate(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	subs := []store.Subscriber{
		{ActorID: "https://mastodon.example/actor", Host: "mastodon.example", Protocol: store.ProtocolMastodon,
			State: store.StateAccepted, FollowID: "https://mastodon.example/f/1", Inbox: "https://mastodon.example/actor/inbox",
			SharedInbox: "https://mastodon.example/inbox", CreatedAt: t0, UpdatedAt: t0.Add(time.Hour),
			Delivered: 12345, Failed: 3, LastSuccess: t0.Add(2 * time.Hour), LastFailure: t0.Add(time.Minute), LastError: "HTTP 503"},
		{ActorID: "https://pleroma.example/relay", Host: "pleroma.example", Protocol: store.ProtocolLitePub,
			State: store.StateAccepted, FollowID: "https://pleroma.example/activities/1", Inbox: "https://pleroma.example/relay/inbox",
			FollowBackID: "https://relay.example/activities/2", FollowBackState: store.StateAccepted, CreatedAt: t0, UpdatedAt: t0},
		{ActorID: "https://pending.example/actor", Host: "pending.example", Protocol: store.ProtocolMastodon,
			State: store.StatePending, FollowID: "https://pending.example/f", Inbox: "https://pending.example/inbox", CreatedAt: t0, UpdatedAt: t0},
		{ActorID: "https://rejected.example/actor", Host: "rejected.example", Protocol: store.ProtocolMastodon,
			State: store.StateRejected, FollowID: "https://rejected.example/f", Inbox: "https://rejected.example/inbox",
			Note: "spam — «refusé»", CreatedAt: t0, UpdatedAt: t0},
		{ActorID: "https://dormant.example:8443/users/relay", Host: "dormant.example:8443", Protocol: store.ProtocolLitePub,
			State: store.StateDormant, FollowID: "https://dormant.example:8443/f", Inbox: "https://dormant.example:8443/inbox",
			FollowBackState: store.StatePending, CreatedAt: t0, UpdatedAt: t0, FailingSince: t0.Add(-48 * time.Hour)},
	}
	for _, sub := range subs {
		_, err := s.UpdateSubscriber(ctx, sub.ActorID, func(p *store.Subscriber, _ bool) error { *p = sub; return nil })
		require.NoError(t, err)
	}
	for k, v := range map[string][]byte{
		"relay/private-key.pem": []byte(keyPEM),
		"policy/blocks":         []byte(`{"hosts":["bad.example"],"note":"<&>"}`),
		"binary":                {0, 1, 2, 0xfe, 0xff},
		"empty":                 {},
	} {
		require.NoError(t, s.PutValue(ctx, k, v))
	}
	// State a backup leaves out.
	_, err := s.MarkSeen(ctx, "https://mastodon.example/activities/1", time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.Enqueue(ctx, []store.Payload{{ID: "p", Body: []byte("{}")}}, []store.Delivery{{
		ID: "d", PayloadID: "p", Inbox: "https://pleroma.example/inbox", Host: "pleroma.example", NotBefore: t0, Created: t0,
	}}))
}

// state returns what a backup carries: every subscriber, times in UTC, and
// every value.
func state(t *testing.T, s store.Store) ([]store.Subscriber, map[string][]byte) {
	t.Helper()
	subs, err := s.ListSubscribers(t.Context(), store.SubscriberFilter{})
	require.NoError(t, err)
	for i := range subs {
		for _, tm := range []*time.Time{&subs[i].CreatedAt, &subs[i].UpdatedAt, &subs[i].LastSuccess, &subs[i].LastFailure, &subs[i].FailingSince} {
			if !tm.IsZero() {
				*tm = tm.UTC()
			}
		}
	}
	vals, err := s.ListValues(t.Context(), "")
	require.NoError(t, err)
	return subs, vals
}

func newMem(t *testing.T) store.Store {
	s := memstore.New()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newFile(t *testing.T) store.Store {
	s, err := filestore.Open(t.TempDir(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestExportImport(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to func(t *testing.T) store.Store
	}{
		{"memstore to filestore", newMem, newFile},
		{"filestore to memstore", newFile, newMem},
		{"filestore to filestore", newFile, newFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := tc.from(t), tc.to(t)
			populate(t, src)
			var buf bytes.Buffer
			require.NoError(t, store.Export(t.Context(), src, &buf))
			require.NoError(t, store.Import(t.Context(), dst, bytes.NewReader(buf.Bytes())))

			wantSubs, wantVals := state(t, src)
			gotSubs, gotVals := state(t, dst)
			require.Len(t, wantSubs, 5)
			require.Len(t, wantVals, 4)
			assert.Equal(t, wantSubs, gotSubs)
			assert.Equal(t, wantVals, gotVals)

			n, err := dst.CountDeliveries(t.Context(), store.DeliveryFilter{})
			require.NoError(t, err)
			assert.Equal(t, 0, n, "the queue is not part of a backup")

			// Exporting the copy gives the same document, but for its time.
			var again bytes.Buffer
			require.NoError(t, store.Export(t.Context(), dst, &again))
			assert.JSONEq(t, withoutTime(t, buf.Bytes()), withoutTime(t, again.Bytes()))
		})
	}
}

func withoutTime(t *testing.T, doc []byte) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(doc, &m))
	delete(m, "exported_at")
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return string(out)
}

// TestExportDocument checks the document's shape: readable text for text
// values, base64 for the rest.
func TestExportDocument(t *testing.T) {
	s := newMem(t)
	populate(t, s)
	var buf bytes.Buffer
	require.NoError(t, store.Export(t.Context(), s, &buf))
	var doc struct {
		Format      string                     `json:"format"`
		ExportedAt  time.Time                  `json:"exported_at"`
		Subscribers []map[string]any           `json:"subscribers"`
		Values      map[string]json.RawMessage `json:"values"`
	}
	require.NoError(t, json.Unmarshal(buf.Bytes(), &doc))
	assert.Equal(t, "fedirelay-backup/1", doc.Format)
	assert.WithinDuration(t, time.Now(), doc.ExportedAt, time.Hour)
	require.Len(t, doc.Subscribers, 5)
	assert.Equal(t, "https://dormant.example:8443/users/relay", doc.Subscribers[0]["actor"], "ordered by actor id")
	assert.JSONEq(t, `{"text":`+mustJSON(t, keyPEM)+`}`, string(doc.Values["relay/private-key.pem"]))
	assert.JSONEq(t, `{"base64":"AAEC/v8="}`, string(doc.Values["binary"]))
	assert.JSONEq(t, `{"text":""}`, string(doc.Values["empty"]))
	assert.Contains(t, buf.String(), "BEGIN PRIVATE KEY", "the key is in the backup, in clear")
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// TestImportMerges checks Import into a store that has state of its own.
func TestImportMerges(t *testing.T) {
	ctx := t.Context()
	src, dst := newMem(t), newFile(t)
	populate(t, src)
	var buf bytes.Buffer
	require.NoError(t, store.Export(ctx, src, &buf))

	require.NoError(t, dst.PutValue(ctx, "relay/private-key.pem", []byte("other key")))
	require.NoError(t, dst.PutValue(ctx, "local/only", []byte("kept")))
	_, err := dst.UpdateSubscriber(ctx, "https://pending.example/actor", func(p *store.Subscriber, _ bool) error {
		p.Host, p.State, p.Note = "pending.example", store.StateAccepted, "replaced by the backup"
		return nil
	})
	require.NoError(t, err)
	_, err = dst.UpdateSubscriber(ctx, "https://local.example/actor", func(p *store.Subscriber, _ bool) error {
		p.Host, p.State = "local.example", store.StateAccepted
		return nil
	})
	require.NoError(t, err)

	require.NoError(t, store.Import(ctx, dst, &buf))
	key, err := dst.GetValue(ctx, "relay/private-key.pem")
	require.NoError(t, err)
	assert.Equal(t, keyPEM, string(key), "the backup's value replaces the store's")
	kept, err := dst.GetValue(ctx, "local/only")
	require.NoError(t, err)
	assert.Equal(t, "kept", string(kept))
	pending, err := dst.GetSubscriber(ctx, "https://pending.example/actor")
	require.NoError(t, err)
	assert.Equal(t, store.StatePending, pending.State, "the backup's subscriber replaces the store's")
	assert.Empty(t, pending.Note)
	_, err = dst.GetSubscriber(ctx, "https://local.example/actor")
	assert.NoError(t, err, "subscribers not in the backup are kept")
	all, err := dst.ListSubscribers(ctx, store.SubscriberFilter{})
	require.NoError(t, err)
	assert.Len(t, all, 6)
}

// TestImportInvalid checks that a bad document changes nothing.
func TestImportInvalid(t *testing.T) {
	for name, doc := range map[string]string{
		"not JSON":         `this is not json`,
		"truncated":        `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"`,
		"other format":     `{"format":"fedirelay-backup/2","subscribers":[{"actor":"https://a.example/actor"}]}`,
		"no format":        `{"subscribers":[{"actor":"https://a.example/actor"}]}`,
		"no actor":         `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"},{"host":"b.example"}]}`,
		"actor twice":      `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"},{"actor":"https://a.example/actor"}]}`,
		"bad base64":       `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"}],"values":{"k":{"base64":"!!"}}}`,
		"text and base64":  `{"format":"fedirelay-backup/1","values":{"k":{"text":"a","base64":"YQ=="}}}`,
		"neither":          `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"}],"values":{"k":{}}}`,
		"two documents":    `{"format":"fedirelay-backup/1","subscribers":[{"actor":"https://a.example/actor"}]} {}`,
		"value not object": `{"format":"fedirelay-backup/1","values":{"k":"v"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			s := newFile(t)
			assert.Error(t, store.Import(t.Context(), s, strings.NewReader(doc)))
			subs, vals := state(t, s)
			assert.Empty(t, subs)
			assert.Empty(t, vals)
		})
	}
}

func TestExportImportContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	s := newMem(t)
	populate(t, s)
	var buf bytes.Buffer
	assert.ErrorIs(t, store.Export(ctx, s, &buf), context.Canceled)
	require.NoError(t, store.Export(t.Context(), s, &buf))
	dst := newFile(t)
	assert.ErrorIs(t, store.Import(ctx, dst, &buf), context.Canceled)
	subs, vals := state(t, dst)
	assert.Empty(t, subs)
	assert.Empty(t, vals)
}
