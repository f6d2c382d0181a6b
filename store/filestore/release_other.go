//go:build !linux

package filestore

// releaseMapping does nothing on this system; see the Linux version.
func (s *Store) releaseMapping() {}

// releasePages does nothing on this system; see the Linux version.
func (s *Store) releasePages(int64) {}
