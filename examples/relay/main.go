// Command relay runs a standalone fediverse relay.
//
//	go run ./examples/relay -addr localhost:8080 -base-url http://localhost:8080 -data ./relay-data
//
// For production put it behind a TLS-terminating reverse proxy and pass the
// public URL: -base-url https://relay.example.org. State lives in -data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store/memstore"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	addr := fs.String("addr", "localhost:8080", "address to listen on")
	baseURL := fs.String("base-url", "http://localhost:8080", "public URL of the relay (https://... in production)")
	dataDir := fs.String("data", "relay-data", "directory for persistent state")
	name := fs.String("name", "fedirelay", "relay name shown to subscribers")
	summary := fs.String("summary", "", "relay description")
	approval := fs.Bool("approval", false, "hold subscription requests for manual approval")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	st, err := openStore(*dataDir)
	if err != nil {
		return err
	}
	cfg := relay.Config{
		BaseURL: *baseURL,
		Store:   st,
		Logger:  logger,
		Name:    *name,
		Summary: *summary,
	}
	if *approval {
		cfg.FollowPolicy = relay.ManualApproval
	}
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           r.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if err := r.Start(); err != nil {
		return err
	}
	fmt.Printf("fedirelay listening on http://%s\n", ln.Addr())
	fmt.Printf("  public URL  %s\n", *baseURL)
	fmt.Printf("  subscribe   Mastodon/Misskey inbox %s, Pleroma/Akkoma/GoToSocial actor %s\n", r.InboxURL(), r.ActorID())
	fmt.Printf("  state in    %s\n", absPath(*dataDir))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("http shutdown", "err", err)
	}
	return r.Close(shutdownCtx)
}

// keyFile is where the relay key is kept in the data directory.
const keyFile = "relay-key.pem"

// openStore prepares the data directory and a store whose relay key
// persists there.
func openStore(dir string) (*memstore.Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	st := memstore.New()
	path := filepath.Join(dir, keyFile)
	pemBytes, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := relay.GenerateKey()
		if err != nil {
			return nil, err
		}
		if pemBytes, err = relay.MarshalPrivateKeyPEM(key); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if _, err := relay.ParsePrivateKeyPEM(pemBytes); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := st.PutValue(context.Background(), "relay/private-key.pem", pemBytes); err != nil {
		return nil, err
	}
	return st, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
