// Package relaytest provides fake fediverse instances for end-to-end tests of ActivityPub relays.
//
// An Instance behaves on the wire like one of the major relay clients — Mastodon, Misskey,
// Pleroma (LitePub), GoToSocial or Friendica — as described in the relay protocol reference
// (FEP-ae0c and what each server actually sends and checks). It serves its actors, keys, WebFinger and
// statuses; subscribes to and unsubscribes from a relay the way its flavor does; publishes posts
// (public, unlisted or followers-only), edits, deletes, boosts and un-boosts to a relay; verifies
// every request that reaches its inboxes the way its flavor would, recording what it accepted
// (Received) and what it refused (Rejected); and applies what it accepted as the real server
// does (Status, HasBoost): an edit the real server would ignore does not change its copy.
// Posts may carry hashtags, a language, a content warning, media or a reply (PostWith), users
// may follow remote actors as persons do (Follow), and profiles may say more (SetProfile), for
// topic relays and content filters.
// It is an independent oracle: it shares no code with the relay under test.
//
// Instances run either on a real loopback HTTP server (each on its own 127.0.0.N address) or on
// an in-memory network (package memnet), where host names such as "mastodon.test" can be used:
//
//	var net memnet.Network
//	net.Handle("relay.test", myRelay)                       // the relay under test
//	m := relaytest.NewInstance(t, relaytest.Mastodon, relaytest.Options{Network: &net, Host: "mastodon.test"})
//	p := relaytest.NewInstance(t, relaytest.Pleroma, relaytest.Options{Network: &net, Host: "pleroma.test"})
//	ctx := context.Background()
//	_, err := m.Subscribe(ctx, "https://relay.test/inbox", "https://relay.test/actor")
//	...
//	m.WaitSubscribed(t, 5*time.Second)
//	note, err := m.Post(ctx, "https://relay.test/inbox", "alice", "hello")
//	p.WaitForMatch(t, 5*time.Second, func(r relaytest.Received) bool { return r.ObjectID == note.ID })
//
// On a memnet network instances use https URLs (https://mastodon.test/...); on loopback they use
// plain http (http://127.0.0.5:41234/...), so a relay under test has to allow http and loopback
// addresses in that mode.
//
// Differences from the real servers that matter to a relay are documented on the flavors (see
// Flavor). The LD signatures produced and checked by the fakes are real RSA signatures over a
// simplified canonical form (sorted-key JSON instead of URDNA2015); a relay should forward them
// byte for byte and not try to verify them.
package relaytest
