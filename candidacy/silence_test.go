package candidacy

import (
	"slices"
	"testing"
	"time"
)

// When this node stops hearing most of its peers at once (announcements
// lost on its side of the network), a peer whose announcements stopped
// stays usable while its answers to this node's own requests keep coming:
// one answered within max_age, no failure since. One silent peer among
// heard ones goes stale after max_age as before (its announcements were
// cut: partition-announce), and so does one that no longer answers (a hung
// node) or failed to answer (a dead one).
func TestTableSilenceKeepsAnsweringPeers(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	tests := []struct {
		name     string
		silent   []string      // peers whose announcements stop after 2 s (the others keep announcing)
		answered time.Duration // how long before now a's last answer came; 0: never sent it anything
		failed   time.Duration // how long before now an attempt to a failed; 0: none
		usable   bool          // a, 3.5 s after its last announcement
		listed   bool          // a on the chain's list: usable, and not failed since its last announcement (shunned)
	}{
		{"most peers silent, a answering", []string{"a", "b", "c"}, 100 * ms, 0, true, true},
		{"half the peers silent, a answering", []string{"a", "b"}, 100 * ms, 0, true, true},
		{"every peer silent, a answering", []string{"a", "b", "c", "d"}, 2 * s, 0, true, true},
		{"only a silent, answering", []string{"a"}, 100 * ms, 0, false, false},
		{"most peers silent, a never sent a request", []string{"a", "b", "c"}, 0, 0, false, false},
		{"most peers silent, a's last answer older than max_age", []string{"a", "b", "c"}, 3*s + 100*ms, 0, false, false},
		{"most peers silent, a failed after its last answer", []string{"a", "b", "c"}, 300 * ms, 100 * ms, false, false},
		{"most peers silent, a answered after a failure", []string{"a", "b", "c"}, 100 * ms, 300 * ms, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(testLimits())
			tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0, Advertise: "127.0.0.1:80"})
			// Every peer announces every second; the silent ones stop
			// after 2 s, the others go on to 5 s.
			for i := range 6 {
				at := t0.Add(time.Duration(i) * s)
				for _, name := range []string{"a", "b", "c", "d"} {
					if i <= 2 || !slices.Contains(tt.silent, name) {
						mustAccept(t, tab, annAt(name, 7, uint64(i+1), at), at)
					}
				}
				tab.UpdateReference(at) // the announcer's, once per interval
			}
			now := t0.Add(5*s + 500*ms) // a silent for 3.5 s
			slot := tab.Lookup("a")
			if tt.answered > 0 {
				slot.Begin()
				slot.End(50*ms, now.Add(-tt.answered), true)
			}
			if tt.failed > 0 {
				slot.local.failedAt.Store(now.Add(-tt.failed).UnixNano()) // as Failed, without its hold
			}
			if got := slot.Usable(now, 3*s); got != tt.usable {
				t.Errorf("a usable: %v, want %v", got, tt.usable)
			}
			if got := tab.Usable(slot.Peer(), now, 3*s); got != tt.usable { // dynamic backhand's own max_age
				t.Errorf("a usable by its record (Table.Usable): %v, want %v", got, tt.usable)
			}
			// The chain's starting list follows the same rule, and still
			// holds out a peer that failed until its next announcement.
			c := (&Chain{MaxAge: 3 * s}).Evaluate(tab, &Run{Now: now})
			defer c.Release()
			if got := slices.Contains(c.Names(), "a"); got != tt.listed {
				t.Errorf("a on the chain's list %v: %v, want %v", c.Names(), got, tt.listed)
			}
			// A peer that announces steadily is usable whatever this node saw.
			if !slices.Contains(tt.silent, "d") && !tab.Lookup("d").Usable(now, 3*s) {
				t.Error("d, heard 0.5 s ago, not usable")
			}
		})
	}
}

// The silence is this node's view of the whole table: a peer this node
// failed to reach since its last announcement (a dead node) is not
// counted as silent, so that it and one partitioned node do not together
// pass for loss on this node's side.
func TestTableSilenceLeavesOutFailedPeers(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	tab := NewTable(testLimits())
	tab.UpdateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0, Advertise: "127.0.0.1:80"})
	for i := range 6 {
		at := t0.Add(time.Duration(i) * s)
		for _, name := range []string{"a", "b", "c", "d"} {
			if i <= 2 || name == "c" || name == "d" {
				mustAccept(t, tab, annAt(name, 7, uint64(i+1), at), at)
			}
		}
		if i == 3 {
			tab.Lookup("b").Failed(at) // b died: its connection refused
		}
		tab.UpdateReference(at)
	}
	now := t0.Add(5*s + 500*ms)
	slot := tab.Lookup("a")
	slot.Begin()
	slot.End(50*ms, now.Add(-100*ms), true)
	if slot.Usable(now, 3*s) {
		t.Error("a, silent beside a dead b only, usable after max_age; want stale")
	}
}
