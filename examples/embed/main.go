// Command embed shows an existing Go server that adds a relay next to its
// own routes. The relay lives under /relay; the server keeps / and /api/.
// Its state (the relay's key, subscribers, queued deliveries) is kept in a
// file store in the -data directory, so it survives restarts.
//
//	go run ./examples/embed -addr localhost:8081 -base-url http://localhost:8081 -data embed-data
//
// Subscribers then use http://localhost:8081/relay/inbox (Mastodon, Misskey)
// or follow http://localhost:8081/relay/actor (Pleroma, GoToSocial).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store/filestore"
)

func main() {
	addr := flag.String("addr", "localhost:8081", "address to listen on")
	baseURL := flag.String("base-url", "http://localhost:8081", "public URL of this server")
	dataDir := flag.String("data", "embed-data", "directory of the relay's state")
	flag.Parse()

	// The server's own routes.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "my server; its relay is at /relay/")
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, `{"ok":true}`)
	})

	// The relay, under /relay. WebFinger, NodeInfo and host-meta must be
	// at the root of the host, so those three paths go to the relay too.
	st, err := filestore.Open(*dataDir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	r, err := relay.New(relay.Config{BaseURL: *baseURL + "/relay", Name: "embedded relay", Store: st})
	if err != nil {
		log.Fatal(err)
	}
	mux.Handle("/relay/", r.Handler())
	mux.Handle("GET /.well-known/webfinger", r.Handler())
	mux.Handle("GET /.well-known/nodeinfo", r.Handler())
	mux.Handle("GET /.well-known/host-meta", r.Handler())

	if err := r.Start(); err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on %s; relay inbox %s", *addr, r.InboxURL())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	_ = r.Close(shutdown)
}
