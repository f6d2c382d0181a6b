package relay

import (
	"context"
	"errors"

	"github.com/fedirelay/relay/store"
)

// deliveryForm is the form in which a subscriber gets a relayed activity.
type deliveryForm int

const (
	// formNone: nothing, as no form would be applied (or it would be
	// refused, which counts against the subscriber).
	formNone deliveryForm = iota
	// formVerbatim: the original bytes, signed by the relay.
	formVerbatim
	// formAnnounce: the relay's Announce of the object (relayedAnnounce).
	formAnnounce
	// formUndoAnnounce: the relay's Undo of its own Announce of the object
	// of an un-boost (undoRelayedAnnounce).
	formUndoAnnounce
)

// formFor returns the form in which s gets env: the form its software
// applies (docs/protocol.md, "Which form each server applies"). wrap says
// that a post cannot go verbatim to anyone (no LD signature, an embedded
// object of another origin, or too large for Misskey).
//
//   - Posts (Create, Announce): the relay's Announce to LitePub
//     subscribers and when wrap, verbatim otherwise.
//   - Un-boosts (Undo of an Announce): verbatim to Mastodon-style
//     subscribers when LD-signed (Mastodon and Misskey remove the boost),
//     else the relay's Undo of its own Announce.
//   - Update, Delete, Move: verbatim to Mastodon-style subscribers. Of the
//     LitePub ones, GoToSocial gets Updates verbatim (it refetches a
//     forwarded status from its origin) and Friendica Deletes (it applies
//     them, LD-signed or once the object answers 410); Pleroma and Akkoma
//     refuse every relayed activity but Create and ignore a second Announce
//     of an object, GoToSocial ignores relayed Deletes, Friendica skips
//     posts it has: they get nothing.
func formFor(s *store.Subscriber, env *envelope, wrap bool) deliveryForm {
	litePub := s.Protocol == store.ProtocolLitePub
	software := softwareKind(s.Software)
	switch {
	case env.isPost():
		if litePub || wrap {
			return formAnnounce
		}
		return formVerbatim
	case env.isUndoAnnounce():
		if !litePub && env.LDSigned {
			return formVerbatim
		}
		return formUndoAnnounce
	case !litePub:
		return formVerbatim
	case env.Type == "Update" && software == softwareGoToSocial:
		return formVerbatim
	case env.Type == "Delete" && software == softwareFriendica:
		return formVerbatim
	}
	return formNone
}

// isUndoAnnounce reports an un-boost: an Undo embedding an Announce.
func (e *envelope) isUndoAnnounce() bool {
	return e.Type == "Undo" && e.Object.Embedded && e.Object.Type == "Announce"
}

// boostedMark is the mark a boost takes when it makes the relay announce
// its object (the relay had not announced it): its un-boost then undoes
// the relay's Announce. It lives as long as the deduplication marks.
func boostedMark(boostID string) string { return "boosted:" + boostID }

// announcedForBoost reports whether the boost boostID made the relay
// announce its object, with a check-only mark (Store.Enqueue keeps no mark
// whose Until has passed).
func (r *Relay) announcedForBoost(ctx context.Context, boostID string) (bool, error) {
	if boostID == "" {
		return false, nil
	}
	err := r.store.Enqueue(ctx, nil, nil, store.Mark{ID: boostedMark(boostID)})
	var seen *store.SeenError
	if errors.As(err, &seen) {
		return true, nil
	}
	return false, err
}
