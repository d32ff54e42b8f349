package backhand

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/vip"
)

// vipTestApp is an app with the vip option compiled and a node whose
// table the test fills.
func vipTestApp(t *testing.T, holdersTag string, tags ...string) *App {
	t.Helper()
	app := &App{
		Name: "self", Tags: tags, Interval: caddy.Duration(time.Second), MaxAge: caddy.Duration(3 * time.Second),
		VIP: &VirtualAddresses{Addresses: []string{"10.0.0.10/24", "10.0.0.11/24", "fd00::10/64"}, Interface: "eth0", HoldersTag: holdersTag},
	}
	if err := app.VIP.compile(app.Tags); err != nil {
		t.Fatal(err)
	}
	app.node = newNode()
	app.node.table.SetLimits(&candidacy.Limits{MaxPeers: 16, MaxAge: 3 * time.Second, EvictAfter: time.Minute, SelfName: "self"})
	app.logger = zap.NewNop()
	app.vip = newVIPState()
	return app
}

func storePeer(app *App, name string, age time.Duration, draining bool, tags ...string) {
	now := time.Now()
	p := &candidacy.Peer{Name: name, Advertise: "10.0.0.1:80", Tags: tags, ReceivedAt: now.Add(-age), FirstSeen: now.Add(-age)}
	p.Figures.Draining = draining
	app.node.table.Store(p)
}

// TestVIPView: who takes part, who may hold, and whose holdings count.
func TestVIPView(t *testing.T) {
	app := vipTestApp(t, "web", "web")
	set := app.VIP.set
	other, _ := vip.ParseSet([]string{"10.9.9.9/24"})
	storePeer(app, "a", 0, false, "web", set.Tag(0b001))
	storePeer(app, "b", 0, true, "web", set.Tag(0b010))               // draining: holds, may not own
	storePeer(app, "c", 10*time.Second, false, "web", set.Tag(0b100)) // stale: neither
	storePeer(app, "d", 0, false, set.Tag(0))                         // without the holders tag
	storePeer(app, "e", 0, false, "web")                              // takes no part (no holdings tag)
	storePeer(app, "f", 0, false, "web", other.Tag(0b1))              // another set
	r := &vipRun{app: app, cfg: app.VIP}
	v := app.vip.view(r, 0b100, time.Now())
	var names []string
	for _, m := range v.members {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	if want := []string{"a", "self"}; !slices.Equal(names, want) {
		t.Errorf("members %v, want %v", names, want)
	}
	if v.others.Active != 0b001 || v.others.Draining != 0b010 {
		t.Errorf("others hold %+v, want a's 001 active and the draining b's 010 (not the stale c)", v.others)
	}
	if want := [][]string{{"a"}, {"b"}, {"self"}}; !slices.EqualFunc(v.holders, want, slices.Equal) {
		t.Errorf("holders %v, want %v", v.holders, want)
	}
	// Draining, this node counts itself out.
	app.node.draining.Store(true)
	for _, m := range app.vip.view(r, 0, time.Now()).members {
		if m.Name == "self" {
			t.Error("a draining node is a member")
		}
	}
}

// TestVIPTagsAndView: the holdings tag rides in the announced tags, is
// shown as holds and not as a tag, and the view names holders and owners.
func TestVIPTagsAndView(t *testing.T) {
	app := vipTestApp(t, "", "cgi")
	if got := app.announcedTags(); !slices.Equal(got, []string{"cgi"}) {
		t.Errorf("before the option runs: tags %v", got)
	}
	app.vip.run = &vipRun{app: app, cfg: app.VIP}
	app.vip.held[app.VIP.set[1].Addr()] = heldAddr{prefix: app.VIP.set[1]}
	app.vip.publishTag()
	tags := app.announcedTags()
	if len(tags) != 2 || tags[0] != "cgi" || !vip.IsTag(tags[1]) {
		t.Fatalf("announced tags %v", tags)
	}
	if cap(app.Tags) > len(app.Tags) && &app.Tags[:cap(app.Tags)][len(app.Tags)] == &tags[1] {
		t.Error("announcedTags wrote into the config's slice")
	}
	if got := heldBy(app, tags); !slices.Equal(got, []string{"10.0.0.11/24"}) {
		t.Errorf("heldBy = %v", got)
	}
	if got := withoutVIPTags(tags); !slices.Equal(got, []string{"cgi"}) {
		t.Errorf("withoutVIPTags = %v", got)
	}
	app.vip.snapshot.Store(&vipSnapshot{set: app.VIP.set, owners: []string{"a", "self", "a"}, holders: [][]string{{"a"}, {"self"}, {}}})
	app.vip.acquired.Store(3)
	v := vipViewOf(app)
	if v.Acquired != 3 || len(v.Addresses) != 3 || v.Addresses[1].Owner != "self" || !slices.Equal(v.Addresses[1].Holders, []string{"self"}) {
		t.Errorf("view %+v", v)
	}
	text, class := vipSummary(v)
	if !strings.Contains(text, "10.0.0.11/24 on self") || !strings.Contains(text, "fd00::10/64 on -") || class != "warn" {
		t.Errorf("summary %q, %q", text, class)
	}
	msg := "vip option refused: missing capability CAP_NET_ADMIN"
	app.vip.disabled.Store(&msg)
	if text, class := vipSummary(vipViewOf(app)); text != msg || class != "bad" {
		t.Errorf("refused: summary %q, %q", text, class)
	}
	// An orderly stop announces no holdings tag any more. (Nothing is on
	// a real interface here.)
	clear(app.vip.held)
	app.vip.releaseAll(app, "test")
	if got := app.announcedTags(); !slices.Equal(got, []string{"cgi"}) {
		t.Errorf("after releaseAll: tags %v", got)
	}
}

// TestVIPMetrics: the moves and the holders of each address, from a
// pedantic registry as Caddy's.
func TestVIPMetrics(t *testing.T) {
	app := vipTestApp(t, "")
	app.Cluster = "c"
	app.vip.snapshot.Store(&vipSnapshot{set: app.VIP.set, owners: []string{"a", "self", "a"}, holders: [][]string{{"a"}, {"self"}, {"a", "b"}}})
	app.vip.acquired.Store(4)
	app.vip.released.Store(1)
	mfs := scrape(t, newCollector(func() *App { return app }, time.Now))
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"caddy_backhand_vip_moves_total", "direction", "acquired", 4},
		{"caddy_backhand_vip_moves_total", "direction", "released", 1},
		{"caddy_backhand_vip_holders", "address", "fd00::10/64", 2},
		{"caddy_backhand_vip_holders", "address", "10.0.0.11/24", 1},
		{"caddy_backhand_vip_holder", "node", "b", 1},
	} {
		if got, ok := sample(mfs, c.name, c.label, c.value); !ok || got != c.want {
			t.Errorf("%s{%s=%q} = %v (present %v), want %v", c.name, c.label, c.value, got, ok, c.want)
		}
	}
}
