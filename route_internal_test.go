package relay

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/fedirelay/relay/store"
)

func TestFormForEachSoftware(t *testing.T) {
	mastodonStyle := func(software string) *store.Subscriber {
		return &store.Subscriber{Protocol: store.ProtocolMastodon, Software: software}
	}
	litePub := func(software string) *store.Subscriber {
		return &store.Subscriber{Protocol: store.ProtocolLitePub, Software: software}
	}
	signed := func(typ string) *envelope { return &envelope{Type: typ, LDSigned: true} }
	unboost := &envelope{Type: "Undo", LDSigned: true, Object: objectRef{Type: "Announce", Embedded: true}}
	unsignedUnboost := &envelope{Type: "Undo", Object: objectRef{Type: "Announce", Embedded: true}}
	for _, c := range []struct {
		name string
		s    *store.Subscriber
		env  *envelope
		wrap bool
		want deliveryForm
	}{
		{"signed post to Mastodon", mastodonStyle("mastodon"), signed("Create"), false, formVerbatim},
		{"wrapped post to Misskey", mastodonStyle("misskey"), signed("Create"), true, formAnnounce},
		{"post to Pleroma", litePub("pleroma"), signed("Create"), false, formAnnounce},
		{"boost to GoToSocial", litePub("gotosocial"), signed("Announce"), false, formAnnounce},

		{"edit to Mastodon", mastodonStyle("mastodon"), signed("Update"), false, formVerbatim},
		{"edit to a Misskey fork", mastodonStyle("sharkey"), signed("Update"), false, formVerbatim},
		{"edit to GoToSocial", litePub("gotosocial"), signed("Update"), false, formVerbatim},
		{"edit to Pleroma", litePub("pleroma"), signed("Update"), false, formNone},
		{"edit to Akkoma", litePub("akkoma"), signed("Update"), false, formNone},
		{"edit to Friendica", litePub("friendica"), signed("Update"), false, formNone},
		{"edit to unknown LitePub", litePub(""), signed("Update"), false, formNone},

		{"delete to Misskey", mastodonStyle("misskey"), signed("Delete"), false, formVerbatim},
		{"delete to GoToSocial", litePub("gotosocial"), signed("Delete"), false, formNone},
		{"delete to Pleroma", litePub("pleroma"), signed("Delete"), false, formNone},
		{"delete to Friendica", litePub("friendica"), signed("Delete"), false, formVerbatim},
		{"move to LitePub", litePub("gotosocial"), signed("Move"), false, formNone},
		{"move to Mastodon", mastodonStyle(""), signed("Move"), false, formVerbatim},

		{"signed un-boost to Mastodon", mastodonStyle("mastodon"), unboost, false, formVerbatim},
		{"unsigned un-boost to Mastodon", mastodonStyle("mastodon"), unsignedUnboost, false, formUndoAnnounce},
		{"un-boost to GoToSocial", litePub("gotosocial"), unboost, false, formUndoAnnounce},
		{"un-boost to Pleroma", litePub("pleroma"), unboost, false, formUndoAnnounce},
	} {
		assert.Equal(t, c.want, formFor(c.s, c.env, c.wrap), c.name)
	}
}

func TestSoftwareKind(t *testing.T) {
	for name, want := range map[string]string{
		"Mastodon": softwareMastodon, "misskey": softwareMisskey, "Sharkey": softwareMisskey,
		"iceshrimp": softwareMisskey, "gotosocial": softwareGoToSocial, "pleroma": softwarePleroma,
		"akkoma": softwareAkkoma, "friendica": softwareFriendica, "": "", "lemmy": "",
	} {
		assert.Equal(t, want, softwareKind(name), name)
	}
}
