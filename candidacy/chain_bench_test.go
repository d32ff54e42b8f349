package candidacy

import (
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

var benchSizes = []int{4, 64, 1024}

// benchNode is a table of n live peers (self among them) with varied load.
func benchNode(n int) *testNode {
	var ps []*Peer
	t := time.Now()
	for i := range n {
		name := fmt.Sprintf("peer-%04d", i)
		p := &Peer{Name: name, Advertise: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1), ReceivedAt: t, FirstSeen: t,
			Figures: Figures{Load1000: uint32(i*37%4000 + 100), CPUMilli: 4000, Capacity: 100, Busy: uint32(i * 13 % 90), Speed: 1000}}
		if i == 0 {
			p.Name, p.Self = "me", true
		}
		ps = append(ps, p)
	}
	return newTestNode(ps...)
}

// benchTimes is a histogram of chain runs like the one `lb_policy
// backhand` keeps (the chain_duration metric), so that the benchmarks
// time a sample of runs as the policy does.
var benchTimes struct {
	buckets [10]atomic.Uint64
	sum     atomic.Uint64
}

func benchTimed(took time.Duration) {
	i := 0
	for i < len(benchTimes.buckets)-1 && took > time.Duration(250<<i) {
		i++
	}
	benchTimes.buckets[i].Add(1)
	benchTimes.sum.Add(uint64(max(took, 0)))
}

// benchChain is the chain the issue names for the speed goal.
func benchChain(n *testNode) *testPolicy {
	return benchPolicy(n, &ByAge{}, &ByRandom{}, &ByWindow{N: 2}, &ByLoad{}, &AddPrediction{})
}

// benchPolicy is the chain of fns over n, timed as the policy times it.
func benchPolicy(n *testNode, fns ...Function) *testPolicy {
	s := policy(n, fns...)
	s.Timed = benchTimed
	return s
}

// benchPick runs s's chain over n's table and picks the winner, once per
// benchmark iteration: the per-request work of the backhand policy.
func benchPick(b *testing.B, s *testPolicy) {
	b.ReportAllocs()
	for b.Loop() {
		c := s.evaluate(Run{Now: time.Now()})
		if c.First() == nil {
			b.Fatal("no winner")
		}
		c.Release()
	}
}

// BenchmarkSelect runs the default chain and its byPower variant over
// peers of mixed speeds (1-4) whose response times this node has seen, and
// picks the winner. "default" is the default chain where other deciders
// crowd the peers (bySample keeps three: the cost per request is flat
// whatever the cluster size); "default-sole" the same chain on a node that
// decides alone (bySample keeps up to its cap, see BySample).
func BenchmarkSelect(b *testing.B) {
	for _, chain := range []struct {
		name  string
		fns   func() []Function
		crowd float64
	}{
		{"default", DefaultChain, math.Inf(1)},
		{"default-sole", DefaultChain, 0},
		{"byPower", func() []Function { return []Function{&ByAge{}, &ByPower{}, &ByWindow{N: 3}, &ByWait{}} }, math.Inf(1)},
	} {
		for _, size := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", chain.name, size), func(b *testing.B) {
				n := benchNode(size)
				at := time.Now()
				for i, sl := range n.table.peers() {
					sl.cur.Load().Figures.Speed = uint32(1000 * (1 + i%4))
					for k := range minResponses * 2 {
						sl.local.times.observe(time.Duration(40/(1+i%4)+k%3)*time.Millisecond, at)
					}
				}
				n.table.mu.Lock()
				n.table.publishLocked() // the bound follows the speeds set above
				n.table.mu.Unlock()
				n.table.UpdateReference(at)
				storeFloat(&n.table.crowd, chain.crowd)
				fns := chain.fns()
				for _, f := range fns {
					if p, ok := f.(caddy.Provisioner); ok {
						if err := p.Provision(caddy.Context{}); err != nil {
							b.Fatal(err)
						}
					}
				}
				s := benchPolicy(n, fns...)
				s.Predict = PredictDecay
				benchPick(b, s)
			})
		}
	}
}

// BenchmarkChain runs `byAge byRandom byWindow 2 byLoad addPrediction` and
// picks the winner: the per-request work of the backhand policy.
func BenchmarkChain(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			benchPick(b, benchChain(benchNode(size)))
		})
	}
}
