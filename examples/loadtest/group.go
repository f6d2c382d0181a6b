package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fedirelay/relay/store/pgstore"
)

// relayGroup is the relay processes of one run and, when there is a
// database, the round-robin reverse proxy in front of them and the schema
// they keep their state in.
type relayGroup struct {
	baseURL string // what the simulated instances talk to
	procs   []*relayProcess
	proxy   *http.Server
	dbURL   string // the connection string given, without the schema
	schema  string // created for the run, dropped by stop
}

// startRelays starts n relay processes with their files under dir. With
// o.dbURL they share a new schema of that database, behind a reverse
// proxy that hands each request to the next process in turn; without it
// n must be 1 and the relay uses a file store in dir.
func startRelays(ctx context.Context, o options, dir string, n int) (*relayGroup, error) {
	g := &relayGroup{}
	if o.dbURL == "" {
		rp, err := startRelay(ctx, o, dir, "", "")
		if err != nil {
			return nil, err
		}
		g.procs, g.baseURL = []*relayProcess{rp}, rp.baseURL
		return g, nil
	}
	g.dbURL = o.dbURL
	g.schema = fmt.Sprintf("fedirelay_loadtest_%d_%d", os.Getpid(), time.Now().UnixNano())
	if err := g.exec(ctx, "CREATE SCHEMA "+g.schema); err != nil {
		return nil, fmt.Errorf("creating a schema for the run: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.stop()
		return nil, err
	}
	g.baseURL = "http://" + ln.Addr().String()
	rr := &roundRobin{}
	g.proxy = &http.Server{Handler: rr, ReadHeaderTimeout: 10 * time.Second}
	go g.proxy.Serve(ln)
	for k := range n {
		// One at a time: the first creates the tables and the relay's key.
		rp, err := startRelay(ctx, o, filepath.Join(dir, fmt.Sprintf("relay%d", k)), g.baseURL, pgstore.WithParam(o.dbURL, "search_path", g.schema))
		if err != nil {
			g.stop()
			return nil, err
		}
		g.procs = append(g.procs, rp)
		target, _ := url.Parse(rp.baseURL)
		proxy := httputil.NewSingleHostReverseProxy(target)
		director := proxy.Director
		proxy.Director = func(r *http.Request) {
			host := r.Host
			director(r)
			r.Host = host // the relay checks signatures over the Host the instances signed
		}
		rr.backends = append(rr.backends, proxy)
	}
	return g, nil
}

// exec runs one statement on the database.
func (g *relayGroup) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, g.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// stop stops the processes and the proxy, and drops the run's schema.
func (g *relayGroup) stop() {
	for _, rp := range g.procs {
		rp.stop()
	}
	if g.proxy != nil {
		_ = g.proxy.Close()
	}
	if g.schema != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := g.exec(ctx, "DROP SCHEMA "+g.schema+" CASCADE"); err != nil {
			fmt.Fprintf(os.Stderr, "loadtest: dropping schema %s: %v\n", g.schema, err)
		}
	}
}

// cpuSplit returns the user and system CPU time of all the processes.
func (g *relayGroup) cpuSplit() (user, system time.Duration, err error) {
	for _, rp := range g.procs {
		u, s, e := rp.cpuSplit()
		user, system, err = user+u, system+s, errors.Join(err, e)
	}
	return user, system, err
}

// peakRSS returns the sum of the processes' peak resident set sizes.
func (g *relayGroup) peakRSS() (int64, error) {
	var sum int64
	for _, rp := range g.procs {
		n, err := rp.peakRSS()
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// roundRobin hands each request to the next backend in turn.
type roundRobin struct {
	backends []http.Handler // set before the first request
	next     atomic.Int64
}

func (rr *roundRobin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(rr.backends) == 0 {
		http.Error(w, "no relay process yet", http.StatusServiceUnavailable)
		return
	}
	rr.backends[int(rr.next.Add(1)-1)%len(rr.backends)].ServeHTTP(w, r)
}
