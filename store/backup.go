package store

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// BackupFormat is the format of the documents Export writes; Import reads
// only this format.
const BackupFormat = "fedirelay-backup/1"

// Backup is the JSON document Export writes and Import reads: a relay's
// lasting state. Deduplication marks and the delivery queue are not part
// of it: they are short-lived.
//
// A backup holds the relay's private key (value "relay/private-key.pem"):
// keep it as secret as the key itself.
type Backup struct {
	// Format is BackupFormat.
	Format string `json:"format"`
	// ExportedAt is when the backup was made.
	ExportedAt time.Time `json:"exported_at"`
	// Subscribers lists every subscriber, in every state, ordered by
	// ActorID, times in UTC.
	Subscribers []Subscriber `json:"subscribers"`
	// Values holds every value (the relay key, policies, settings) by key.
	Values map[string]BackupValue `json:"values"`
}

// BackupValue is one value in a Backup: Text if the value is valid UTF-8,
// Base64 (standard encoding, padded) otherwise. Exactly one is set.
type BackupValue struct {
	Text   *string `json:"text,omitempty"`
	Base64 *string `json:"base64,omitempty"`
}

// newBackupValue returns the BackupValue of v.
func newBackupValue(v []byte) BackupValue {
	if utf8.Valid(v) {
		s := string(v)
		return BackupValue{Text: &s}
	}
	s := base64.StdEncoding.EncodeToString(v)
	return BackupValue{Base64: &s}
}

// bytes returns the value bv holds.
func (bv BackupValue) bytes() ([]byte, error) {
	switch {
	case bv.Text != nil && bv.Base64 == nil:
		return []byte(*bv.Text), nil
	case bv.Base64 != nil && bv.Text == nil:
		return base64.StdEncoding.DecodeString(*bv.Base64)
	}
	return nil, errors.New("exactly one of text and base64 must be set")
}

// Export writes the lasting state of s — every subscriber and every value,
// the relay's private key included — to w as one JSON document (see
// Backup). It reads s with ListSubscribers and ListValues, so the backup of
// a store that changes meanwhile may hold a subscriber or value changed
// after another was read; stop the relay for an exact snapshot.
func Export(ctx context.Context, s Store, w io.Writer) error {
	subs, err := s.ListSubscribers(ctx, SubscriberFilter{})
	if err != nil {
		return fmt.Errorf("store: export: listing subscribers: %w", err)
	}
	vals, err := s.ListValues(ctx, "")
	if err != nil {
		return fmt.Errorf("store: export: listing values: %w", err)
	}
	for i := range subs {
		sub := &subs[i]
		for _, t := range []*time.Time{&sub.CreatedAt, &sub.UpdatedAt, &sub.LastSuccess, &sub.LastFailure, &sub.FailingSince, &sub.RevivedAt} {
			if !t.IsZero() {
				*t = t.UTC()
			}
		}
	}
	b := Backup{
		Format:      BackupFormat,
		ExportedAt:  time.Now().UTC().Truncate(time.Second),
		Subscribers: subs,
		Values:      make(map[string]BackupValue, len(vals)),
	}
	for k, v := range vals {
		b.Values[k] = newBackupValue(v)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&b); err != nil {
		return fmt.Errorf("store: export: %w", err)
	}
	return nil
}

// Import reads a document written by Export from r and stores its
// subscribers and values in s, which need not be empty: a subscriber or
// value of the backup replaces the one with the same actor id or key in s,
// and everything else in s is kept. Import into an empty store therefore
// restores the exported state exactly.
//
// Import reads and checks the whole document before it changes anything:
// a document of another format, malformed JSON, a value that is neither
// text nor base64 or a subscriber without actor id (or listed twice)
// changes nothing. It then stores subscribers and values one by one, so an
// error from s (or the end of ctx) may leave part of them stored; importing
// the same document again completes the work.
func Import(ctx context.Context, s Store, r io.Reader) error {
	var b Backup
	dec := json.NewDecoder(r)
	if err := dec.Decode(&b); err != nil {
		return fmt.Errorf("store: import: reading backup: %w", err)
	}
	if b.Format != BackupFormat {
		return fmt.Errorf("store: import: backup format %q, want %q", b.Format, BackupFormat)
	}
	if dec.More() {
		return errors.New("store: import: data after the backup document")
	}
	seen := make(map[string]bool, len(b.Subscribers))
	for i, sub := range b.Subscribers {
		if sub.ActorID == "" {
			return fmt.Errorf("store: import: subscriber %d has no actor id", i)
		}
		if seen[sub.ActorID] {
			return fmt.Errorf("store: import: subscriber %q listed twice", sub.ActorID)
		}
		seen[sub.ActorID] = true
	}
	vals := make(map[string][]byte, len(b.Values))
	for k, bv := range b.Values {
		v, err := bv.bytes()
		if err != nil {
			return fmt.Errorf("store: import: value %q: %w", k, err)
		}
		vals[k] = v
	}

	for _, sub := range b.Subscribers {
		if _, err := s.UpdateSubscriber(ctx, sub.ActorID, func(p *Subscriber, _ bool) error {
			*p = sub
			return nil
		}); err != nil {
			return fmt.Errorf("store: import: subscriber %q: %w", sub.ActorID, err)
		}
	}
	for k, v := range vals {
		if err := s.PutValue(ctx, k, v); err != nil {
			return fmt.Errorf("store: import: value %q: %w", k, err)
		}
	}
	return nil
}
