package candidacy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/wire"
)

var (
	t0      = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	srcAddr = netip.MustParseAddrPort("127.0.0.9:4445")
)

func testLimits() Limits {
	return Limits{
		MaxPeers: 8, ReplayWindow: 10 * time.Second, MaxAge: 3 * time.Second,
		EvictAfter: time.Minute, SelfName: "me", SelfAdvertise: "127.0.0.1:80", Incarnation: 1,
	}
}

func annAt(node string, inc, seq uint64, sent time.Time) *wire.Announcement {
	return &wire.Announcement{Node: node, Cluster: "demo", Incarnation: inc, Seq: seq, SentAt: sent.UnixNano(), Advertise: "127.0.0.2:80"}
}

func TestTableAcceptOrder(t *testing.T) {
	tests := []struct {
		name  string
		first *wire.Announcement
		then  *wire.Announcement
		at    time.Time
		want  error // nil or the rejection
	}{
		{"next sequence", annAt("a", 7, 1, t0), annAt("a", 7, 2, t0.Add(time.Second)), t0.Add(time.Second), nil},
		{"same sequence replayed", annAt("a", 7, 5, t0), annAt("a", 7, 5, t0), t0, ErrReplay},
		{"older sequence", annAt("a", 7, 5, t0), annAt("a", 7, 4, t0), t0, ErrReplay},
		{"restart: new incarnation, later", annAt("a", 7, 500, t0), annAt("a", 8, 1, t0.Add(time.Second)), t0.Add(time.Second), nil},
		{"old incarnation replayed after restart", annAt("a", 8, 1, t0.Add(time.Second)), annAt("a", 7, 500, t0), t0.Add(time.Second), ErrReplay},
		{"sent too long ago", annAt("a", 7, 1, t0), annAt("a", 7, 2, t0), t0.Add(11 * time.Second), ErrOutOfWindow},
		{"sent in the future", annAt("a", 7, 1, t0), annAt("a", 7, 2, t0.Add(11*time.Second)), t0, ErrOutOfWindow},
		{"our own echo", annAt("b", 7, 1, t0), annAt("me", 1, 9, t0), t0, ErrOwn},
		{"another process uses our name", annAt("b", 7, 1, t0), annAt("me", 2, 9, t0), t0, ErrDuplicateID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			if _, err := tab.Accept(tt.first, srcAddr, time.Unix(0, tt.first.SentAt)); err != nil {
				t.Fatalf("first: %v", err)
			}
			_, err := tab.Accept(tt.then, srcAddr, tt.at)
			if err != tt.want {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil {
				if p := tab.Lookup(tt.then.Node).Peer(); p.Seq != tt.then.Seq || p.Incarnation != tt.then.Incarnation {
					t.Errorf("table holds seq %d inc %d, want the new announcement", p.Seq, p.Incarnation)
				}
			}
		})
	}
}

func TestTableFirstSeenKeptWithinIncarnation(t *testing.T) {
	tab := NewTable(testLimits())
	mustAccept(t, tab, annAt("a", 7, 1, t0), t0)
	mustAccept(t, tab, annAt("a", 7, 2, t0.Add(time.Second)), t0.Add(time.Second))
	if got := tab.Lookup("a").Peer().FirstSeen; !got.Equal(t0) {
		t.Errorf("FirstSeen %v, want %v (same incarnation)", got, t0)
	}
	mustAccept(t, tab, annAt("a", 8, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))
	if got := tab.Lookup("a").Peer().FirstSeen; !got.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("FirstSeen %v after restart, want the restart time", got)
	}
}

func TestTableSweepEvictsSilentPeers(t *testing.T) {
	tab := NewTable(testLimits())
	tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0})
	mustAccept(t, tab, annAt("old", 1, 1, t0), t0)
	mustAccept(t, tab, annAt("new", 1, 1, t0.Add(50*time.Second)), t0.Add(50*time.Second))

	gone := tab.Sweep(t0.Add(61 * time.Second))
	if len(gone) != 1 || gone[0].Name != "old" {
		t.Fatalf("evicted %v, want [old]", names(gone))
	}
	if got := viewNames(tab); fmt.Sprint(got) != "[me new]" {
		t.Errorf("table %v, want [me new]: self is never evicted", got)
	}
}

func TestTableViewSortedAndStable(t *testing.T) {
	tab := NewTable(testLimits())
	for _, n := range []string{"c", "a", "b"} {
		mustAccept(t, tab, annAt(n, 1, 1, t0), t0)
	}
	before := tab.Peers()
	mustAccept(t, tab, annAt("b", 1, 2, t0), t0)
	if got := viewNames(tab); fmt.Sprint(got) != "[a b c]" {
		t.Errorf("view %v, want sorted [a b c]", got)
	}
	if &before[0] != &tab.Peers()[0] {
		t.Error("an update of a known peer rebuilt the view; only joins and evictions should")
	}
}

// A full table takes a new name only by evicting a stale entry; live
// entries are never displaced.
func TestTableFullEvictsOnlyStale(t *testing.T) {
	l := testLimits()
	l.MaxPeers = 3
	tab := NewTable(l)
	mustAccept(t, tab, annAt("a", 1, 1, t0), t0)
	mustAccept(t, tab, annAt("b", 1, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))
	mustAccept(t, tab, annAt("c", 1, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))

	now := t0.Add(2 * time.Second)
	if _, err := tab.Accept(annAt("d", 1, 1, now), srcAddr, now); err != ErrTableFull {
		t.Fatalf("got %v, want table_full while every entry is live", err)
	}
	now = t0.Add(4 * time.Second) // a is 4s old > maxAge 3s; b and c are 2s old
	if _, err := tab.Accept(annAt("d", 1, 1, now), srcAddr, now); err != nil {
		t.Fatalf("got %v, want d to replace the stale a", err)
	}
	if got := viewNames(tab); fmt.Sprint(got) != "[b c d]" {
		t.Errorf("table %v, want [b c d]", got)
	}
}

func mustAccept(t *testing.T, tab *Table, a *wire.Announcement, now time.Time) {
	t.Helper()
	if _, err := tab.Accept(a, srcAddr, now); err != nil {
		t.Fatalf("accept %s seq %d: %v", a.Node, a.Seq, err)
	}
}

func viewNames(tab *Table) []string {
	var out []string
	for _, s := range tab.Peers() {
		out = append(out, s.name)
	}
	return out
}

func names(ps []*Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

// The power bound byPower samples against stays at or above every peer's
// power: raised by announcements, recomputed when the view changes.
func TestPowerBound(t *testing.T) {
	n := newTestNode(tp("a", 0, spd(1000)), tp("b", 0, spd(2000)))
	if b := n.table.powerBound(); b != 200 {
		t.Fatalf("bound %v, want 200 (capacity 100 x speed 2)", b)
	}
	n.table.UpdateSelf(tp("me", 0, spd(1000))) // joins: the view is rebuilt
	n.table.UpdateSelf(tp("me", 0, spd(8000))) // an update: only the raise can see it
	if b := n.table.powerBound(); b != 800 {
		t.Errorf("bound %v after a faster self, want 800", b)
	}
}

// A reload that renames the node ("me" to "me2") leaves no orphan self
// entry: the old config's send loop, which runs until the old config
// stops, can no longer publish its record once the new name is set.
func TestRenameLeavesNoOrphanSelf(t *testing.T) {
	tab := NewTable(testLimits())
	tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0})
	l := testLimits()
	l.SelfName = "me2"
	tab.SetLimits(&l)
	tab.DropStaleSelf("me2")
	tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, Seq: 2, ReceivedAt: t0.Add(time.Second)}) // the old loop
	tab.UpdateSelf(&Peer{Name: "me2", Incarnation: 1, ReceivedAt: t0.Add(time.Second)})
	if got := viewNames(tab); fmt.Sprint(got) != "[me2]" {
		t.Errorf("view %v, want [me2] only", got)
	}
}

// announceEvery feeds the table announcements of node a (incarnation inc)
// received at each of the offsets from start, and returns the last
// arrival.
func announceEvery(t *testing.T, tab *Table, inc uint64, start time.Time, offsets ...time.Duration) time.Time {
	t.Helper()
	var at time.Time
	for i, off := range offsets {
		at = start.Add(off)
		mustAccept(t, tab, annAt("a", inc, uint64(i+1), at), at)
	}
	return at
}

func TestTablePatience(t *testing.T) {
	s := time.Second
	steady := []time.Duration{0, 1 * s, 2 * s, 3 * s, 4 * s, 5 * s}
	lossy := []time.Duration{0, 1 * s, 2 * s, 12 * s, 19 * s, 27 * s} // most announcements lost: gaps up to 10 s
	tests := []struct {
		name    string
		offsets []time.Duration
		age     time.Duration // silence since the last announcement
		fresh   bool
	}{
		// A peer whose announcements arrive every interval still goes
		// stale after max_age (3 s): a dead node leaves the lists in time.
		{"steady, within max_age", steady, 3 * s, true},
		{"steady, silent beyond max_age", steady, 3*s + 100*time.Millisecond, false},
		// One whose announcements mostly get lost stays fresh between two
		// that arrive (the old rule, max_age alone, took it for dead).
		{"lossy, silent for 8 s", lossy, 8 * s, true},
		{"lossy, silent for twice its longest gap", lossy, 20*s + 100*time.Millisecond, false},
		// Never beyond evict_after (1 min), whatever the gaps.
		{"gaps of 50 s, silent for 61 s", []time.Duration{0, 50 * s, 100 * s}, 61 * s, false},
		{"gaps of 50 s, silent for 59 s", []time.Duration{0, 50 * s, 100 * s}, 59 * s, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			last := announceEvery(t, tab, 7, t0, tt.offsets...)
			p := tab.Lookup("a").Peer()
			if got := p.Fresh(last.Add(tt.age), 3*s); got != tt.fresh {
				t.Errorf("Fresh after %v of silence = %v, want %v (patience %v)", tt.age, got, tt.fresh, p.Patience)
			}
			if got := p.Usable(last.Add(tt.age), 3*s); got != tt.fresh {
				t.Errorf("Usable = %v, want %v", got, tt.fresh)
			}
		})
	}
}

// A restart is no lost announcement: the silence before a new
// incarnation's first announcement does not lengthen the patience.
func TestTablePatienceIgnoresRestarts(t *testing.T) {
	s := time.Second
	tab := NewTable(testLimits())
	announceEvery(t, tab, 7, t0, 0, 1*s, 2*s)
	back := t0.Add(30 * s)
	mustAccept(t, tab, annAt("a", 8, 1, back), back)
	if p := tab.Lookup("a").Peer(); p.Fresh(back.Add(4*s), 3*s) {
		t.Errorf("restarted peer fresh after 4 s of silence (patience %v), want stale after max_age", p.Patience)
	}
}

// A response that spanned a silence in which the peer went stale (a
// stopped process, a cut link) times the outage, not the peer: it is no
// sample of its speed, whether it ends before or after the announcement
// that ends the silence. One that did not is a sample.
func TestTableNoSampleAcrossOutage(t *testing.T) {
	s := time.Second
	tests := []struct {
		name          string
		announceAgain bool          // the peer announces again at 10 s, before the response ends
		took          time.Duration // the response time, ending at 10.01 s
		sampled       bool
	}{
		{"ended while the peer was stale", false, 9 * s, false},
		{"ended after the announcement that ended the silence", true, 9 * s, false},
		{"began after the silence", true, 5 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			announceEvery(t, tab, 7, t0, 0, 1*s) // steady, then silent from 1 s
			if tt.announceAgain {
				back := t0.Add(10 * s)
				mustAccept(t, tab, annAt("a", 7, 3, back), back)
			}
			slot := tab.Lookup("a")
			slot.Begin()
			slot.End(tt.took, t0.Add(10*s+10*time.Millisecond), true)
			if _, got := slot.ObservedMicros(); got != tt.sampled {
				t.Errorf("response of %v sampled: %v, want %v", tt.took, got, tt.sampled)
			}
			if slot.InFlight() != 0 {
				t.Errorf("in flight %d after End, want 0", slot.InFlight())
			}
		})
	}
}

// A request this node served across a stall of its own process (its
// announcements stopped for longer than max_age: a SIGSTOP) timed the
// stall: it is no sample of its own speed, whether it ends before or
// after the first announcement after the stall. One served after it is.
func TestTableNoSelfSampleAcrossStall(t *testing.T) {
	s := time.Second
	tests := []struct {
		name      string
		announced bool          // the first announcement after the stall came before the request ended
		took      time.Duration // ending at 10.01 s
		sampled   bool
	}{
		{"ended before the announcer ran again", false, 9 * s, false},
		{"ended after it", true, 9 * s, false},
		{"began after the stall", true, 5 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			for _, at := range []time.Duration{0, 1 * s} {
				tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0.Add(at)})
			}
			if tt.announced {
				tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0.Add(10 * s)})
			}
			end := t0.Add(10*s + 10*time.Millisecond)
			if got := tab.Stalled(end.Add(-tt.took), end); got == tt.sampled {
				t.Errorf("Stalled = %v, want %v", got, !tt.sampled)
			}
			for range 8 { // enough responses to learn from
				tab.Served(tt.took, end)
			}
			if _, got := tab.Lookup("me").LearnedMicros(); got != tt.sampled {
				t.Errorf("own speed learnt from a response of %v: %v, want %v", tt.took, got, tt.sampled)
			}
		})
	}
}

// When most peers show long gaps (announcements lost on most links), a
// peer not heard since the loss began gets their patience (the median)
// before it has shown a long gap of its own; one peer's long gap does not
// give it to the others, and a steady cluster keeps max_age alone.
func TestTableClusterPatience(t *testing.T) {
	s := time.Second
	steady := []time.Duration{0, 1 * s, 2 * s, 3 * s}
	lossy := []time.Duration{0, 1 * s, 2 * s, 12 * s} // a 10 s gap: patience 20 s
	tests := []struct {
		name   string
		others [][]time.Duration // the gaps of the peers b, c, d
		want   time.Duration
	}{
		{"steady cluster", [][]time.Duration{steady, steady, steady}, 2 * s},
		{"one peer with a long gap", [][]time.Duration{lossy, steady, steady}, 2 * s},
		{"most peers with long gaps", [][]time.Duration{lossy, lossy, steady}, 20 * s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0})
			// a: heard steadily, then silent since 3 s: the loss began.
			last := announceEvery(t, tab, 7, t0, steady...)
			for i, gaps := range tt.others {
				for j, off := range gaps {
					at := t0.Add(off)
					mustAccept(t, tab, annAt(string(rune('b'+i)), 7, uint64(j+1), at), at)
				}
			}
			tab.UpdateReference(t0.Add(12 * s))
			if got := tab.Patience(); got != tt.want {
				t.Errorf("cluster patience %v, want %v", got, tt.want)
			}
			// a, silent for 8 s, is live under the cluster's patience only.
			now := last.Add(8 * s)
			if got := tab.Lookup("a").Peer().Usable(now, max(3*s, tab.Patience())); got != (tt.want > 8*s) {
				t.Errorf("a usable after 8 s of silence: %v, want %v", got, tt.want > 8*s)
			}
		})
	}
}
