package relay_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/httpsig"
)

// fakeActors is a minimal ActivityPub server on loopback for security
// tests: it serves actor documents with keys the test holds, so the test
// can sign requests in any way (draft-cavage or RFC 9421, right or
// wrong), counts the GETs of every path, and records what its inbox
// receives.
type fakeActors struct {
	t    *testing.T
	srv  *httptest.Server
	base string

	mu       sync.Mutex
	keys     map[string]*rsa.PrivateKey // by user name
	gets     map[string]int             // GETs by path
	inbox    []*http.Request            // requests to /inbox, with Body replaced by the bytes read
	bodies   [][]byte
	getHook  func(w http.ResponseWriter, r *http.Request) bool // true: handled
	inboxRes int                                               // status the inbox answers, 202 by default
}

// testKeys are generated once: RSA key generation is slow under -race.
var testKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	keys := make([]*rsa.PrivateKey, 4)
	for i := range keys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[i] = k
	}
	return keys
})

var keyCounter atomic.Uint32

func newFakeActors(t *testing.T) *fakeActors {
	t.Helper()
	f := &fakeActors{t: t, keys: map[string]*rsa.PrivateKey{}, gets: map[string]int{}, inboxRes: http.StatusAccepted}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: f}}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	f.base = f.srv.URL
	return f
}

func (f *fakeActors) host() string { return strings.TrimPrefix(f.base, "http://") }

func (f *fakeActors) actorID(user string) string { return f.base + "/users/" + user }
func (f *fakeActors) keyID(user string) string   { return f.actorID(user) + "#main-key" }
func (f *fakeActors) inboxURL() string           { return f.base + "/inbox" }

func (f *fakeActors) key(user string) *rsa.PrivateKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[user]
	if !ok {
		keys := testKeys()
		k = keys[int(keyCounter.Add(1))%len(keys)]
		f.keys[user] = k
	}
	return k
}

func (f *fakeActors) getCount(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets[path]
}

// received returns the requests the inbox got and their bodies.
func (f *fakeActors) received() ([]*http.Request, [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.inbox...), append([][]byte(nil), f.bodies...)
}

func (f *fakeActors) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/inbox" {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.inbox = append(f.inbox, r)
		f.bodies = append(f.bodies, body)
		status := f.inboxRes
		f.mu.Unlock()
		w.WriteHeader(status)
		return
	}
	f.mu.Lock()
	f.gets[r.URL.Path]++
	hook := f.getHook
	f.mu.Unlock()
	if hook != nil && hook(w, r) {
		return
	}
	user, ok := strings.CutPrefix(r.URL.Path, "/users/")
	if !ok || user == "" || strings.Contains(user, "/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/activity+json")
	_, _ = w.Write(f.actorDoc(user))
}

// actorDoc returns the actor document of user.
func (f *fakeActors) actorDoc(user string) []byte {
	pemKey, err := httpsig.MarshalPublicKeyPEM(&f.key(user).PublicKey)
	require.NoError(f.t, err)
	doc := map[string]any{
		"@context":          []any{"https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1"},
		"id":                f.actorID(user),
		"type":              "Person",
		"preferredUsername": user,
		"inbox":             f.inboxURL(),
		"endpoints":         map[string]any{"sharedInbox": f.inboxURL()},
		"publicKey":         map[string]any{"id": f.keyID(user), "owner": f.actorID(user), "publicKeyPem": pemKey},
	}
	b, err := json.Marshal(doc)
	require.NoError(f.t, err)
	return b
}

// signCavage signs req with the user's key the way Mastodon does.
func (f *fakeActors) signCavage(req *http.Request, user string, body []byte) {
	f.t.Helper()
	s := httpsig.Signer{KeyID: f.keyID(user), Key: f.key(user)}
	require.NoError(f.t, s.SignRequest(req, body, time.Now()))
}

// sig9421 describes an RFC 9421 signature for signRFC9421.
type sig9421 struct {
	components []string // covered components
	params     string   // the parameters after the inner list, e.g. `;created=1;keyid="k"`
	targetURI  string   // overrides the @target-uri value
	key        *rsa.PrivateKey
}

// signRFC9421 signs req (a client request with an absolute URL) with an
// RFC 9421 signature built by hand, independently of the relay's signer:
// it sets Content-Digest when body != nil, builds the signature base line
// by line and signs it with RSASSA-PKCS1-v1_5 SHA-256.
func signRFC9421(t *testing.T, req *http.Request, body []byte, s sig9421) {
	t.Helper()
	if body != nil && req.Header.Get("Content-Digest") == "" {
		sum := sha256.Sum256(body)
		req.Header.Set("Content-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum[:])+":")
	}
	if req.Header.Get("Date") == "" {
		req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	quoted := make([]string, len(s.components))
	var lines []string
	for i, c := range s.components {
		quoted[i] = `"` + c + `"`
		var v string
		switch c {
		case "@method":
			v = req.Method
		case "@target-uri":
			v = req.URL.String()
			if s.targetURI != "" {
				v = s.targetURI
			}
		case "@authority", "host":
			v = req.URL.Host
		case "@path":
			v = req.URL.EscapedPath()
		default:
			v = req.Header.Get(c)
		}
		lines = append(lines, `"`+c+`": `+v)
	}
	input := "(" + strings.Join(quoted, " ") + ")" + s.params
	lines = append(lines, `"@signature-params": `+input)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	require.NoError(t, err)
	req.Header.Set("Signature-Input", "sig1="+input)
	req.Header.Set("Signature", "sig1=:"+base64.StdEncoding.EncodeToString(sig)+":")
}

// post sends body to url with sign applied, and returns the status and
// response text.
func post(t *testing.T, url string, body []byte, sign func(*http.Request)) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/activity+json")
	sign(req)
	client := &http.Client{Timeout: wait}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text), resp.Header
}

// followDoc is a Mastodon-style Follow of as:Public by actor.
func followDoc(actor string) []byte {
	return mustJSON(map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams",
		"id":       actor + "#follow-" + randomID(),
		"type":     "Follow",
		"actor":    actor,
		"object":   relay.PublicCollection,
	})
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// note is a public Create of a Note by actor, with an optional published.
func note(actor, id string, published time.Time) []byte {
	doc := map[string]any{
		"@context": "https://www.w3.org/ns/activitystreams",
		"id":       actor + "/statuses/" + id + "/activity",
		"type":     "Create",
		"actor":    actor,
		"to":       []string{relay.PublicCollection},
		"object": map[string]any{
			"id": actor + "/statuses/" + id, "type": "Note", "attributedTo": actor, "content": "hi",
		},
	}
	if !published.IsZero() {
		doc["published"] = published.UTC().Format(time.RFC3339)
	}
	return mustJSON(doc)
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// trap is a server on a loopback address ip that counts connections and
// must never get one.
func trap(t *testing.T, ip string) (*countingListener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	require.NoError(t, err)
	cl := &countingListener{Listener: ln}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})}
	go func() { _ = srv.Serve(cl) }()
	t.Cleanup(func() { _ = srv.Close() })
	return cl, ln.Addr().String()
}

// serveRelay runs r's handler on a loopback server and returns its URL.
// wrap, if not nil, wraps the handler.
func newRelayServer(t *testing.T, cfg relay.Config, wrap func(http.Handler) http.Handler) *relay.Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.BaseURL = "http://" + ln.Addr().String()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	r, err := relay.New(cfg)
	require.NoError(t, err)
	h := r.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	require.NoError(t, r.Start())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		require.NoError(t, r.Close(ctx))
	})
	return r
}
