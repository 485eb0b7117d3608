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
