package filestore

import "syscall"

// releaseMapping tells the kernel that the store no longer needs the pages
// of the database file it has read through its memory mapping, so that
// they stop counting in the process's resident memory (they stay in the
// page cache, and are mapped again when read). Open reads the whole file;
// without this a large queue would keep the file resident twice over, once
// in the in-memory index and once mapped. It is called after Open, at most
// every 50 ms after commits (which read the pages they change) and every
// ReclaimInterval.
func (s *Store) releaseMapping() {
	// A read transaction keeps bbolt from remapping the file meanwhile.
	tx, err := s.db.Begin(false)
	if err != nil {
		return
	}
	defer func() { _ = tx.Rollback() }()
	s.releasePages(tx.Size())
}

// releasePages is releaseMapping for a caller that holds a transaction,
// which keeps the mapping in place, on a file of size bytes.
func (s *Store) releasePages(size int64) {
	// The mapping is read-only and shared: dropping pages loses nothing.
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, s.db.Info().Data, uintptr(size), syscall.MADV_DONTNEED)
}
