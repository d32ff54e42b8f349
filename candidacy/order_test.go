package candidacy

import (
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
		slices.SortStableFunc(want, func(a, b Candidate) int {
			switch {
			case a.key < b.key:
				return -1
			case a.key > b.key:
				return 1
			}
			return 0
		})
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

func candidateNames(l []Candidate) []string {
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = x.Peer.Name
	}
	return out
}
