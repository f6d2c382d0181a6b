package memnet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay/memnet"
)

func TestRoundTrip(t *testing.T) {
	var n memnet.Network
	type seen struct {
		method, requestURI, path, rawQuery, host, remote, contentLength, hostHeader string
		contentLen                                                                  int64
		body                                                                        []byte
		tls                                                                         bool
	}
	got := make(chan seen, 1)
	n.Handle("Example.TEST", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		assert.NoError(t, err)
		got <- seen{
			method: r.Method, requestURI: r.RequestURI, path: r.URL.Path, rawQuery: r.URL.RawQuery,
			host: r.Host, remote: r.RemoteAddr, contentLength: r.Header.Get("Content-Length"),
			hostHeader: r.Header.Get("Host"), contentLen: r.ContentLength, body: b, tls: r.TLS != nil,
		}
		w.Header().Set("Content-Type", "application/activity+json")
		w.Header().Set("X-Test", "yes")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))

	body := []byte(`{"type":"Follow"}`)
	req, err := http.NewRequest(http.MethodPost, "https://example.test/users/a%2Fb/inbox?x=1&y=2", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/activity+json")
	resp, err := n.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	require.NoError(t, err)

	assert.Equal(t, http.StatusAccepted, resp.StatusCode)
	assert.Equal(t, "202 Accepted", resp.Status)
	assert.Equal(t, `{"ok":true}`, string(rb))
	assert.Equal(t, "yes", resp.Header.Get("X-Test"))
	assert.Equal(t, int64(len(rb)), resp.ContentLength)

	s := <-got
	assert.Equal(t, http.MethodPost, s.method)
	assert.Equal(t, "/users/a%2Fb/inbox?x=1&y=2", s.requestURI)
	assert.Equal(t, "/users/a/b/inbox", s.path)
	assert.Equal(t, "x=1&y=2", s.rawQuery)
	assert.Equal(t, "example.test", s.host)
	assert.Equal(t, memnet.RemoteAddr, s.remote)
	assert.Equal(t, fmt.Sprint(len(body)), s.contentLength)
	assert.Empty(t, s.hostHeader)
	assert.Equal(t, int64(len(body)), s.contentLen)
	assert.Equal(t, body, s.body)
	assert.True(t, s.tls)
}

func TestPortsAndSchemes(t *testing.T) {
	var n memnet.Network
	n.Handle("a.test:8080", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "a:"+r.Host+":"+fmt.Sprint(r.TLS != nil))
	}))
	n.Handle("b.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "b")
	}))
	get := func(u string) (string, error) {
		resp, err := n.Client().Get(u)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	s, err := get("http://a.test:8080/")
	require.NoError(t, err)
	assert.Equal(t, "a:a.test:8080:false", s)
	s, err = get("https://b.test:443/x")
	require.NoError(t, err)
	assert.Equal(t, "b", s)
	s, err = get("http://B.TEST/x")
	require.NoError(t, err)
	assert.Equal(t, "b", s)
	_, err = get("http://a.test/")
	assert.Error(t, err, "the port is part of the host key")
}

func TestUnknownHost(t *testing.T) {
	var n memnet.Network
	_, err := n.Client().Get("https://nowhere.test/actor")
	require.Error(t, err)
	var dnsErr *net.DNSError
	require.ErrorAs(t, err, &dnsErr)
	assert.True(t, dnsErr.IsNotFound)
	assert.Equal(t, "nowhere.test", dnsErr.Name)

	n.Handle("gone.test", http.NotFoundHandler())
	resp, err := n.Client().Get("https://gone.test/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	n.Remove("gone.test")
	_, err = n.Client().Get("https://gone.test/")
	assert.ErrorAs(t, err, &dnsErr)
}

func TestRedirectsFollowed(t *testing.T) {
	var n memnet.Network
	n.Handle("r.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "https://s.test/new", http.StatusFound)
			return
		}
		http.NotFound(w, r)
	}))
	n.Handle("s.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "new:"+r.URL.Path)
	}))
	resp, err := n.Client().Get("https://r.test/old")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	assert.Equal(t, "new:/new", string(b))
	assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
}

func TestContextCancelHangingHandler(t *testing.T) {
	var n memnet.Network
	release := make(chan struct{})
	handlerDone := make(chan struct{})
	n.Handle("hang.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://hang.test/", nil)
	require.NoError(t, err)
	start := time.Now()
	_, err = n.Client().Do(req)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	assert.Less(t, time.Since(start), 5*time.Second)
	// The handler saw the cancellation through its request context.
	select {
	case <-handlerDone:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("handler context was not cancelled")
	}
}

func TestHandlerPanic(t *testing.T) {
	var n memnet.Network
	n.Handle("panic.test", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	_, err := n.Client().Get("https://panic.test/")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "boom")
}

func TestConcurrentUse(t *testing.T) {
	var n memnet.Network
	for i := 0; i < 4; i++ {
		host := fmt.Sprintf("h%d.test", i)
		n.Handle(host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(append([]byte(r.Host+":"), b...))
		}))
	}
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				host := fmt.Sprintf("h%d.test", (g+i)%4)
				payload := fmt.Sprintf("g%d-i%d", g, i)
				resp, err := n.Client().Post("https://"+host+"/inbox", "text/plain", strings.NewReader(payload))
				if !assert.NoError(t, err) {
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				assert.Equal(t, host+":"+payload, string(b))
			}
		}(g)
	}
	// Registrations change while requests are in flight.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 50; i++ {
			n.Handle("extra.test", http.NotFoundHandler())
			n.Remove("extra.test")
			_ = n.Hosts()
		}
	}()
	wg.Wait()
	assert.Len(t, n.Hosts(), 4)
}
