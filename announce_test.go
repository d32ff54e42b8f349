package backhand

import (
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// freeUDPPort returns a UDP port that was free on ip a moment ago.
func freeUDPPort(t *testing.T, ip string) int {
	t.Helper()
	c, err := net.ListenPacket("udp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startTestApp compiles and starts app with a node state of its own, so
// that several "nodes" can run in one test process over real sockets.
func startTestApp(t *testing.T, app *App) *App {
	t.Helper()
	app.logger = zap.NewNop()
	if testing.Verbose() {
		app.logger = zap.NewExample()
	}
	app.setDefaults()
	if err := app.compile(); err != nil {
		t.Fatal(err)
	}
	if err := app.Validate(); err != nil {
		t.Fatal(err)
	}
	app.node = newNode()
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Stop() })
	return app
}

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func livePeer(app *App, name string) *candidacy.Peer {
	p := lookupPeer(app.node.table, name)
	if p == nil || p.Age(time.Now()) > time.Duration(app.MaxAge) {
		return nil
	}
	return p
}

func TestAnnounceOverUDP(t *testing.T) {
	pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.1")
	peers := []string{fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("localhost:%d", pb)}
	report := filepath.Join(t.TempDir(), "report")
	if err := os.WriteFile(report, []byte("load=2.5 40% drain\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	interval := caddy.Duration(50 * time.Millisecond)
	a := startTestApp(t, &App{
		Name: "a", Cluster: "t", Advertise: "127.0.0.1:8001", Tags: []string{"x"}, Interval: interval,
		Listen: []string{fmt.Sprintf("udp/127.0.0.1:%d", pa)}, Peers: peers,
		Key: "a-test-key-of-enough-length", Speed: 500, Capacity: 10,
	})
	b := startTestApp(t, &App{
		Name: "b", Cluster: "t", Advertise: "127.0.0.2:8002", Interval: interval,
		Listen: []string{fmt.Sprintf("udp/127.0.0.1:%d", pb)}, Peers: peers,
		Key: "a-test-key-of-enough-length", Speed: 700, Accept: []string{"127.0.0.0/8"},
		AppReport: &AppReportSource{File: report},
	})

	waitFor(t, 2*time.Second, "a and b see each other", func() bool {
		return livePeer(a, "b") != nil && livePeer(b, "a") != nil
	})
	pb1 := livePeer(a, "b")
	if pb1.Advertise != "127.0.0.2:8002" || pb1.Figures.Speed != 700 || pb1.Self {
		t.Errorf("a sees b as %+v", pb1)
	}
	if !pb1.Figures.Draining || !pb1.Figures.HasAppWeight || pb1.Figures.AppWeight != 400 || pb1.Figures.AppLoad1000 != 2500 {
		t.Errorf("b's application report did not reach a: %+v", pb1.Figures)
	}
	if pa1 := livePeer(b, "a"); pa1.Figures.Capacity != 10 || len(pa1.Tags) != 1 || pa1.Tags[0] != "x" {
		t.Errorf("b sees a as %+v", pa1)
	}
	if self := lookupPeer(a.node.table, "a"); self == nil || !self.Self {
		t.Errorf("a's own entry is %+v, want a self entry", self)
	}
	// Announcements keep coming: the sequence number moves on.
	seq := pb1.Seq
	waitFor(t, time.Second, "b's sequence number advances at a", func() bool {
		p := livePeer(a, "b")
		return p != nil && p.Seq > seq
	})
}

func TestAnnounceWrongKeyRejected(t *testing.T) {
	pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.3")
	peers := []string{fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("127.0.0.3:%d", pb)}
	interval := caddy.Duration(50 * time.Millisecond)
	a := startTestApp(t, &App{Name: "a", Cluster: "t", Advertise: "127.0.0.1:8001", Interval: interval,
		Listen: []string{fmt.Sprintf("udp/127.0.0.1:%d", pa)}, Peers: peers, Key: "the-right-key-for-this-test"})
	startTestApp(t, &App{Name: "b", Cluster: "t", Advertise: "127.0.0.3:8001", Interval: interval,
		Listen: []string{fmt.Sprintf("udp/127.0.0.3:%d", pb)}, Peers: peers, Key: "the-WRONG-key-for-this-test"})

	waitFor(t, 2*time.Second, "a counts b's datagrams as bad_mac", func() bool {
		return a.node.received.rejects[rejectReason(wire.BadMAC)].Load() >= 3
	})
	if p := lookupPeer(a.node.table, "b"); p != nil {
		t.Errorf("a took b into its table despite the wrong key: %+v", p)
	}
}

// Caddy binds with SO_REUSEPORT, so a second process on the same address
// would bind silently and take part of the announcements: Start refuses.
func TestListenRefusesAddressInUse(t *testing.T) {
	other, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	app := &App{Name: "a", Cluster: "t", Advertise: "127.0.0.1:1", InsecureNoKey: true,
		Listen: []string{"udp/" + other.LocalAddr().String()}, logger: zap.NewNop()}
	app.setDefaults()
	if err := app.compile(); err != nil {
		t.Fatal(err)
	}
	if err := app.Validate(); err != nil {
		t.Fatal(err)
	}
	app.node = newNode()
	err = app.Start()
	if err == nil {
		_ = app.Stop()
		t.Fatal("started on an address another socket receives on")
	}
	if !strings.Contains(err.Error(), "another process already receives on this address") {
		t.Errorf("error %v", err)
	}
}

// A reload whose sockets cannot be bound fails, and Caddy keeps the
// running config: the node it shares must keep that config's name, keys
// and limits (markers it makes still verify, max_peers unchanged).
func TestFailedStartLeavesRunningConfig(t *testing.T) {
	running := startTestApp(t, &App{Name: "a", Cluster: "t", Key: "running-config-key-0123", Advertise: "127.0.0.1:1",
		MaxPeers: 10, Listen: []string{"udp/127.0.0.1:" + strconv.Itoa(freeUDPPort(t, "127.0.0.1"))}})
	keys, limits := running.node.keys.Load(), running.node.table.Limits()

	held, err := net.ListenPacket("udp", "127.0.0.1:0") // no SO_REUSEPORT: the new config cannot share it
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	next := &App{Name: "b", Cluster: "t", Key: "the-next-config-key-4567", Advertise: "127.0.0.1:1", MaxPeers: 20,
		Listen: []string{"udp/" + held.LocalAddr().String()}, logger: zap.NewNop()}
	next.setDefaults()
	if err := next.compile(); err != nil {
		t.Fatal(err)
	}
	next.node = running.node // a reload shares the process's node
	if err := next.Start(); err == nil {
		_ = next.Stop()
		t.Fatal("the new config bound a socket another process holds")
	}
	if running.node.keys.Load() != keys {
		t.Error("the failed config replaced the running config's keys")
	}
	if l := running.node.table.Limits(); l != limits || l.SelfName != "a" || l.MaxPeers != 10 {
		t.Errorf("the failed config changed the running config's limits: %+v", l)
	}
}

// With advertise_allow, a peer that advertises an address outside it (a
// key holder pointing every node's proxy at an internal service, say) is
// rejected as advertise_denied and never becomes a candidate; one inside
// it is taken. A node's own advertise outside the list is a config error.
func TestAdvertiseAllow(t *testing.T) {
	pa, pb, pc := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.2"), freeUDPPort(t, "127.0.0.3")
	peers := []string{fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("127.0.0.2:%d", pb), fmt.Sprintf("127.0.0.3:%d", pc)}
	interval := caddy.Duration(50 * time.Millisecond)
	const key = "the-key-for-the-allow-test"
	a := startTestApp(t, &App{Name: "a", Cluster: "t", Advertise: "127.0.0.1:8001", Interval: interval, Key: key,
		Listen: []string{fmt.Sprintf("udp/127.0.0.1:%d", pa)}, Peers: peers, AdvertiseAllow: []string{"127.0.0.1/32", "127.0.0.2"}})
	startTestApp(t, &App{Name: "b", Cluster: "t", Advertise: "127.0.0.2:8001", Interval: interval, Key: key,
		Listen: []string{fmt.Sprintf("udp/127.0.0.2:%d", pb)}, Peers: peers})
	startTestApp(t, &App{Name: "c", Cluster: "t", Advertise: "127.0.0.1:2019", Interval: interval, Key: key, // a's admin endpoint, say
		Listen: []string{fmt.Sprintf("udp/127.0.0.3:%d", pc)}, Peers: peers})
	startTestApp(t, &App{Name: "d", Cluster: "t", Advertise: "internal.example:80", Interval: interval, Key: key,
		Listen: []string{fmt.Sprintf("udp/127.0.0.3:%d", freeUDPPort(t, "127.0.0.3"))}, Peers: peers})

	waitFor(t, 2*time.Second, "a takes b and rejects d's names as advertise_denied", func() bool {
		return livePeer(a, "b") != nil && a.node.received.rejects[rejectAdvertiseDenied].Load() >= 3
	})
	if p := lookupPeer(a.node.table, "d"); p != nil {
		t.Errorf("a took d, advertising a DNS name under advertise_allow: %+v", p)
	}
	if p := lookupPeer(a.node.table, "c"); p == nil || p.Advertise != "127.0.0.1:2019" {
		// c advertises an allowed IP: the list bounds where peers point,
		// it does not know which ports are the application's.
		t.Errorf("a's view of c: %+v, want it taken", p)
	}

	bad := &App{Name: "e", Cluster: "t", Advertise: "10.0.0.5:80", InsecureNoKey: true, AdvertiseAllow: []string{"127.0.0.0/8"}}
	bad.setDefaults()
	if err := bad.compile(); err == nil || !strings.Contains(err.Error(), "advertise_allow") {
		t.Errorf("own advertise outside advertise_allow: %v, want an advertise_allow error", err)
	}
}

// Rotating the key with accept_keys never splits the cluster: at every
// step of the roll (accept the new key everywhere; sign with it, node by
// node, accepting the old one; drop the old one) each node takes the
// other's announcements, and a hop marker that either signs verifies at
// the other.
func TestKeyRotation(t *testing.T) {
	const oldKey, newKey = "the-old-cluster-key-0123", "the-new-cluster-key-4567"
	pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.3")
	peers := []string{fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("127.0.0.3:%d", pb)}
	interval := caddy.Duration(30 * time.Millisecond)
	config := func(name, host string, port int, key string, accept ...string) *App {
		return &App{Name: name, Cluster: "t", Advertise: host + ":8001", Interval: interval, Key: key, AcceptKeys: accept,
			Listen: []string{fmt.Sprintf("udp/%s:%d", host, port)}, Peers: peers}
	}
	a := startTestApp(t, config("a", "127.0.0.1", pa, oldKey))
	b := startTestApp(t, config("b", "127.0.0.3", pb, oldKey))
	// reload replaces a running app with next, as Caddy does: the new
	// config starts on the same node, then the old one stops.
	reload := func(running **App, next *App) {
		t.Helper()
		next.logger = zap.NewNop()
		next.setDefaults()
		if err := next.compile(); err != nil {
			t.Fatal(err)
		}
		next.node = (*running).node
		if err := next.Start(); err != nil {
			t.Fatal(err)
		}
		_ = (*running).Stop()
		*running = next
		t.Cleanup(func() { _ = next.Stop() })
	}
	check := func(step string) {
		t.Helper()
		badA, badB := a.node.received.rejects[rejectReason(wire.BadMAC)].Load(), b.node.received.rejects[rejectReason(wire.BadMAC)].Load()
		for _, x := range []struct {
			at   *App
			peer string
		}{{a, "b"}, {b, "a"}} {
			seq := uint64(0)
			if p := lookupPeer(x.at.node.table, x.peer); p != nil {
				seq = p.Seq
			}
			waitFor(t, 2*time.Second, step+": "+x.at.Name+" keeps taking "+x.peer+"'s announcements", func() bool {
				p := lookupPeer(x.at.node.table, x.peer)
				return p != nil && p.Seq > seq+2
			})
		}
		if a.node.received.rejects[rejectReason(wire.BadMAC)].Load() != badA || b.node.received.rejects[rejectReason(wire.BadMAC)].Load() != badB {
			t.Errorf("%s: announcements rejected for their MAC", step)
		}
		for _, x := range [][2]*App{{a, b}, {b, a}} {
			from, to := x[0], x[1]
			marker := from.node.keys.Load().hop.Mark(wire.Hop{From: from.Name, To: to.Name, Scheme: "http", At: time.Now()}, "GET", "/")
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set(wire.HopHeader, marker)
			if _, ok, _ := receivedHop(r, to.Name, to.node.keys.Load(), time.Now()); !ok {
				t.Errorf("%s: %s's hop marker does not verify at %s", step, from.Name, to.Name)
			}
		}
	}
	check("before")
	reload(&a, config("a", "127.0.0.1", pa, oldKey, newKey))
	reload(&b, config("b", "127.0.0.3", pb, oldKey, newKey))
	check("the new key accepted everywhere")
	reload(&a, config("a", "127.0.0.1", pa, newKey, oldKey))
	check("a signs with the new key")
	reload(&b, config("b", "127.0.0.3", pb, newKey, oldKey))
	check("both sign with the new key")
	reload(&a, config("a", "127.0.0.1", pa, newKey))
	reload(&b, config("b", "127.0.0.3", pb, newKey))
	check("the old key dropped")
}

// A peer whose clock is outside replay_window is refused, and the operator
// hears why, with the skew, at warn level and at most once per interval
// for that peer; the refusals are counted as out_of_window.
func TestClockSkewWarnsOncePerInterval(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	app := &App{Name: "a", Cluster: "t", InsecureNoKey: true, Advertise: "127.0.0.1:80", Interval: caddy.Duration(time.Hour), logger: zap.New(core)}
	app.setDefaults()
	if err := app.compile(); err != nil {
		t.Fatal(err)
	}
	app.node = newNode()
	app.node.table.SetLimits(app.tableLimits())
	an := &announcer{app: app, node: app.node, logger: app.logger, rejectLog: rate.NewLimiter(rate.Inf, 1)}
	now := time.Now()
	for i := range 5 {
		a := wire.Announcement{Cluster: "t", Node: "b", Incarnation: 1, Seq: uint64(i + 1), SentAt: now.Add(time.Minute).UnixNano(), Advertise: "127.0.0.2:80"}
		b, err := a.Encode(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		an.receive(b, netip.MustParseAddrPort("127.0.0.2:4445"), []*wire.Signer{nil}, new(wire.Announcement), now)
	}
	if got := app.node.received.rejects[rejectOutOfWindow].Load(); got != 5 {
		t.Errorf("%d out_of_window rejections counted, want 5", got)
	}
	warns := logs.FilterMessageSnippet("outside replay_window").All()
	if len(warns) != 1 || warns[0].Level != zapcore.WarnLevel {
		t.Fatalf("%d warnings (%v), want one, at warn level", len(warns), warns)
	}
	if skew, ok := warns[0].ContextMap()["clock_ahead_by"].(time.Duration); !ok || skew < 59*time.Second || skew > time.Minute {
		t.Errorf("clock_ahead_by %v, want about a minute", warns[0].ContextMap()["clock_ahead_by"])
	}
}
