package candidacy

import (
	"math"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// bySample compares every peer when this node decides what its peers
// serve, and keeps its sample of three when other deciders send most of
// their requests on the same stale announcements, or while this node has
// sent nothing (nothing known: crowded).
func TestBySampleFollowsCrowding(t *testing.T) {
	for _, tc := range []struct {
		name         string
		own, others  int // requests in flight at each peer at every announcement
		wantCrowding func(float64) bool
		wantKept     int
	}{
		{"sole decider", 2, 0, func(c float64) bool { return c == 0 }, 7},
		{"a few others, fresh enough", 3, 1, func(c float64) bool { return c > 0 && c <= crowdedAbove }, 7},
		{"crowded", 1, 9, func(c float64) bool { return c > crowdedAbove && !math.IsInf(c, 1) }, 3},
		{"nothing sent yet", 0, 4, func(c float64) bool { return math.IsInf(c, 1) }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNode(tp("me", 0, self))
			for i := range 6 {
				n.table.Store(tp("p"+strconv.Itoa(i), 0))
			}
			// Every candidate is kept, self included (7), or three.
			// Ten announcements a second apart, each peer taking 40 ms per
			// request, showing this node's requests and the others'.
			for a := range 10 {
				at := now.Add(time.Duration(a-9) * time.Second)
				for i := range 6 {
					slot := n.table.Lookup("p" + strconv.Itoa(i))
					for slot.local.inflight.Load() < int64(tc.own) {
						slot.Begin()
					}
					p := tp(slot.Name(), now.Sub(at), busy(uint32(tc.own+tc.others)))
					p.Figures.LatencyMicros = 40_000
					n.table.Store(p)
				}
			}
			n.table.UpdateReference(now)
			if c := n.table.Crowding(); !tc.wantCrowding(c) {
				t.Errorf("crowding %v", c)
			}
			s := policy(n, &BySample{N: 3})
			if got := chainNames(s, httptest.NewRequest("GET", "/", nil), 1); len(got) != tc.wantKept {
				t.Errorf("kept %v, want %d candidates", got, tc.wantKept)
			}
		})
	}
}
