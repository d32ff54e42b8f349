package candidacy

import "time"

// Usable: today's rule, before the silence (stub to show the tests fail).
func (s *Slot) Usable(now time.Time, maxAge time.Duration) bool {
	return s.cur.Load().Usable(now, max(maxAge, s.table.Patience()))
}
