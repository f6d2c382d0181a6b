package httpsig_test

import (
	"bytes"
	"crypto"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/fedirelay/relay/httpsig"
)

// A client signs a POST with draft-cavage (the Signature header every
// fediverse server accepts); a server parses the signature, checks what
// needs no key, looks the key up by its id and verifies.
func Example() {
	key, err := httpsig.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	signer := httpsig.Signer{KeyID: "https://social.example/actor#main-key", Key: key}
	keys := map[string]crypto.PublicKey{signer.KeyID: &key.PublicKey} // in practice: fetched and cached

	// The client.
	body := []byte(`{"type":"Create"}`)
	req, err := http.NewRequest("POST", "https://relay.example/inbox", bytes.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/activity+json")
	if err := signer.SignRequest(req, body, time.Now()); err != nil {
		log.Fatal(err)
	}

	// The server, with the request as it arrives.
	in := httptest.NewRequest(req.Method, req.URL.String(), bytes.NewReader(body))
	in.Header = req.Header
	sig, err := httpsig.FromRequest(in)
	if err != nil {
		log.Fatal(err)
	}
	if err := sig.Check(in, body, httpsig.VerifyOptions{}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("signed by", sig.KeyID)
	fmt.Println("verified:", sig.Verify(in, keys[sig.KeyID]) == nil)

	// A changed body no longer matches its Digest.
	fmt.Println("tampered body passes Check:", sig.Check(in, []byte(`{"type":"Delete"}`), httpsig.VerifyOptions{}) == nil)
	// Output:
	// signed by https://social.example/actor#main-key
	// verified: true
	// tampered body passes Check: false
}

// RFC 9421 works the same way: SignRequestRFC9421 signs,
// MessageSignatureFromRequest parses, Check and Verify verify.
func ExampleSigner_SignRequestRFC9421() {
	key, err := httpsig.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	signer := httpsig.Signer{KeyID: "https://relay.example/actor#main-key", Key: key}
	body := []byte(`{"type":"Announce"}`)
	req := httptest.NewRequest("POST", "https://social.example/inbox", bytes.NewReader(body))
	if err := signer.SignRequestRFC9421(req, body, time.Now()); err != nil {
		log.Fatal(err)
	}

	m, err := httpsig.MessageSignatureFromRequest(req)
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Check(req, body, httpsig.VerifyOptions{}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("keyid:", m.KeyID)
	fmt.Println("verified:", m.Verify(req, &key.PublicKey) == nil)
	// Output:
	// keyid: https://relay.example/actor#main-key
	// verified: true
}
