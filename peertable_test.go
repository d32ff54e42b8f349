package backhand

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/internal/wire"
)

var (
	t0      = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	srcAddr = netip.MustParseAddrPort("127.0.0.9:4445")
)

func testLimits() tableLimits {
	return tableLimits{
		maxPeers: 8, replayWindow: 10 * time.Second, maxAge: 3 * time.Second,
		evictAfter: time.Minute, selfName: "me", selfAdvertise: "127.0.0.1:80", incarnation: 1,
	}
}

var testKey = wire.AnnounceKey([]byte("0123456789abcdef-test-secret"))

// sampleAnnouncement is a typical announcement, every field set.
func sampleAnnouncement() wire.Announcement {
	return wire.Announcement{
		Incarnation: 0x1122334455667788,
		Seq:         42,
		SentAt:      t0.UnixNano(),
		Cluster:     "demo",
		Node:        "web-1.example.net",
		Advertise:   "10.0.0.4:8080",
		Tags:        []string{"cgi", "images"},
		Figures: Figures{
			Load1000: 1520, CPUMilli: 8000, CPUIdle1000: 713,
			MemTotal: 32 << 30, MemAvail: 12 << 30,
			Busy: 17, Capacity: 256, LatencyMicros: 12345, Forwarded: 99,
			Speed: 1042, Draining: true,
			AppWeight: 750, HasAppWeight: true, AppLoad1000: 300, HasAppLoad: true,
		},
	}
}

// The reasons' names label the announcements_rejected_total metric and
// the status page: wire's first, then the table's, unchanged.
func TestRejectReasonNames(t *testing.T) {
	var got []string
	for r := range numRejectReasons + 1 {
		got = append(got, r.String())
	}
	want := []string{
		"truncated", "oversized", "bad_magic", "bad_version", "malformed",
		"unsigned", "auth_mismatch", "bad_mac", "bad_advertise", "wrong_cluster", "acl",
		"replay", "out_of_window", "table_full", "duplicate_id", "advertise_denied", "unknown",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q,\nwant %q", got, want)
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
		{"same sequence replayed", annAt("a", 7, 5, t0), annAt("a", 7, 5, t0), t0, reject(rejectReplay)},
		{"older sequence", annAt("a", 7, 5, t0), annAt("a", 7, 4, t0), t0, reject(rejectReplay)},
		{"restart: new incarnation, later", annAt("a", 7, 500, t0), annAt("a", 8, 1, t0.Add(time.Second)), t0.Add(time.Second), nil},
		{"old incarnation replayed after restart", annAt("a", 8, 1, t0.Add(time.Second)), annAt("a", 7, 500, t0), t0.Add(time.Second), reject(rejectReplay)},
		{"sent too long ago", annAt("a", 7, 1, t0), annAt("a", 7, 2, t0), t0.Add(11 * time.Second), reject(rejectOutOfWindow)},
		{"sent in the future", annAt("a", 7, 1, t0), annAt("a", 7, 2, t0.Add(11*time.Second)), t0, reject(rejectOutOfWindow)},
		{"our own echo", annAt("b", 7, 1, t0), annAt("me", 1, 9, t0), t0, errOwn},
		{"another process uses our name", annAt("b", 7, 1, t0), annAt("me", 2, 9, t0), t0, reject(rejectDuplicateID)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newPeerTable(testLimits())
			if _, err := tab.accept(tt.first, srcAddr, time.Unix(0, tt.first.SentAt)); err != nil {
				t.Fatalf("first: %v", err)
			}
			_, err := tab.accept(tt.then, srcAddr, tt.at)
			if err != tt.want {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil {
				if p := tab.lookup(tt.then.Node); p.Seq != tt.then.Seq || p.Incarnation != tt.then.Incarnation {
					t.Errorf("table holds seq %d inc %d, want the new announcement", p.Seq, p.Incarnation)
				}
			}
			if r, ok := tt.want.(errReject); ok && r != errOwn && tab.rejects[r.reason].Load() != 1 {
				t.Errorf("rejection %v counted %d times, want 1", r.reason, tab.rejects[r.reason].Load())
			}
		})
	}
}

func TestTableFirstSeenKeptWithinIncarnation(t *testing.T) {
	tab := newPeerTable(testLimits())
	mustAccept(t, tab, annAt("a", 7, 1, t0), t0)
	mustAccept(t, tab, annAt("a", 7, 2, t0.Add(time.Second)), t0.Add(time.Second))
	if got := tab.lookup("a").FirstSeen; !got.Equal(t0) {
		t.Errorf("FirstSeen %v, want %v (same incarnation)", got, t0)
	}
	mustAccept(t, tab, annAt("a", 8, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))
	if got := tab.lookup("a").FirstSeen; !got.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("FirstSeen %v after restart, want the restart time", got)
	}
}

func TestTableSweepEvictsSilentPeers(t *testing.T) {
	tab := newPeerTable(testLimits())
	tab.updateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0})
	mustAccept(t, tab, annAt("old", 1, 1, t0), t0)
	mustAccept(t, tab, annAt("new", 1, 1, t0.Add(50*time.Second)), t0.Add(50*time.Second))

	gone := tab.sweep(t0.Add(61 * time.Second))
	if len(gone) != 1 || gone[0].Name != "old" {
		t.Fatalf("evicted %v, want [old]", names(gone))
	}
	if got := viewNames(tab); fmt.Sprint(got) != "[me new]" {
		t.Errorf("table %v, want [me new]: self is never evicted", got)
	}
}

func TestTableViewSortedAndStable(t *testing.T) {
	tab := newPeerTable(testLimits())
	for _, n := range []string{"c", "a", "b"} {
		mustAccept(t, tab, annAt(n, 1, 1, t0), t0)
	}
	before := tab.peers()
	mustAccept(t, tab, annAt("b", 1, 2, t0), t0)
	if got := viewNames(tab); fmt.Sprint(got) != "[a b c]" {
		t.Errorf("view %v, want sorted [a b c]", got)
	}
	if &before[0] != &tab.peers()[0] {
		t.Error("an update of a known peer rebuilt the view; only joins and evictions should")
	}
}

// A full table takes a new name only by evicting a stale entry; live
// entries are never displaced.
func TestTableFullEvictsOnlyStale(t *testing.T) {
	l := testLimits()
	l.maxPeers = 3
	tab := newPeerTable(l)
	mustAccept(t, tab, annAt("a", 1, 1, t0), t0)
	mustAccept(t, tab, annAt("b", 1, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))
	mustAccept(t, tab, annAt("c", 1, 1, t0.Add(2*time.Second)), t0.Add(2*time.Second))

	now := t0.Add(2 * time.Second)
	if _, err := tab.accept(annAt("d", 1, 1, now), srcAddr, now); err != reject(rejectTableFull) {
		t.Fatalf("got %v, want table_full while every entry is live", err)
	}
	now = t0.Add(4 * time.Second) // a is 4s old > maxAge 3s; b and c are 2s old
	if _, err := tab.accept(annAt("d", 1, 1, now), srcAddr, now); err != nil {
		t.Fatalf("got %v, want d to replace the stale a", err)
	}
	if got := viewNames(tab); fmt.Sprint(got) != "[b c d]" {
		t.Errorf("table %v, want [b c d]", got)
	}
}

// 100k distinct node names, signed with the right key or sent without one,
// through the same receive path as real datagrams: the table stays at
// max_peers and the heap does not grow with the flood.
func TestTableBoundUnderSpoofedIDs(t *testing.T) {
	for _, key := range [][]byte{testKey, nil} {
		name := map[bool]string{true: "signed", false: "unsigned"}[key != nil]
		t.Run(name, func(t *testing.T) {
			an := testAnnouncer(key)
			an.node.table.setLimits(&tableLimits{maxPeers: 1024, replayWindow: time.Minute, maxAge: time.Hour, evictAfter: time.Hour, selfName: "me"})
			s := wire.NewSigner(key)
			v := wire.NewSigner(key)
			var buf []byte
			var a wire.Announcement
			now := time.Now()
			const flood = 100_000
			var before runtime.MemStats
			vs := []*wire.Signer{v}
			for i := range flood {
				if i == 2000 {
					runtime.GC()
					runtime.ReadMemStats(&before)
				}
				spoof := wire.Announcement{Cluster: "demo", Node: fmt.Sprintf("spoof-%d", i), Incarnation: uint64(i), Seq: 1, SentAt: now.UnixNano(), Advertise: "127.0.0.66:80"}
				buf, _ = spoof.Encode(buf[:0], s)
				an.receive(buf, srcAddr, vs, &a, now)
			}
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			tab := an.node.table
			if n := len(tab.peers()); n != 1024 {
				t.Errorf("table holds %d peers, want max_peers 1024", n)
			}
			if got := tab.rejects[rejectTableFull].Load(); got != flood-1024 {
				t.Errorf("table_full counted %d, want %d", got, flood-1024)
			}
			if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 4<<20 {
				t.Errorf("heap grew %d bytes during the flood after the table filled", grown)
			}
		})
	}
}

func TestReceiveACLAndCluster(t *testing.T) {
	an := testAnnouncer(testKey)
	an.app.accept = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/30")}
	an.node.table.setLimits(&tableLimits{maxPeers: 16, replayWindow: time.Minute, maxAge: time.Hour, evictAfter: time.Hour, selfName: "me"})
	s, v := wire.NewSigner(testKey), wire.NewSigner(testKey)
	now := time.Now()
	send := func(cluster, node string, from string) {
		a := wire.Announcement{Cluster: cluster, Node: node, Incarnation: 1, Seq: 1, SentAt: now.UnixNano()}
		b, _ := a.Encode(nil, s)
		var out wire.Announcement
		an.receive(b, netip.MustParseAddrPort(from), []*wire.Signer{v}, &out, now)
	}
	send("demo", "inside", "127.0.0.2:4445")
	send("demo", "outside", "127.0.0.9:4445")
	send("other", "wrong", "127.0.0.3:4445")
	tab := an.node.table
	if got := viewNames(tab); fmt.Sprint(got) != "[inside]" {
		t.Errorf("table %v, want [inside]", got)
	}
	if tab.rejects[rejectACL].Load() != 1 || tab.rejects[rejectWrongCluster].Load() != 1 {
		t.Errorf("acl %d, wrong_cluster %d; want 1 each", tab.rejects[rejectACL].Load(), tab.rejects[rejectWrongCluster].Load())
	}
}

func testAnnouncer(key []byte) *announcer {
	return &announcer{
		app:       &App{Cluster: "demo", key: key},
		node:      newNode(),
		logger:    zap.NewNop(),
		rejectLog: rate.NewLimiter(rate.Inf, 1),
	}
}

func mustAccept(t *testing.T, tab *peerTable, a *wire.Announcement, now time.Time) {
	t.Helper()
	if _, err := tab.accept(a, srcAddr, now); err != nil {
		t.Fatalf("accept %s seq %d: %v", a.Node, a.Seq, err)
	}
}

func viewNames(tab *peerTable) []string {
	var out []string
	for _, s := range tab.peers() {
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

// BenchmarkReceive measures the whole path of one datagram from a known
// peer: ACL, MAC check, decode, replay check, table update. 64 peers take
// turns, as in a 64-node cluster.
func BenchmarkReceive(b *testing.B) {
	an := testAnnouncer(testKey)
	an.app.accept = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	an.node.table.setLimits(&tableLimits{maxPeers: 1024, replayWindow: time.Hour, maxAge: time.Hour, evictAfter: time.Hour, selfName: "me"})
	s, v := wire.NewSigner(testKey), wire.NewSigner(testKey)
	const peers = 64
	now := time.Now()
	dgrams := make([][]byte, 0, peers)
	seq := make([]uint64, peers)
	anns := make([]wire.Announcement, peers)
	for i := range peers {
		anns[i] = sampleAnnouncement()
		anns[i].Cluster, anns[i].Node, anns[i].SentAt = "demo", fmt.Sprintf("peer-%02d", i), now.UnixNano()
		d, _ := anns[i].Encode(nil, s)
		dgrams = append(dgrams, d)
	}
	var a wire.Announcement
	b.ReportAllocs()
	vs := []*wire.Signer{v}
	i := 0
	for b.Loop() {
		p := i % peers
		seq[p]++
		anns[p].Seq = seq[p]
		dgrams[p], _ = anns[p].Encode(dgrams[p][:0], s)
		an.receive(dgrams[p], srcAddr, vs, &a, now)
		i++
	}
	if got := an.node.table.accepts.Load(); got != uint64(i) {
		b.Fatalf("accepted %d of %d", got, i)
	}
}

// The power bound byPower samples against stays at or above every peer's
// power: raised by announcements, recomputed when the view changes.
func TestPowerBound(t *testing.T) {
	n := testNode(tp("a", 0, spd(1000)), tp("b", 0, spd(2000)))
	if b := n.table.powerBound(); b != 200 {
		t.Fatalf("bound %v, want 200 (capacity 100 x speed 2)", b)
	}
	n.table.updateSelf(tp("me", 0, spd(1000))) // joins: the view is rebuilt
	n.table.updateSelf(tp("me", 0, spd(8000))) // an update: only the raise can see it
	if b := n.table.powerBound(); b != 800 {
		t.Errorf("bound %v after a faster self, want 800", b)
	}
}

// A reload that renames the node ("me" to "me2") leaves no orphan self
// entry: the old config's send loop, which runs until the old config
// stops, can no longer publish its record once the new name is set.
func TestRenameLeavesNoOrphanSelf(t *testing.T) {
	tab := newPeerTable(testLimits())
	tab.updateSelf(&Peer{Name: "me", Incarnation: 1, ReceivedAt: t0})
	l := testLimits()
	l.selfName = "me2"
	tab.setLimits(&l)
	tab.dropStaleSelf("me2")
	tab.updateSelf(&Peer{Name: "me", Incarnation: 1, Seq: 2, ReceivedAt: t0.Add(time.Second)}) // the old loop
	tab.updateSelf(&Peer{Name: "me2", Incarnation: 1, ReceivedAt: t0.Add(time.Second)})
	if got := viewNames(tab); fmt.Sprint(got) != "[me2]" {
		t.Errorf("view %v, want [me2] only", got)
	}
}
