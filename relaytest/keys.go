package relaytest

import (
	"crypto/rsa"
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"sync"
	"sync/atomic"
)

// Fake actors sign with RSA-2048 keys from a fixed pool, parsed once from
// testkeys.pem (keys made for tests only, published with this package).
// Generating keys instead would take tens to hundreds of milliseconds
// each, more under -race or on a busy machine, and make the time a test
// takes vary with the machine's load. Keys are handed out round-robin:
// consecutively created actors always get different keys, but with more
// than keyPoolSize actors in one process some actors share a key. Tests
// that need "signed with a different key" should use actors created one
// after another (or RotateKey).
const keyPoolSize = 8

//go:embed testkeys.pem
var testKeysPEM []byte

var (
	keyPool  []*rsa.PrivateKey
	keyNext  atomic.Uint32
	keysOnce sync.Once
)

// warmKeys parses the key pool.
func warmKeys() {
	keysOnce.Do(func() {
		rest := testKeysPEM
		for {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				panic("relaytest: parsing test key: " + err.Error())
			}
			keyPool = append(keyPool, k.(*rsa.PrivateKey))
		}
		if len(keyPool) != keyPoolSize {
			panic("relaytest: testkeys.pem does not hold keyPoolSize keys")
		}
	})
}

// nextKey returns the next key of the shared pool.
func nextKey() *rsa.PrivateKey {
	warmKeys()
	n := keyNext.Add(1) - 1
	return keyPool[n%keyPoolSize]
}
