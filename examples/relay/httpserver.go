package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// httpServer is the relay's http.Server. Its shutdown does not wait for
// connections that have sent no request: http.Server.Shutdown waits up to
// 5 seconds for such a connection (state StateNew), and HTTP clients open
// them ahead of need (Go's Transport dials a spare connection when a
// request finds none idle, and keeps it if another connection frees up
// first), so a relay that was just used took up to 5 seconds to stop with
// nothing in flight.
type httpServer struct {
	*http.Server
	mu      sync.Mutex
	fresh   map[net.Conn]bool // connections that have sent no request yet
	closing bool              // shutdown began: fresh connections are closed
	leaving sync.WaitGroup    // fresh connections closed, not yet past StateNew
	closed  map[net.Conn]bool // those connections
}

func newHTTPServer(h http.Handler, logger *slog.Logger) *httpServer {
	s := &httpServer{fresh: map[net.Conn]bool{}, closed: map[net.Conn]bool{}}
	s.Server = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ConnState:         s.connState,
	}
	return s
}

// connState tracks the connections that have sent no request yet.
func (s *httpServer) connState(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == http.StateNew {
		if s.closing {
			_ = c.Close()
			return
		}
		s.fresh[c] = true
		return
	}
	delete(s.fresh, c)
	if s.closed[c] {
		delete(s.closed, c)
		s.leaving.Done()
	}
}

// shutdown stops the server like http.Server.Shutdown, but first closes
// the connections that have sent no request yet and waits until the
// server has seen them go (at once: their reads fail), so that Shutdown
// waits only for requests in flight. A client that was about to send a
// request on such a connection sees it closed, as when Shutdown closes an
// idle keep-alive connection; HTTP clients retry on a new connection.
func (s *httpServer) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for c := range s.fresh {
		_ = c.Close()
		s.closed[c] = true
		s.leaving.Add(1)
	}
	clear(s.fresh)
	s.mu.Unlock()
	s.leaving.Wait()
	if err := s.Server.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// freshConns returns how many connections have sent no request yet.
func (s *httpServer) freshConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fresh)
}
