package relay

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/store"
)

// FuzzParseEnvelope feeds arbitrary documents to the activity classifier:
// the envelope parser and the checks that decide what is relayed.
func FuzzParseEnvelope(f *testing.F) {
	fixtures, _ := filepath.Glob(filepath.Join("testdata", "fixtures", "*.json"))
	for _, name := range fixtures {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"id":"https://a.example/1","type":["Create"],"actor":{"id":"https://a.example/u"},"to":"as:Public","object":{"id":"https://b.example/n","attributedTo":["https://a.example/u"]}}`))
	f.Add([]byte(`{"type":"Delete","actor":"https://a.example/u","object":"https://a.example/u"}`))
	f.Add([]byte(`{"id":"x","type":"Create","actor":"https://a.example/u","object":[[[[[[[[]]]]]]]]}`))
	f.Add([]byte(`{"id":"x","type":"Announce","actor":"https://a.example/u","signature":{"type":"RsaSignature2017","signatureValue":"x"},"proof":[{"type":"DataIntegrityProof","proofValue":"z"}]}`))
	f.Add([]byte(`[{"\u0000":"\ud800"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := parseEnvelope(body)
		if err != nil {
			require.Nil(t, e)
			require.ErrorIs(t, err, errMalformed)
			return
		}
		require.NoError(t, checkJSONDepth(body, maxJSONDepth))
		require.NotEmpty(t, e.Type)
		require.NotEmpty(t, e.Actor)
		require.NoError(t, checkIRI(e.Actor))
		if e.Type != "Delete" {
			require.NotEmpty(t, e.ID)
		}
		_ = e.IsPublic()
		id, err := relayableObject(e)
		if err != nil {
			var ie *inboxError
			require.True(t, errors.As(err, &ie))
			require.Equal(t, 403, ie.status)
			require.Contains(t, []string{"Create", "Update", "Delete"}, e.Type)
		} else {
			require.Equal(t, e.Object.ID, id)
		}
		signer := &remoteActor{ID: e.Actor, Type: e.Object.Type}
		_ = relayedByRelay(e, signer, e.Object.ID, []store.Subscriber{{ActorID: e.Actor}})
	})
}
