package relaytest

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// LD signatures of the fake instances.
//
// The fakes attach an RsaSignature2017 block shaped exactly like Mastodon's (type, creator,
// created, signatureValue; Misskey adds a nonce) whose signatureValue is a real RSA-SHA256
// signature, computed like Mastodon's (sign hex(sha256(options)) + hex(sha256(document))) but with
// a simplified canonicalisation: instead of JSON-LD expansion and URDNA2015 the documents are
// re-serialised as JSON with sorted keys. That cannot be checked by a real JSON-LD verifier, but
// the fake receivers check it, so any change to the content of a forwarded activity (a field
// added, removed or altered, a re-typed number) makes the LD signature fail, while mere
// re-formatting does not. See protocol.md §7.

const (
	identityV1Context = "https://w3id.org/identity/v1"
	ldSignatureType   = "RsaSignature2017"
)

// canonicalJSON is the simplified canonical form: JSON with sorted object keys, no HTML escaping.
func canonicalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func ldHashHex(v any) (string, error) {
	b, err := canonicalJSON(v)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func ldToBeSigned(doc map[string]any, options map[string]any) ([]byte, error) {
	opts := make(map[string]any, len(options)+1)
	for k, v := range options {
		switch k {
		case "type", "id", "signatureValue":
			continue
		}
		opts[k] = v
	}
	opts["@context"] = identityV1Context
	oh, err := ldHashHex(opts)
	if err != nil {
		return nil, err
	}
	body := make(map[string]any, len(doc))
	for k, v := range doc {
		if k != "signature" {
			body[k] = v
		}
	}
	dh, err := ldHashHex(body)
	if err != nil {
		return nil, err
	}
	return []byte(oh + dh), nil
}

// ldSign attaches a signature block to doc. nonce is added to the options when non-empty
// (Misskey).
func ldSign(doc map[string]any, key *rsa.PrivateKey, creator string, created time.Time, nonce string) error {
	opts := map[string]any{
		"creator": creator,
		"created": created.UTC().Format("2006-01-02T15:04:05Z"),
	}
	if nonce != "" {
		opts["nonce"] = nonce
	}
	tbs, err := ldToBeSigned(doc, opts)
	if err != nil {
		return err
	}
	hashed := sha256.Sum256(tbs)
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, hashed[:])
	if err != nil {
		return err
	}
	block := map[string]any{"type": ldSignatureType}
	for k, v := range opts {
		block[k] = v
	}
	block["signatureValue"] = base64.StdEncoding.EncodeToString(sig)
	doc["signature"] = block
	return nil
}

// ldVerify checks doc's signature block. keyLookup resolves the creator keyId to a public key and
// its owner. It returns the key owner on success.
func ldVerify(doc map[string]any, keyLookup func(keyID string) (*rsa.PublicKey, string, error)) (string, error) {
	block, ok := doc["signature"].(map[string]any)
	if !ok {
		return "", errors.New("no LD signature")
	}
	if t, _ := block["type"].(string); t != ldSignatureType {
		return "", fmt.Errorf("unsupported LD signature type %q", block["type"])
	}
	creator, _ := block["creator"].(string)
	sigB64, _ := block["signatureValue"].(string)
	if creator == "" || sigB64 == "" {
		return "", errors.New("LD signature without creator or signatureValue")
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil {
		return "", fmt.Errorf("LD signatureValue is not base64: %v", err)
	}
	pub, owner, err := keyLookup(creator)
	if err != nil {
		return "", fmt.Errorf("LD signature creator key: %w", err)
	}
	tbs, err := ldToBeSigned(doc, block)
	if err != nil {
		return "", err
	}
	hashed := sha256.Sum256(tbs)
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, hashed[:], sig); err != nil {
		return "", errors.New("LD signature does not verify (document altered?)")
	}
	return owner, nil
}
