// Command relay runs a standalone fediverse relay.
//
//	go run ./examples/relay -addr localhost:8080 -base-url http://localhost:8080 -data ./relay-data
//
// The relay refuses to fetch from or deliver to private and loopback
// addresses, and plain http URLs; to try it with servers on your machine,
// add -allow-private 127.0.0.0/8 (or the ranges they use).
//
// For production put it behind a TLS-terminating reverse proxy and pass the
// public URL: -base-url https://relay.example.org.
//
// Unless the GOMEMLIMIT environment variable is set, the relay gives the Go
// runtime a soft memory limit, recomputed after every collection, so that
// the garbage collector runs once about a quarter of the live heap (at
// least 8 MiB) has been allocated instead of letting the heap double (see
// setMemoryLimit).
//
// State (subscribers, the relay key, policies, the delivery queue) lives in
// a file store in the -data directory, which one relay process at a time
// may use. Back it up and restore it with the export and import commands,
// which read and write a JSON document holding the subscribers, values and
// the relay's private key (keep backups secret):
//
//	relay export -data ./relay-data > backup.json
//	relay import -data ./new-data < backup.json
//
// The data directory should be private (mode 0700): the relay creates it
// so, and warns at start when an existing one is open to other users. If
// the store fails to write to disk (a full disk, an I/O error), the relay
// logs the error and exits with status 1, so that a supervisor (systemd,
// a container runtime) restarts it; the restarted relay continues from the
// last commit, which holds everything that was acknowledged.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

func main() {
	if err := run(os.Args[1:]); errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && (args[0] == "export" || args[0] == "import") {
		return runBackup(args[0], args[1:], os.Stdin, os.Stdout)
	}
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "localhost:8080", "address to listen on")
	baseURL := fs.String("base-url", "http://localhost:8080", "public URL of the relay (https://... in production)")
	dataDir := fs.String("data", "relay-data", dataHelp)
	name := fs.String("name", "fedirelay", "relay name shown to subscribers")
	summary := fs.String("summary", "", "relay description")
	approval := fs.Bool("approval", false, "hold subscription requests for manual approval")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	var allowPrivate []netip.Prefix
	fs.Func("allow-private", "for local testing: let the relay fetch from and deliver to these private or reserved\n"+
		"address ranges (comma-separated CIDRs, e.g. 127.0.0.0/8), and over plain http", func(v string) error {
		for _, s := range strings.Split(v, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				return err
			}
			allowPrivate = append(allowPrivate, p)
		}
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if setMemoryLimit() {
		logger.Debug("soft memory limit: GC once a quarter of the live heap (at least 8 MiB) is allocated; set GOMEMLIMIT to choose another")
	}

	warnDataDirMode(*dataDir, func(msg string) { logger.Warn(msg, "dir", absPath(*dataDir)) })
	st, err := openStore(*dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
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
	if len(allowPrivate) > 0 {
		cfg.AllowPrivate, cfg.AllowHTTP = allowPrivate, true
		logger.Info("outbound guard relaxed for local testing: plain http and private ranges allowed", "ranges", allowPrivate)
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
	// Catch the signals before announcing that the relay listens, so that
	// one sent right after the announcement stops it cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := r.Start(); err != nil {
		return err
	}
	fmt.Printf("fedirelay listening on http://%s\n", ln.Addr())
	fmt.Printf("  public URL  %s\n", *baseURL)
	fmt.Printf("  subscribe   Mastodon/Misskey inbox %s, Pleroma/Akkoma/GoToSocial actor %s\n", r.InboxURL(), r.ActorID())
	fmt.Printf("  state in    %s\n", absPath(*dataDir))

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	case <-st.Failed():
		// Nothing can be stored any more: stop at once and let a
		// supervisor restart the relay, which reopens the store.
		err := fmt.Errorf("the store failed, exiting so that the relay is restarted: %w", st.Err())
		logger.Error("the store can no longer write to disk; exiting so that a supervisor restarts the relay", "err", st.Err())
		_ = srv.Close()
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Close(closeCtx) // it cannot record anything: do not wait long
		return err
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("http shutdown", "err", err)
	}
	return r.Close(shutdownCtx)
}

// warnDataDirMode calls warn if dir exists and other users may read or
// enter it: it holds the relay's private key. The store creates a missing
// directory with mode 0700 but leaves an existing one as it is.
func warnDataDirMode(dir string, warn func(msg string)) {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		warn(fmt.Sprintf("the data directory holds the relay's private key but has mode %04o: "+
			"other users may read it; make it private with chmod 700", perm))
	}
}

// usage is the help text printed before the flags.
const usage = `Usage:
  relay [flags]                      run the relay
  relay export [-data DIR] > FILE    write the relay's state (subscribers, values,
                                     the private key) to standard output as JSON
  relay import [-data DIR] < FILE    read such a document into the data directory
                                     (the relay must not be running); subscribers
                                     and values it holds replace those stored

Backups hold the relay's private key: keep them as secret as the key.

Flags:
`

const dataHelp = "directory for persistent state (one relay process at a time)"

// legacyKeyFile is where earlier versions of this command kept the relay
// key, beside an in-memory store.
const legacyKeyFile = "relay-key.pem"

// keyValue is the store key of the relay's private key.
const keyValue = "relay/private-key.pem"

// openStore opens the file store in dir. A store without relay key adopts
// the key file an earlier version left in dir, so the relay keeps its
// identity.
func openStore(dir string) (*filestore.Store, error) {
	st, err := filestore.Open(dir, nil)
	if errors.Is(err, filestore.ErrLocked) {
		return nil, fmt.Errorf("%w (is the relay running?)", err)
	}
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if _, err := st.GetValue(ctx, keyValue); errors.Is(err, store.ErrNotFound) {
		path := filepath.Join(dir, legacyKeyFile)
		if pemBytes, err := os.ReadFile(path); err == nil {
			if _, err := httpsig.ParsePrivateKeyPEM(pemBytes); err != nil {
				st.Close()
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			if _, err := st.CreateValue(ctx, keyValue, pemBytes); err != nil {
				st.Close()
				return nil, err
			}
		}
	}
	return st, nil
}

// runBackup runs the export or import command with its flags.
func runBackup(cmd string, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("relay "+cmd, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	dataDir := fs.String("data", "relay-data", dataHelp)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", cmd, fs.Args())
	}
	if cmd == "export" { // do not create an empty store where there was none
		_, err := os.Stat(filepath.Join(*dataDir, filestore.FileName))
		if errors.Is(err, os.ErrNotExist) {
			_, err = os.Stat(filepath.Join(*dataDir, legacyKeyFile))
		}
		if err != nil {
			return fmt.Errorf("export: no relay state in %s: %w", *dataDir, err)
		}
	}
	warnDataDirMode(*dataDir, func(msg string) { fmt.Fprintf(os.Stderr, "relay %s: warning: %s: %s\n", cmd, *dataDir, msg) })
	st, err := openStore(*dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := context.Background()
	if cmd == "export" {
		return store.Export(ctx, st, stdout)
	}
	if err := store.Import(ctx, st, stdin); err != nil {
		return err
	}
	return st.Close()
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
