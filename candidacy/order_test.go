package candidacy

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestPendingOrderIsAStableSort checks the lazy ordering: however far a
// caller reads the head first (the winner, the few reverse_proxy may try),
// the list it then reads whole, or truncates, is the stable sort of the
// keys, ties in their order before.
func TestPendingOrderIsAStableSort(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for trial := range 500 {
		n := 1 + rnd.IntN(40)
		list := make([]Candidate, n)
		for i := range list {
			// few distinct keys: many ties, which must keep their order
			list[i] = Candidate{Peer: &Peer{Name: string(rune('a' + i))}, key: float64(rnd.IntN(5))}
		}
		want := slices.Clone(list)
		slices.SortStableFunc(want, func(a, b Candidate) int { return cmp.Compare(a.key, b.key) })
		c := &Candidates{list: slices.Clone(list), done: true}
		c.sortByKey()
		var got []Candidate
		switch trial % 3 {
		case 0: // the winner, then a longer head, then all
			if w := c.First(); w.Peer != want[0].Peer {
				t.Fatalf("trial %d: winner %s, want %s", trial, w.Peer.Name, want[0].Peer.Name)
			}
			c.Head(3)
			got = c.All()
		case 1: // a head, then a truncation
			c.Head(2)
			c.Truncate(n / 2)
			got, want = c.All(), want[:n/2]
		default: // all at once
			got = c.All()
		}
		if !slices.EqualFunc(got, want, func(a, b Candidate) bool { return a.Peer == b.Peer }) {
			t.Fatalf("trial %d (n=%d): order %v, want %v", trial, n, candidateNames(got), candidateNames(want))
		}
	}
}

// A second ordering keeps the first's order among its ties, though the
// first was never read: `byLoad; byBusyChildren` breaks busy ties by load.
func TestSecondOrderingKeepsTheFirstAmongTies(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for trial := range 200 {
		n := 2 + rnd.IntN(20)
		list := make([]Candidate, n)
		first, second := map[*Peer]float64{}, map[*Peer]float64{}
		for i := range list {
			p := &Peer{Name: string(rune('a' + i))}
			list[i] = Candidate{Peer: p}
			first[p], second[p] = float64(rnd.IntN(n)), float64(rnd.IntN(3))
		}
		byKey := func(k map[*Peer]float64) func(a, b Candidate) int {
			return func(a, b Candidate) int { return cmp.Compare(k[a.Peer], k[b.Peer]) }
		}
		want := slices.Clone(list)
		slices.SortStableFunc(want, byKey(first))
		slices.SortStableFunc(want, byKey(second))
		c := &Candidates{list: slices.Clone(list), done: true}
		c.Sort(func(x *Candidate) float64 { return first[x.Peer] })
		c.Sort(func(x *Candidate) float64 { return second[x.Peer] })
		if got := c.Head(1); got[0].Peer != want[0].Peer {
			t.Fatalf("trial %d: winner %s, want %s", trial, got[0].Peer.Name, want[0].Peer.Name)
		}
		if got := c.All(); !slices.EqualFunc(got, want, func(a, b Candidate) bool { return a.Peer == b.Peer }) {
			t.Fatalf("trial %d: order %v, want %v", trial, candidateNames(got), candidateNames(want))
		}
	}
}

func candidateNames(l []Candidate) []string {
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = x.Peer.Name
	}
	return out
}
