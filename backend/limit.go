package backend

// TryAddActive counts one more open connection unless that would exceed max
// (max <= 0: no limit). It reports whether the connection was counted.
func (s *Stats) TryAddActive(max int64) bool {
	if max <= 0 {
		s.active.Add(1)
		return true
	}
	for {
		n := s.active.Load()
		if n >= max {
			return false
		}
		if s.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}
