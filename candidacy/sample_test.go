package candidacy

import (
	"math"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// bySample compares every peer (up to max) when this node decides what
// its peers serve, and keeps its sample of three when other deciders send most of
// their requests on the same stale announcements, or while this node has
// sent nothing (nothing known: crowded).
func TestBySampleFollowsCrowding(t *testing.T) {
	for _, tc := range []struct {
		name         string
		peers        int
		own, others  int // requests in flight at each peer at every announcement
		wantCrowding func(float64) bool
		wantKept     int
	}{
		{"sole decider", 6, 2, 0, func(c float64) bool { return c == 0 }, 7},
		{"sole decider of many: at most max", 30, 2, 0, func(c float64) bool { return c == 0 }, 16},
		{"a few others, fresh enough", 6, 3, 1, func(c float64) bool { return c > 0 && c <= crowdedAbove }, 7},
		{"crowded", 6, 1, 9, func(c float64) bool { return c > crowdedAbove && !math.IsInf(c, 1) }, 3},
		{"nothing sent yet", 6, 0, 4, func(c float64) bool { return math.IsInf(c, 1) }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNode(tp("me", 0, self))
			for i := range tc.peers {
				n.table.Store(tp("p"+strconv.Itoa(i), 0))
			}
			// Every candidate is kept, self included (7), or max, or three.
			// Ten announcements a second apart, each peer taking 40 ms per
			// request, showing this node's requests and the others'.
			for a := range 10 {
				at := now.Add(time.Duration(a-9) * time.Second)
				for i := range tc.peers {
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
			s := policy(n, &BySample{N: 3, Max: 16})
			if got := chainNames(s, httptest.NewRequest("GET", "/", nil), 1); len(got) != tc.wantKept {
				t.Errorf("kept %v, want %d candidates", got, tc.wantKept)
			}
		})
	}
}
