package backhand

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

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
