package relaytest

import (
	"crypto/rand"
	"crypto/rsa"
	"sync"
	"sync/atomic"
)

// RSA-2048 key generation takes tens to hundreds of milliseconds (more under -race), so all fake
// actors in a test binary share a small pool of keys generated once, in the background, on first
// use. Keys are handed out round-robin: consecutively created actors always get different keys,
// but with more than keyPoolSize actors in one process some actors share a key. Tests that need
// "signed with a different key" should use actors created one after another (or RotateKey).
const keyPoolSize = 8

type keySlot struct {
	once sync.Once
	key  *rsa.PrivateKey
}

func (s *keySlot) get() *rsa.PrivateKey {
	s.once.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("relaytest: generating RSA key: " + err.Error())
		}
		s.key = k
	})
	return s.key
}

var (
	keyPool  [keyPoolSize]keySlot
	keyNext  atomic.Uint32
	keysWarm sync.Once
)

// warmKeys starts generating the whole pool in the background.
func warmKeys() {
	keysWarm.Do(func() {
		for i := range keyPool {
			go keyPool[i].get()
		}
	})
}

// nextKey returns the next key of the shared pool.
func nextKey() *rsa.PrivateKey {
	warmKeys()
	n := keyNext.Add(1) - 1
	return keyPool[n%keyPoolSize].get()
}
