package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store"
)

// adminSocketName is the admin API's Unix socket in the data directory.
const adminSocketName = "admin.sock"

// maxSocketPath is the longest Unix socket path every supported system
// accepts (sun_path holds 104 bytes on the BSDs and macOS, 108 on Linux,
// with a terminating NUL).
const maxSocketPath = 103

// adminFlags are the relay's flags for the admin API and the subscription
// rules.
type adminFlags struct {
	addr, tokenFile             string
	allowlist                   bool
	allowSoftware, denySoftware string
	actorTypes                  string
	hideBlocks, hideApproval    bool
}

// addAdminFlags registers the admin and policy flags on fs.
func addAdminFlags(fs *flag.FlagSet) *adminFlags {
	f := &adminFlags{}
	fs.StringVar(&f.addr, "admin-addr", "", "also serve the admin API on this TCP address (e.g. 127.0.0.1:8081);\n"+
		"a non-loopback address requires -admin-token-file")
	fs.StringVar(&f.tokenFile, "admin-token-file", "", "file holding the bearer token the TCP admin API requires")
	fs.BoolVar(&f.allowlist, "allowlist", false, "allowlist mode: only servers on the allowlist (relay allow DOMAIN) may subscribe")
	fs.StringVar(&f.allowSoftware, "allow-software", "", "only servers running this software (comma-separated NodeInfo names,\n"+
		"e.g. mastodon,misskey) may subscribe; servers whose NodeInfo cannot be read are refused")
	fs.StringVar(&f.denySoftware, "deny-software", "", "servers running this software (comma-separated NodeInfo names) may not subscribe")
	fs.StringVar(&f.actorTypes, "actor-types", "", "only actors of these types (comma-separated, e.g. Application,Service) may subscribe")
	fs.BoolVar(&f.hideBlocks, "hide-blocks", false, "do not publish the block list and its public reasons in NodeInfo")
	fs.BoolVar(&f.hideApproval, "hide-approval", false, "do not say in NodeInfo whether subscriptions need approval")
	return f
}

// apply sets the Config fields of the flags.
func (f *adminFlags) apply(cfg *relay.Config) {
	cfg.Rules = relay.SubscriptionRules{
		AllowlistOnly: f.allowlist,
		AllowSoftware: splitList(f.allowSoftware),
		DenySoftware:  splitList(f.denySoftware),
		ActorTypes:    splitList(f.actorTypes),
	}
	cfg.HideBlocks, cfg.HideApprovalRequired = f.hideBlocks, f.hideApproval
}

// token reads the TCP admin API's bearer token, and refuses a TCP address
// that is not loopback without one. It returns "" when no token is
// configured (or no TCP address).
func (f *adminFlags) token() (string, error) {
	if f.addr == "" {
		if f.tokenFile != "" {
			return "", errors.New("-admin-token-file needs -admin-addr")
		}
		return "", nil
	}
	host, _, err := net.SplitHostPort(f.addr)
	if err != nil {
		return "", fmt.Errorf("-admin-addr: %w", err)
	}
	if f.tokenFile == "" {
		if !isLoopback(host) {
			return "", fmt.Errorf("-admin-addr %s is not a loopback address: refusing to serve the admin API there without -admin-token-file", f.addr)
		}
		return "", nil
	}
	b, err := os.ReadFile(f.tokenFile)
	if err != nil {
		return "", fmt.Errorf("-admin-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", fmt.Errorf("-admin-token-file %s: the token must be at least 16 characters", f.tokenFile)
	}
	return token, nil
}

// requireToken wraps h so that requests must carry "Authorization: Bearer
// TOKEN", compared in constant time; others get 401.
func requireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fedirelay admin"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error": "missing or wrong bearer token"}` + "\n"))
			return
		}
		h.ServeHTTP(w, req)
	})
}

// adminServer serves the admin API on the data directory's Unix socket
// and, if configured, on TCP.
type adminServer struct {
	servers []*http.Server
}

// startAdmin starts serving r's admin API: on the Unix socket in dataDir
// (mode 0600, in a directory of mode 0700, so only the relay's user may
// use it) and on f.addr with token (see adminFlags.token). A socket left
// by a relay that died is replaced: the store's lock guarantees that no
// other relay uses dataDir.
func startAdmin(r *relay.Relay, dataDir string, f *adminFlags, token string, logger *slog.Logger, observe http.Handler) (*adminServer, error) {
	a := &adminServer{}
	if err := os.MkdirAll(dataDir, 0o700); err != nil { // with -database-url it holds only the socket
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	sock := filepath.Join(dataDir, adminSocketName)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("admin socket %s: the path is longer than a Unix socket allows (%d bytes): use a shorter -data path", sock, maxSocketPath)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	a.serve(ln, withObserve(r.AdminHandler(), observe), logger)
	if f.addr != "" {
		h := withObserve(r.AdminHandler(), observe)
		if token != "" {
			h = requireToken(token, h)
		}
		tln, err := net.Listen("tcp", f.addr)
		if err != nil {
			a.close(context.Background())
			return nil, fmt.Errorf("-admin-addr: %w", err)
		}
		a.serve(tln, h, logger)
		logger.Info("admin API on TCP", "addr", tln.Addr().String(), "token", token != "")
	}
	if pending, err := r.Subscribers(context.Background(), store.SubscriberFilter{State: store.StatePending}); err == nil && len(pending) > 0 {
		logger.Info("subscription requests await approval: list them with relay subscribers -state pending",
			"count", len(pending), "data", dataDir)
	}
	return a, nil
}

func (a *adminServer) serve(ln net.Listener, h http.Handler, logger *slog.Logger) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	a.servers = append(a.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("admin API", "err", err)
		}
	}()
}

// close stops the admin servers (the Unix socket file is removed).
func (a *adminServer) close(ctx context.Context) {
	for _, s := range a.servers {
		_ = s.Shutdown(ctx)
	}
}
