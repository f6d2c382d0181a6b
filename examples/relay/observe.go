package main

import (
	"net/http"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/metrics/promrelay"
)

// observeHandler returns the operator's observation routes, for the admin
// listener only (they show subscribers' actors and notes):
//
//	GET /metrics       Prometheus metrics (fedirelay_…, Go runtime, process)
//	GET /healthz       200 while the process serves
//	GET /readyz        200 when the store answers and delivery runs, else 503
//	GET /              the operator status page (per-subscriber health)
//	GET /status.css    its style sheet and icon
//	GET /favicon.svg
func observeHandler(r *relay.Relay, exp *promrelay.Exporter) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", exp.Handler())
	mux.HandleFunc("GET /healthz", r.ServeHealthz)
	mux.HandleFunc("GET /readyz", r.ServeReadyz)
	operator := r.OperatorHandler()
	mux.Handle("GET /{$}", operator)
	mux.Handle("GET /status.css", operator)
	mux.Handle("GET /favicon.svg", operator)
	return mux
}

// withObserve serves the routes of observe (see observeHandler) and
// everything else (the admin API) with admin.
func withObserve(admin, observe http.Handler) http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"GET /metrics", "GET /healthz", "GET /readyz", "GET /{$}", "GET /status.css", "GET /favicon.svg"} {
		mux.Handle(p, observe)
	}
	mux.Handle("/", admin)
	return mux
}
