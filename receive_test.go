package backhand

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

var (
	t0      = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	srcAddr = netip.MustParseAddrPort("127.0.0.9:4445")
)

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

// 100k distinct node names, signed with the right key or sent without one,
// through the same receive path as real datagrams: the table stays at
// max_peers and the heap does not grow with the flood.
func TestTableBoundUnderSpoofedIDs(t *testing.T) {
	for _, key := range [][]byte{testKey, nil} {
		name := map[bool]string{true: "signed", false: "unsigned"}[key != nil]
		t.Run(name, func(t *testing.T) {
			an := testAnnouncer(key)
			an.node.table.SetLimits(&candidacy.Limits{MaxPeers: 1024, ReplayWindow: time.Minute, MaxAge: time.Hour, EvictAfter: time.Hour, SelfName: "me"})
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
			if n := len(an.node.table.Peers()); n != 1024 {
				t.Errorf("table holds %d peers, want max_peers 1024", n)
			}
			if got := an.node.received.rejects[rejectTableFull].Load(); got != flood-1024 {
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
	an.node.table.SetLimits(&candidacy.Limits{MaxPeers: 16, ReplayWindow: time.Minute, MaxAge: time.Hour, EvictAfter: time.Hour, SelfName: "me"})
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
	if got := viewNames(an.node.table); fmt.Sprint(got) != "[inside]" {
		t.Errorf("table %v, want [inside]", got)
	}
	rejects := &an.node.received.rejects
	if rejects[rejectACL].Load() != 1 || rejects[rejectWrongCluster].Load() != 1 {
		t.Errorf("acl %d, wrong_cluster %d; want 1 each", rejects[rejectACL].Load(), rejects[rejectWrongCluster].Load())
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

func viewNames(tab *candidacy.Table) []string {
	var out []string
	for _, s := range tab.Peers() {
		out = append(out, s.Name())
	}
	return out
}

// BenchmarkReceive measures the whole path of one datagram from a known
// peer: ACL, MAC check, decode, replay check, table update. 64 peers take
// turns, as in a 64-node cluster.
func BenchmarkReceive(b *testing.B) {
	an := testAnnouncer(testKey)
	an.app.accept = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	an.node.table.SetLimits(&candidacy.Limits{MaxPeers: 1024, ReplayWindow: time.Hour, MaxAge: time.Hour, EvictAfter: time.Hour, SelfName: "me"})
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
	if got := an.node.received.accepts.Load(); got != uint64(i) {
		b.Fatalf("accepted %d of %d", got, i)
	}
}

// The table's refusals count under their reasons' names.
func TestReasonOfTableErrors(t *testing.T) {
	for err, want := range map[error]string{
		candidacy.ErrReplay: "replay", candidacy.ErrOutOfWindow: "out_of_window",
		candidacy.ErrTableFull: "table_full", candidacy.ErrDuplicateID: "duplicate_id",
		errors.New("anything else"): "malformed",
	} {
		if got := reasonOf(err).String(); got != want {
			t.Errorf("%v: reason %s, want %s", err, got, want)
		}
	}
}
