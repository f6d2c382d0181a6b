// Package valuemap holds the values of store.Store (GetValue, ListValues)
// in memory for the store implementations (store/memstore and
// store/filestore).
package valuemap

import (
	"strings"

	"github.com/fedirelay/relay/store"
)

// Map holds values by key. The stores own the slices they put in it: they
// copy what callers pass, and Get and List return copies.
type Map map[string][]byte

// Get returns a copy of the value stored under key, or store.ErrNotFound.
func (m Map) Get(key string) ([]byte, error) {
	v, ok := m[key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return Clone(v), nil
}

// List returns copies of the values whose key starts with prefix, in a new
// non-nil map. It scans every value: values are few and small.
func (m Map) List(prefix string) map[string][]byte {
	out := make(map[string][]byte)
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			out[k] = Clone(v)
		}
	}
	return out
}

// Clone returns a copy of b that is never nil.
func Clone(b []byte) []byte {
	return append([]byte{}, b...)
}
