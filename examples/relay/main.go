// Command relay runs a standalone fediverse relay.
//
//	relay -addr localhost:8080 -data ./relay-data
//
// The public URL (-base-url) defaults to http:// and the -addr address
// (localhost for an address without host); behind a TLS-terminating
// reverse proxy pass the public URL: -base-url https://relay.example.org,
// and -trusted-proxies with the proxy's address so that logs show the
// clients' addresses.
//
// The relay refuses to fetch from or deliver to private and loopback
// addresses, and plain http URLs; to try it with servers on your machine,
// add -allow-private 127.0.0.0/8 (or the ranges they use).
//
// The command line is checked whole before anything happens: an unknown
// command, a stray argument or a bad flag value stops it with exit status
// 2 before it listens or creates anything; it then listens (a busy port
// stops it, status 1, still before the data directory is created), opens
// the data directory and starts. `relay help` lists the commands.
//
// Unless the GOMEMLIMIT environment variable is set, the relay gives the Go
// runtime a soft memory limit, recomputed after every collection, so that
// the garbage collector runs once about an eighth of the live heap (at
// least 6 MiB) has been allocated instead of letting the heap double (see
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
// While it runs, the relay serves its admin API on the Unix socket
// admin.sock in the data directory (mode 0600, so only its user may use
// it), and, with -admin-addr, on TCP with the bearer token of
// -admin-token-file. Commands act on the running relay through the
// socket; relay help lists them, docs/operating.md explains each task:
//
//	relay subscribers -data ./relay-data -state pending
//	relay approve -data ./relay-data https://example.social/actor
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
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
	"github.com/fedirelay/relay/metrics/promrelay"
	"github.com/fedirelay/relay/store"
	"github.com/fedirelay/relay/store/filestore"
)

func main() {
	os.Exit(report(os.Stderr, run(os.Args[1:], os.Stdin, os.Stdout)))
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the relay or a command failed while running
	exitUsage   = 2 // the command line is wrong: nothing was done
)

// usageError is a wrong command line. Nothing was started or created.
type usageError struct {
	msg       string
	showUsage bool // print the usage text too (unknown flags)
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// report writes err to stderr, once prefixed "relay: ", and returns the
// exit status for it.
func report(stderr io.Writer, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "relay: ") {
		msg = "relay: " + msg
	}
	fmt.Fprintln(stderr, msg)
	var ue *usageError
	if !errors.As(err, &ue) {
		return exitFailure
	}
	if ue.showUsage {
		printUsage(stderr)
	}
	return exitUsage
}

// command is a subcommand: relay NAME [flags].
type command struct {
	name     string
	synopsis string // the arguments, for the usage text
	summary  string // what it does, for the usage text
	run      func(args []string, stdin io.Reader, stdout io.Writer) error
}

// commands are the subcommands, in the order the usage text lists them.
// To add one, add an entry (see init).
var commands []command

func init() {
	commands = []command{
		{"export", "[-data DIR | -database-url URL] > FILE", "write the relay's state (subscribers, values, the private key)\n" +
			"to standard output as JSON", backupCommand("export")},
		{"import", "[-data DIR | -database-url URL] < FILE", "read such a document into the data directory (the relay must not\n" +
			"be running); subscribers and values it holds replace those stored", backupCommand("import")},
		{"help", "", "print this text", func(args []string, _ io.Reader, stdout io.Writer) error {
			if len(args) > 0 {
				return usageErrorf("help: unexpected argument %q", args[0])
			}
			printUsage(stdout)
			return nil
		}},
	}
	// The commands acting on the running relay (commands.go), before help.
	commands = slices.Insert(commands, len(commands)-1, adminCommandList()...)
}

func backupCommand(name string) func([]string, io.Reader, io.Writer) error {
	return func(args []string, stdin io.Reader, stdout io.Writer) error {
		return runBackup(name, args, stdin, stdout)
	}
}

// run runs the command line args: a subcommand when the first argument
// is not a flag, else the relay.
func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		for _, c := range commands {
			if c.name == args[0] {
				return c.run(args[1:], stdin, stdout)
			}
		}
		return usageErrorf("unknown command %q (commands: %s; flags start with -; see relay help)", args[0], commandNames())
	}
	cfg, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	return serve(cfg, stdout)
}

func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// config is the relay's validated command line.
type config struct {
	addr    string // address to listen on
	dataDir string
	// databaseURL, when set, names the PostgreSQL database the relay runs
	// on instead of the file store in dataDir.
	databaseURL string
	logLevel    slog.Level
	// relay is the relay's configuration but for Store and Logger.
	relay relay.Config
	// warnings about the configuration, logged at start.
	warnings []string
	// admin holds the admin API flags (admin.go), adminToken the TCP admin
	// API's bearer token read from -admin-token-file.
	admin      *adminFlags
	adminToken string
}

// flagNames maps the relay.Config fields set from flags to the flags.
var flagNames = map[string]string{
	"BaseURL":        "-base-url",
	"Name":           "-name",
	"Summary":        "-summary",
	"AllowPrivate":   "-allow-private",
	"TrustedProxies": "-trusted-proxies",
}

// newServeFlags returns the relay's flag set and the config it fills.
func newServeFlags() (*flag.FlagSet, *config, *rawFlags) {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseFlags reports errors itself
	c, raw := &config{}, &rawFlags{}
	fs.StringVar(&c.addr, "addr", "localhost:8080", "address to listen on")
	fs.StringVar(&raw.baseURL, "base-url", "", "public URL of the relay (https://... in production)\n(default http:// and the -addr address, localhost for an address without host)")
	fs.StringVar(&c.dataDir, "data", "relay-data", dataHelp)
	fs.StringVar(&c.databaseURL, "database-url", os.Getenv("DATABASE_URL"), databaseURLHelp)
	fs.StringVar(&c.relay.Name, "name", "fedirelay", "relay name shown to subscribers")
	fs.StringVar(&c.relay.Summary, "summary", "", "relay description")
	fs.BoolVar(&c.relay.ApprovalRequired, "approval", false, "hold subscription requests for manual approval")
	fs.BoolVar(&c.relay.RelayUnlisted, "relay-unlisted", false, "relay unlisted posts too (as:Public in cc only): a privacy choice, see docs/protocol.md")
	fs.StringVar(&raw.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&raw.allowPrivate, "allow-private", "", "for local testing: let the relay fetch from and deliver to these private or reserved\n"+
		"address ranges (comma-separated CIDRs, e.g. 127.0.0.0/8), and over plain http")
	fs.StringVar(&raw.trustedProxies, "trusted-proxies", "", "address ranges of the reverse proxies in front of the relay (comma-separated CIDRs,\n"+
		"e.g. 127.0.0.1/32): for their requests, logs show the client from X-Forwarded-For or Forwarded")
	raw.applyTopics = addTopicFlags(fs)
	c.admin = addAdminFlags(fs)
	return fs, c, raw
}

// rawFlags are the flag values parseFlags checks and converts.
type rawFlags struct {
	baseURL, logLevel, allowPrivate, trustedProxies string
	applyTopics                                     func(*relay.Config) error // topic and filter flags (topics.go)
}

// parseFlags parses and checks the relay's flags. It writes the usage
// text to stdout and returns flag.ErrHelp for -h; every other error is a
// *usageError naming the flag.
func parseFlags(args []string, stdout io.Writer) (config, error) {
	fs, c, raw := newServeFlags()
	if err := fs.Parse(args); err != nil {
		switch {
		case errors.Is(err, flag.ErrHelp):
			printUsage(stdout)
			return config{}, err
		case strings.HasPrefix(err.Error(), "flag provided but not defined"):
			return config{}, &usageError{msg: err.Error(), showUsage: true}
		}
		return config{}, usageErrorf("%v (see relay -h)", err)
	}
	if fs.NArg() > 0 {
		return config{}, usageErrorf("unexpected argument %q: flags go first, and commands (%s) before them", fs.Arg(0), commandNames())
	}
	if err := c.check(raw); err != nil {
		return config{}, err
	}
	return *c, nil
}

// check validates c and completes it from raw: everything is checked
// before anything is created or opened.
func (c *config) check(raw *rawFlags) error {
	host, port, err := net.SplitHostPort(c.addr)
	if err != nil || port == "" {
		return usageErrorf("-addr must be host:port or :port, such as localhost:8080: %q", c.addr)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return usageErrorf("-addr has a bad port: %q", c.addr)
	}
	if c.dataDir == "" {
		return usageErrorf("-data must name a directory")
	}
	if err := c.logLevel.UnmarshalText([]byte(raw.logLevel)); err != nil {
		return usageErrorf("-log-level must be debug, info, warn or error: %q", raw.logLevel)
	}
	if c.relay.AllowPrivate, err = parsePrefixes("-allow-private", raw.allowPrivate); err != nil {
		return err
	}
	c.relay.AllowHTTP = len(c.relay.AllowPrivate) > 0
	if c.relay.TrustedProxies, err = parsePrefixes("-trusted-proxies", raw.trustedProxies); err != nil {
		return err
	}
	if err := raw.applyTopics(&c.relay); err != nil {
		return usageErrorf("%v", err)
	}
	if c.adminToken, err = c.admin.token(); err != nil {
		return usageErrorf("%v", err)
	}
	c.admin.apply(&c.relay)
	c.relay.BaseURL = raw.baseURL
	if c.relay.BaseURL == "" {
		c.relay.BaseURL = defaultBaseURL(host, port)
	}
	if err := c.relay.Validate(); err != nil {
		var ce *relay.ConfigError
		if errors.As(err, &ce) && flagNames[ce.Field] != "" {
			return usageErrorf("%s %s: %q", flagNames[ce.Field], ce.Reason, ce.Value)
		}
		return err
	}
	if u, err := url.Parse(c.relay.BaseURL); err == nil && u.Scheme == "http" && isLoopback(u.Hostname()) {
		c.warnings = append(c.warnings, "the public URL "+c.relay.BaseURL+" is plain http on a loopback host: "+
			"fine for a local try; other servers cannot reach it (set -base-url https://... behind a reverse proxy)")
	}
	return nil
}

// defaultBaseURL is the public URL for -addr host:port when -base-url is
// not given: http://host:port, with localhost for an empty or unspecified
// host.
func defaultBaseURL(host, port string) string {
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// isLoopback reports whether host names this machine only.
func isLoopback(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// parsePrefixes parses the comma-separated CIDRs (or single addresses) of
// flag name's value v.
func parsePrefixes(name, v string) ([]netip.Prefix, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if a, aerr := netip.ParseAddr(s); err != nil && aerr == nil {
			p, err = netip.PrefixFrom(a, a.BitLen()), nil // one address
		}
		if err != nil {
			return nil, usageErrorf("%s must be comma-separated address ranges such as 127.0.0.0/8 (or addresses): %q is not one", name, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// serve runs the relay until SIGINT or SIGTERM: it listens, opens the
// store, starts the relay and serves.
func serve(c config, stdout io.Writer) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.logLevel}))
	if setMemoryLimit() {
		logger.Debug(memoryLimitMessage)
	}
	for _, w := range c.warnings {
		logger.Warn(w)
	}
	if len(c.relay.AllowPrivate) > 0 {
		logger.Info("outbound guard relaxed for local testing: plain http and private ranges allowed", "ranges", c.relay.AllowPrivate)
	}
	// Listen before opening the store, so that a busy port leaves
	// nothing behind.
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("relay: -addr %s: %w", c.addr, err)
	}
	defer ln.Close()

	if c.databaseURL == "" {
		warnDataDirMode(c.dataDir, func(msg string) { logger.Warn(msg, "dir", absPath(c.dataDir)) })
	}
	st, err := openRelayStore(c.dataDir, c.databaseURL)
	if err != nil {
		if c.databaseURL != "" {
			return fmt.Errorf("relay: -database-url: %w", err)
		}
		return fmt.Errorf("relay: -data %s: %w", c.dataDir, err)
	}
	defer st.Close()
	cfg := c.relay
	// The store itself, not the wrapper: the relay checks it for
	// store.Notifier.
	cfg.Store, cfg.Logger = st.Store, logger
	metrics := promrelay.New()
	cfg.Events = metrics
	if testConfig != nil {
		testConfig(&cfg)
	}
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	metrics.Watch(r)
	srv := newHTTPServer(r.Handler(), logger)
	// Catch the signals before announcing that the relay listens, so that
	// one sent right after the announcement stops it cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := r.Start(); err != nil {
		return err
	}
	adminSrv, err := startAdmin(r, c.dataDir, c.admin, c.adminToken, logger, observeHandler(r, metrics))
	if err != nil {
		_ = r.Close(context.Background())
		return err
	}
	defer adminSrv.close(context.Background())
	fmt.Fprintf(stdout, "fedirelay listening on http://%s\n", ln.Addr())
	fmt.Fprintf(stdout, "  public URL  %s\n", cfg.BaseURL)
	fmt.Fprintf(stdout, "  subscribe   Mastodon/Misskey inbox %s, Pleroma/Akkoma/GoToSocial actor %s\n", r.InboxURL(), r.ActorID())
	fmt.Fprintf(stdout, "  state in    %s\n", st.where)
	fmt.Fprintf(stdout, "  admin       relay subscribers -data %s   (relay help lists the commands)\n", c.dataDir)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	case <-st.Failed():
		// Nothing can be stored any more: stop at once and let a
		// supervisor restart the relay, which reopens the store.
		err := fmt.Errorf("relay: the store failed, exiting so that the relay is restarted: %w", st.Err())
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
	if err := srv.shutdown(shutdownCtx); err != nil {
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

// printUsage writes the usage text: the commands, then the relay's flags.
func printUsage(w io.Writer) {
	fmt.Fprint(w, "Usage:\n  relay [flags]                      run the relay\n")
	for _, c := range commands {
		line := "relay " + c.name
		if c.synopsis != "" {
			line += " " + c.synopsis
		}
		if len(line) > 34 { // the summary goes below
			fmt.Fprintf(w, "  %s\n", line)
			line = ""
		}
		for _, s := range strings.Split(c.summary, "\n") {
			fmt.Fprintf(w, "  %-34s %s\n", line, s)
			line = ""
		}
	}
	fmt.Fprint(w, "\nBackups hold the relay's private key: keep them as secret as the key.\n\nFlags:\n")
	fs, _, _ := newServeFlags()
	fs.SetOutput(w)
	fs.PrintDefaults()
}

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
	fs.SetOutput(io.Discard)
	dataDir := fs.String("data", "relay-data", dataHelp)
	databaseURL := databaseURLFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: relay %s [-data DIR | -database-url URL]\n", cmd)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return err
		}
		return usageErrorf("%s: %v (see relay %s -h)", cmd, err, cmd)
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q", cmd, fs.Arg(0))
	}
	if *dataDir == "" {
		return usageErrorf("%s: -data must name a directory", cmd)
	}
	if cmd == "export" && *databaseURL == "" { // do not create an empty store where there was none
		_, err := os.Stat(filepath.Join(*dataDir, filestore.FileName))
		if errors.Is(err, os.ErrNotExist) {
			_, err = os.Stat(filepath.Join(*dataDir, legacyKeyFile))
		}
		if err != nil {
			return fmt.Errorf("export: no relay state in %s: %w", *dataDir, err)
		}
	}
	if *databaseURL == "" {
		warnDataDirMode(*dataDir, func(msg string) { fmt.Fprintf(os.Stderr, "relay %s: warning: %s: %s\n", cmd, *dataDir, msg) })
	}
	st, err := openRelayStore(*dataDir, *databaseURL)
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
