package candidacytest

import (
	"math"
	"net/http"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
)

// NewCandidates starts a candidate list over peers as a chain would see
// them at now, for testing candidacy functions: run the function on it and
// look at the list (Names). Peers with Self set stand for this node. The
// list starts with every peer that advertises an address and is not
// draining, whatever its age; load estimates blend in the requests this
// node sent since an announcement (predict blend); byCookie reads no
// cookie.
func NewCandidates(r *http.Request, now time.Time, peers ...*candidacy.Peer) *candidacy.Candidates {
	self := ""
	for _, p := range peers {
		if p.Self && p.Name > self {
			self = p.Name // the last in name order stands for this node
		}
	}
	t := candidacy.NewTable(candidacy.Limits{MaxPeers: len(peers) + 1, MaxAge: time.Hour, SelfName: self})
	for _, p := range peers {
		t.Store(p)
	}
	ch := candidacy.Chain{MaxAge: math.MaxInt64, Predict: candidacy.PredictBlend}
	return ch.Evaluate(t, &candidacy.Run{Request: r, Now: now})
}
