// Command embed shows an existing Go server that adds a relay next to its
// own routes. The relay lives under /relay; the server keeps / and /api/.
//
//	go run ./examples/embed -addr localhost:8081 -base-url http://localhost:8081
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
)

func main() {
	addr := flag.String("addr", "localhost:8081", "address to listen on")
	baseURL := flag.String("base-url", "http://localhost:8081", "public URL of this server")
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
	r, err := relay.New(relay.Config{BaseURL: *baseURL + "/relay", Name: "embedded relay"})
	if err != nil {
		log.Fatal(err)
	}
	h := r.Handler()
	mux.Handle("/relay/", h)
	mux.Handle("GET /.well-known/webfinger", h)
	mux.Handle("GET /.well-known/nodeinfo", h)
	mux.Handle("GET /.well-known/host-meta", h)

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
