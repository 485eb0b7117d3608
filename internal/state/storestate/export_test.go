package storestate

// Queued reports how many uses wait in the open batch.
func (s *Store) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == nil {
		return 0
	}
	return len(s.next.uses)
}

// Refilling reports whether a block of jti's uses is being counted.
func (s *Store) Refilling(jti string) bool {
	s.resMu.Lock()
	defer s.resMu.Unlock()
	r := s.reserved[jti]
	return r != nil && r.pending != nil
}
