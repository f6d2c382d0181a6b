package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
	"github.com/fedirelay/relay/store/memstore"
)

// A server mounts the relay under /relay/ next to its own routes.
// WebFinger, NodeInfo and host-meta must be at the root of the host, so
// those three paths go to the relay too.
func Example() {
	r, err := relay.New(relay.Config{BaseURL: "https://example.org/relay"})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "the server's own page")
	})
	mux.Handle("/relay/", r.Handler())
	mux.Handle("GET /.well-known/webfinger", r.Handler())
	mux.Handle("GET /.well-known/nodeinfo", r.Handler())
	mux.Handle("GET /.well-known/host-meta", r.Handler())
	if err := r.Start(); err != nil {
		log.Fatal(err)
	}
	defer r.Close(context.Background())
	// Serve mux with http.ListenAndServe; here a request goes to it directly.

	fmt.Println("actor:", r.ActorID())
	fmt.Println("inbox:", r.InboxURL())
	for _, path := range []string{"/relay/actor", "/.well-known/webfinger?resource=acct:relay@example.org"} {
		w := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "https://example.org"+path, nil)
		req.Header.Set("Accept", "application/activity+json")
		mux.ServeHTTP(w, req)
		fmt.Println(path, w.Code)
	}
	// Output:
	// actor: https://example.org/relay/actor
	// inbox: https://example.org/relay/inbox
	// /relay/actor 200
	// /.well-known/webfinger?resource=acct:relay@example.org 200
}

// A FollowPolicy decides on each subscription request: here servers of
// one domain are accepted, a known bad one is refused, and every other
// request waits for the operator (see Relay.Approve).
func ExampleFollowPolicy() {
	policy := func(ctx context.Context, req relay.FollowRequest) (relay.Decision, string) {
		switch {
		case req.Host == "example.com" || strings.HasSuffix(req.Host, ".example.com"):
			return relay.DecisionAccept, ""
		case req.Host == "spam.example":
			return relay.DecisionReject, "spam"
		}
		return relay.DecisionPending, ""
	}
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example.org", FollowPolicy: policy})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close(context.Background())

	// The relay asks the policy for each Follow; here it is asked directly.
	names := map[relay.Decision]string{relay.DecisionAccept: "accepted", relay.DecisionReject: "rejected", relay.DecisionPending: "pending"}
	for _, host := range []string{"social.example.com", "spam.example", "other.example"} {
		decision, reason := policy(context.Background(), relay.FollowRequest{Actor: "https://" + host + "/actor", Host: host})
		fmt.Println(strings.TrimSpace(host + " " + names[decision] + " " + reason))
	}
	// Output:
	// social.example.com accepted
	// spam.example rejected spam
	// other.example pending
}

// With ManualApproval every subscription waits for the operator, who
// approves (or refuses) it from code, for example from an admin page.
// Approve sends the subscriber its Accept.
func ExampleRelay_Approve() {
	ctx := context.Background()
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example.org", FollowPolicy: relay.ManualApproval})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close(ctx)
	// A Follow that arrived in the inbox left a pending subscription like
	// this one.
	_, err = r.Store().UpdateSubscriber(ctx, "https://mastodon.example/actor", func(s *store.Subscriber, found bool) error {
		s.ActorID, s.Host, s.Protocol, s.State = "https://mastodon.example/actor", "mastodon.example", store.ProtocolMastodon, store.StatePending
		s.FollowID, s.Inbox = "https://mastodon.example/follows/1", "https://mastodon.example/inbox"
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	pending, err := r.Subscribers(ctx, store.SubscriberFilter{State: store.StatePending})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range pending {
		if err := r.Approve(ctx, s.ActorID); err != nil {
			log.Fatal(err)
		}
	}
	s, err := r.Subscriber(ctx, "https://mastodon.example/actor")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.ActorID, s.State)
	// Output:
	// https://mastodon.example/actor accepted
}

// A file store keeps the relay's state (its key, subscribers and queued
// deliveries) in a directory, so that it survives restarts: the relay has
// the same key, and so the same identity, after a restart.
func Example_fileStore() {
	dir, err := os.MkdirTemp("", "relay-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	var keys []string
	for range 2 { // two runs of the server
		st, err := filestore.Open(dir, nil)
		if err != nil {
			log.Fatal(err)
		}
		r, err := relay.New(relay.Config{BaseURL: "https://relay.example.org", Store: st})
		if err != nil {
			log.Fatal(err)
		}
		if err := r.Start(); err != nil {
			log.Fatal(err)
		}
		w := httptest.NewRecorder()
		r.Handler().ServeHTTP(w, httptest.NewRequest("GET", "https://relay.example.org/actor", nil))
		keys = append(keys, w.Body.String()[strings.Index(w.Body.String(), "-----BEGIN PUBLIC KEY"):])
		_ = r.Close(context.Background())
		_ = st.Close() // the relay closes only a store it created
	}
	fmt.Println("same key after a restart:", keys[0] == keys[1])
	// Output:
	// same key after a restart: true
}

// store.Export writes a backup of the relay's store (subscribers and
// values, the relay's key included); store.Import restores it into
// another store, of any kind.
func Example_backup() {
	ctx := context.Background()
	r, err := relay.New(relay.Config{BaseURL: "https://relay.example.org"})
	if err != nil {
		log.Fatal(err)
	}

	var backup bytes.Buffer
	if err := store.Export(ctx, r.Store(), &backup); err != nil {
		log.Fatal(err)
	}
	before := actorDocument(r)
	_ = r.Close(ctx) // one open relay per account in a process
	restored := memstore.New()
	if err := store.Import(ctx, restored, &backup); err != nil {
		log.Fatal(err)
	}
	r2, err := relay.New(relay.Config{BaseURL: "https://relay.example.org", Store: restored})
	if err != nil {
		log.Fatal(err)
	}
	defer r2.Close(ctx)
	fmt.Println("restored relay has the same key:", actorDocument(r2) == before)
	// Output:
	// restored relay has the same key: true
}

// actorDocument returns the relay actor document r serves, its public key
// included.
func actorDocument(r *relay.Relay) string {
	w := httptest.NewRecorder()
	r.Handler().ServeHTTP(w, httptest.NewRequest("GET", r.ActorID(), nil))
	return w.Body.String()
}
