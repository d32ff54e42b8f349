package candidacy

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"
)

// testNode is what a chain reads of the node it runs on: a table whose
// peers the test puts there ("me" is self) and the node's live count of
// the requests it serves.
type testNode struct {
	table *Table
	busy  atomic.Int64
}

// newTestNode builds a node whose table holds peers.
func newTestNode(peers ...*Peer) *testNode {
	n := &testNode{table: NewTable(Limits{MaxPeers: 1 << 16, SelfName: "me", MaxAge: 3 * time.Second, EvictAfter: time.Hour, ReplayWindow: time.Hour})}
	for _, p := range peers {
		n.table.Store(p)
	}
	return n
}

// testPolicy is a chain as `lb_policy backhand` runs it over a node.
type testPolicy struct {
	Chain
	n *testNode
}

// policy is the chain of fns over n, with lb_policy's max_age in the
// tests (3s) and prediction off.
func policy(n *testNode, fns ...Function) *testPolicy {
	return &testPolicy{Chain: Chain{Functions: fns, MaxAge: 3 * time.Second}, n: n}
}

// evaluate runs the chain for run over the node's table.
func (s *testPolicy) evaluate(run Run) *Candidates {
	run.Busy = &s.n.busy
	return s.Evaluate(s.n.table, &run)
}

// chainNames runs the chain and returns the names left, in order; nil
// for "serve locally" (empty or off).
func chainNames(s *testPolicy, r *http.Request, seed uint64) []string {
	c := s.evaluate(Run{Request: r, Now: now, Rand: rand.New(rand.NewPCG(seed, seed)).IntN})
	defer c.Release()
	return c.Names()
}
