package filestore

import (
	"context"

	bolt "go.etcd.io/bbolt"
)

// CompleteBatch removes deliveries as Complete does for each of them, in
// one change to the file: one transaction and one sync for the lot, where
// concurrent Complete calls that arrive while a commit is being synced
// each risk a commit of their own. Absent and repeated ids are ignored. It
// returns once the change is on disk; on error nothing was removed.
func (s *Store) CompleteBatch(ctx context.Context, deliveryIDs []string) error {
	return s.change(ctx, func() (func(*bolt.Tx) error, error) {
		items := make([]*item, 0, len(deliveryIDs))
		seen := make(map[*item]bool, len(deliveryIDs))
		for _, id := range deliveryIDs {
			if it, ok := s.q.ByID[id]; ok && !seen[it] {
				seen[it] = true
				items = append(items, it)
			}
		}
		return removeTx(s.q, items), nil // nil when there is nothing to remove
	})
}
