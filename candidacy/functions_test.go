package candidacy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// now is the fixed time of the chain tests.
var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// tp builds a test peer heard age ago, with figure setters applied.
func tp(name string, age time.Duration, set ...func(*Peer)) *Peer {
	p := &Peer{
		Name: name, Advertise: "127.0.0.1:80", ReceivedAt: now.Add(-age), FirstSeen: now.Add(-time.Hour),
		Figures: Figures{CPUMilli: 1000, Capacity: 100, Speed: 1000, CPUIdle1000: 500, MemTotal: 1000, MemAvail: 500},
	}
	for _, s := range set {
		s(p)
	}
	return p
}

func busy(n uint32) func(*Peer)     { return func(p *Peer) { p.Figures.Busy = n } }
func withLoad(l uint32) func(*Peer) { return func(p *Peer) { p.Figures.Load1000 = l } }
func cpuN(m uint32) func(*Peer)     { return func(p *Peer) { p.Figures.CPUMilli = m } }
func idle(i uint16) func(*Peer)     { return func(p *Peer) { p.Figures.CPUIdle1000 = i } }
func spd(s uint32) func(*Peer)      { return func(p *Peer) { p.Figures.Speed = s } }
func adv(a string) func(*Peer)      { return func(p *Peer) { p.Advertise = a } }
func tags(t ...string) func(*Peer)  { return func(p *Peer) { p.Tags = t } }
func self(p *Peer)                  { p.Self = true }
func draining(p *Peer)              { p.Figures.Draining = true }
func appWeight(w uint16) func(*Peer) {
	return func(p *Peer) { p.Figures.AppWeight, p.Figures.HasAppWeight = w, true }
}
func withMem(total, avail uint64) func(*Peer) {
	return func(p *Peer) { p.Figures.MemTotal, p.Figures.MemAvail = total, avail }
}

func fig(n ...string) []string { return n }

func TestChainFunctions(t *testing.T) {
	req := httptest.NewRequest("GET", "http://www.example.com/x?PHPSESSID=7f000003deadbeef", nil)
	tests := []struct {
		name  string
		peers []*Peer
		chain []Function
		want  []string
	}{
		{"start: live peers by name, self included, stale and draining out",
			[]*Peer{tp("c", time.Second), tp("a", 0), tp("me", 0, self), tp("old", 4*time.Second), tp("d", 0, draining)},
			nil, fig("a", "c", "me")},
		{"start: empty table", nil, nil, nil},
		{"byAge tighter than max_age",
			[]*Peer{tp("a", 500*time.Millisecond), tp("b", 2500*time.Millisecond), tp("me", 5*time.Second, self)},
			[]Function{&ByAge{MaxAge: caddy.Duration(2 * time.Second)}}, fig("a", "me")},
		{"byAge without argument keeps the starting rule",
			[]*Peer{tp("a", 0), tp("b", 2500*time.Millisecond)},
			[]Function{&ByAge{}}, fig("a", "b")},
		{"byLogWindow of 1 keeps 1", []*Peer{tp("a", 0)}, []Function{&ByLogWindow{}}, fig("a")},
		{"byLogWindow of 3 keeps 1", []*Peer{tp("a", 0), tp("b", 0), tp("c", 0)}, []Function{&ByLogWindow{}}, fig("a")},
		{"byLogWindow of 4 keeps 2", []*Peer{tp("a", 0), tp("b", 0), tp("c", 0), tp("d", 0)}, []Function{&ByLogWindow{}}, fig("a", "b")},
		{"byLogWindow of 8 keeps 3", peersNamed(8), []Function{&ByLogWindow{}}, fig("p0", "p1", "p2")},
		{"byLogWindow of none", nil, []Function{&ByLogWindow{}}, nil},
		{"byWindow 2", peersNamed(5), []Function{&ByWindow{N: 2}}, fig("p0", "p1")},
		{"byLoad per CPU and speed, least first",
			[]*Peer{tp("a", 0, withLoad(2000), cpuN(4000)), tp("b", 0, withLoad(1000), cpuN(1000)), tp("c", 0, withLoad(3000), cpuN(8000), spd(2000))},
			[]Function{&ByLoad{}}, fig("c", "a", "b")}, // 0.1875, 0.5, 1.0
		{"byLoad takes the application's own load when reported",
			[]*Peer{tp("a", 0, withLoad(100)), tp("b", 0, withLoad(4000), func(p *Peer) { p.Figures.AppLoad1000, p.Figures.HasAppLoad = 50, true })},
			[]Function{&ByLoad{}}, fig("b", "a")},
		{"byLoad ties keep order",
			[]*Peer{tp("a", 0, withLoad(1000)), tp("b", 0, withLoad(1000)), tp("c", 0, withLoad(500))},
			[]Function{&ByLoad{}}, fig("c", "a", "b")},
		{"byLoad bias favours self",
			[]*Peer{tp("a", 0, withLoad(500)), tp("me", 0, self, withLoad(600))},
			[]Function{&ByLoad{biased{Bias: 0.2}}}, fig("me", "a")},
		{"byLoad small bias is not enough",
			[]*Peer{tp("a", 0, withLoad(500)), tp("me", 0, self, withLoad(600))},
			[]Function{&ByLoad{biased{Bias: 0.05}}}, fig("a", "me")},
		{"byBusyChildren relative to capacity",
			[]*Peer{tp("a", 0, busy(30)), tp("b", 0, busy(50), func(p *Peer) { p.Figures.Capacity = 200 }), tp("c", 0, busy(10))},
			[]Function{&ByBusyChildren{}}, fig("c", "b", "a")},
		{"byCPU most idle first",
			[]*Peer{tp("a", 0, idle(200)), tp("b", 0, idle(900)), tp("c", 0, idle(500))},
			[]Function{&ByCPU{}}, fig("b", "c", "a")},
		{"byCost: memory pressure costs",
			[]*Peer{tp("a", 0, withMem(1000, 100)), tp("b", 0, withMem(1000, 900)), tp("c", 0, withMem(1000, 500))},
			[]Function{&ByCost{}}, fig("b", "c", "a")},
		{"byCost: CPU load costs (same load_hwm 4)",
			[]*Peer{tp("a", 0, withLoad(3000), cpuN(4000)), tp("b", 0, withLoad(100), cpuN(4000)), tp("c", 0, withLoad(1500), cpuN(4000))},
			[]Function{&ByCost{}}, fig("b", "c", "a")},
		{"byCost: at equal load, more CPUs cost less",
			[]*Peer{tp("one", 0, withLoad(1000), cpuN(1000)), tp("eight", 0, withLoad(1000), cpuN(8000))},
			[]Function{&ByCost{}}, fig("eight", "one")},
		{"byHostname",
			[]*Peer{tp("sun-1", 0), tp("alpha-2", 0), tp("intel-3", 0)},
			[]Function{mustProvision(&ByHostname{Pattern: "^(sun|alpha)"})}, fig("alpha-2", "sun-1")},
		{"byTag needs every tag",
			[]*Peer{tp("a", 0, tags("cgi", "images")), tp("b", 0, tags("cgi")), tp("c", 0)},
			[]Function{&ByTag{Tags: []string{"cgi", "images"}}}, fig("a")},
		{"removeSelf", []*Peer{tp("a", 0), tp("me", 0, self)}, []Function{&RemoveSelf{}}, fig("a")},
		{"addSelf after a window dropped it",
			[]*Peer{tp("a", 0), tp("b", 0), tp("me", 0, self)},
			[]Function{&ByWindow{N: 1}, &AddSelf{}}, fig("a", "me")},
		{"addSelf does not duplicate",
			[]*Peer{tp("a", 0), tp("me", 0, self)},
			[]Function{&AddSelf{}}, fig("a", "me")},
		{"addSelf not while draining",
			[]*Peer{tp("a", 0), tp("me", 0, self, draining)},
			[]Function{&AddSelf{}}, fig("a")},
		{"off serves locally", []*Peer{tp("a", 0)}, []Function{&Off{}, &AddSelf{}}, nil},
		{"bySession from the query: 7f000003 is 127.0.0.3",
			[]*Peer{tp("a", 0, adv("127.0.0.2:80")), tp("b", 0, adv("127.0.0.3:8080")), tp("c", 0, adv("127.0.0.4:80"))},
			[]Function{&BySession{}}, fig("b")},
		{"bySession without a match leaves the list",
			[]*Peer{tp("a", 0, adv("127.0.0.2:80")), tp("c", 0, adv("127.0.0.4:80"))},
			[]Function{&BySession{}}, fig("a", "c")},
		{"byWait uses capacity and speed",
			[]*Peer{tp("slow", 0, busy(4), spd(1000)), tp("fast", 0, busy(12), spd(4000)), tp("mid", 0, busy(6), spd(2000))},
			[]Function{&ByWait{}}, fig("fast", "mid", "slow")}, // 13/400, 7/200, 5/100
		{"byWait: this node wins a tie",
			[]*Peer{tp("a", 0, busy(3)), tp("me", 0, self), tp("z", 0, busy(3))},
			[]Function{&ByWait{}}, fig("me", "a", "z")},
		{"byWeight drops weight 0",
			[]*Peer{tp("a", 0, appWeight(0)), tp("b", 0, appWeight(500))},
			[]Function{&ByWeight{}}, fig("b")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := policy(newTestNode(tt.peers...), tt.chain...)
			if got := chainNames(s, req, 1); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func peersNamed(n int) []*Peer {
	var ps []*Peer
	for i := range n {
		ps = append(ps, tp(fmt.Sprintf("p%d", i), 0))
	}
	return ps
}

func mustProvision[T caddy.Provisioner](f T) T {
	if err := f.Provision(caddy.Context{}); err != nil {
		panic(err)
	}
	return f
}

// Prediction: requests this node sent since a peer's announcement count
// on top of the announced figure; for self the live counter counts.
func TestPrediction(t *testing.T) {
	n := newTestNode(tp("a", 0, busy(10)), tp("b", 0, busy(12)), tp("me", 0, self, busy(0)))
	slot := n.table.Lookup("a")
	for range 5 {
		slot.local.begin() // 5 requests sent to a since its announcement
	}
	n.busy.Store(20) // self is busier than its own announcement says

	without := policy(n, &ByBusyChildren{})
	without.Predict = PredictOff
	if got := chainNames(without, nil, 1); !slices.Equal(got, fig("a", "b", "me")) {
		t.Errorf("announced only: got %v, want [a b me] (self uses its live count)", got)
	}
	with := policy(n, &AddPrediction{}, &ByBusyChildren{})
	if got := chainNames(with, nil, 1); !slices.Equal(got, fig("b", "a", "me")) {
		t.Errorf("with addPrediction: got %v, want [b a me]: a is at 10+5", got)
	}
	// A new announcement from a already includes those requests.
	mustAccept(t, n.table, &wire.Announcement{Node: "a", Incarnation: 1, Seq: 1, SentAt: time.Now().UnixNano(), Figures: Figures{Busy: 15, Capacity: 100}}, time.Now())
	if got := n.table.Lookup("a").local.sentSinceAnnounce(); got != 0 {
		t.Errorf("after a's announcement, %d requests count as unannounced, want 0", got)
	}
}

func TestBySessionCookieHeader(t *testing.T) {
	n := newTestNode(tp("a", 0, adv("127.0.0.2:80")), tp("b", 0, adv("10.1.2.3:80")))
	s := policy(n, &BySession{Name: "SID"})
	r := httptest.NewRequest("GET", "/?SID=7f000002", nil)
	r.Header.Add("Cookie", "x=1; SID=0a010203ffff")
	r.Header.Add("Cookie", "SID=7f000002") // only the first Cookie header counts
	if got := chainNames(s, r, 1); !slices.Equal(got, fig("b")) {
		t.Errorf("got %v, want [b] from the first Cookie header (0a010203 = 10.1.2.3)", got)
	}
	r = httptest.NewRequest("GET", "/?SID=zz000002", nil)
	if got := chainNames(s, r, 1); !slices.Equal(got, fig("a", "b")) {
		t.Errorf("malformed id: got %v, want the list unchanged", got)
	}
}

// bySession reads a quoted cookie value, and matches a peer that
// advertises a DNS name by the address its announcements come from.
func TestBySessionQuotedAndNamedPeers(t *testing.T) {
	n := newTestNode(tp("a", 0, adv("127.0.0.2:80")), tp("web-b", 0, adv("web-b.example:80"), func(p *Peer) {
		p.Source = netip.MustParseAddrPort("10.1.2.3:4445")
	}))
	s := policy(n, &BySession{Name: "SID"})
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Add("Cookie", `SID="0a010203ffff"`)
	if got := chainNames(s, r, 1); !slices.Equal(got, fig("web-b")) {
		t.Errorf("got %v, want [web-b]: the quoted id names 10.1.2.3, where web-b's announcements come from", got)
	}
}

// byCookie refuses a name that is not a cookie name, which the directive's
// http.SetCookie would drop without a word.
func TestByCookieName(t *testing.T) {
	for name, ok := range map[string]bool{"": true, "backhand": true, "my-node_1": true, "bad name": false, "a;b": false, "é": false} {
		if err := (&ByCookie{Name: name}).Validate(); (err == nil) != ok {
			t.Errorf("byCookie %q: %v, want ok %v", name, err, ok)
		}
	}
}

func TestRedirectFormat(t *testing.T) {
	tests := []struct{ format, want string }{
		{"%S", "www-1.datacenter-3"},
		{"%S.%-2H.%-1H", "www-1.datacenter-3.example.com"},
		{"%1S.example.net:%P", "www-1.example.net:8080"},
		{"%2S-%1H", "datacenter-3-www"},
		{"%9S|%-9H|%%", "||%"},
		{"%H", "www.example.com"},
	}
	for _, tt := range tests {
		got, err := expandRedirectFormat(tt.format, "www-1.datacenter-3", "www.example.com", "8080")
		if err != nil || got != tt.want {
			t.Errorf("%q: got %q, %v; want %q", tt.format, got, err, tt.want)
		}
	}
	for _, bad := range []string{"%", "%-", "%X", "%2P", "%1%"} {
		if _, err := expandRedirectFormat(bad, "s", "h", "1"); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestSlowStartRamp(t *testing.T) {
	f := mustProvision(&SlowStart{Window: caddy.Duration(10 * time.Second)})
	for _, tt := range []struct {
		age  time.Duration
		want float64
	}{{0, 0.1}, {500 * time.Millisecond, 0.1}, {5 * time.Second, 0.5}, {10 * time.Second, 1}, {time.Hour, 1}} {
		if got := f.rampWeight(tt.age); got < tt.want-1e-9 || got > tt.want+1e-9 {
			t.Errorf("age %v: weight %v, want %v", tt.age, got, tt.want)
		}
	}
	// A peer half-way through its window is kept about half the time.
	young := tp("young", 0, func(p *Peer) { p.FirstSeen = now.Add(-5 * time.Second) })
	s := policy(newTestNode(young), f)
	kept := 0
	const rounds = 4000
	for i := range rounds {
		if len(chainNames(s, nil, uint64(i))) == 1 {
			kept++
		}
	}
	if share := float64(kept) / rounds; share < 0.45 || share > 0.55 {
		t.Errorf("kept %.3f of the time, want about 0.5", share)
	}
}

// One slowStart, whatever follows it: the keep probability of a new peer
// is the same whether a window draws the list's members one by one (lazy)
// or the whole list is evaluated (byLogWindow, eager): a peer rejected once
// is not drawn again and kept. With one old and one new peer kept with
// probability 0.05, the new one wins 0.05 x 1/2 of the time on both paths
// (the lazy path once gave it 0.092 against 0.050).
func TestSlowStartOneSemantics(t *testing.T) {
	newPeer := tp("new", 0, func(p *Peer) { p.FirstSeen = now })
	f := mustProvision(&SlowStart{Window: caddy.Duration(10 * time.Second), MinWeight: ptr(0.05)})
	const rounds = 40000
	for name, chain := range map[string][]Function{
		"lazy":  {f, &ByRandom{}, &ByWindow{N: 1}},
		"eager": {f, &ByRandom{}, &ByLogWindow{}},
	} {
		s := policy(newTestNode(tp("old", 0), newPeer), chain...)
		won := 0
		for i := range rounds {
			if got := chainNames(s, nil, uint64(i)); len(got) > 0 && got[0] == "new" {
				won++
			}
		}
		if share := float64(won) / rounds; share < 0.020 || share > 0.030 {
			t.Errorf("%s: the new peer won %.4f of the time, want 0.025", name, share)
		}
	}
	// Zero is honoured, not replaced by the default: a min weight of 0
	// keeps a peer heard just now out; an aggression of 0 is refused.
	s := policy(newTestNode(tp("old", 0), newPeer), mustProvision(&SlowStart{Window: caddy.Duration(10 * time.Second), MinWeight: ptr(0.0)}))
	for i := range 100 {
		if got := chainNames(s, nil, uint64(i)); slices.Contains(got, "new") {
			t.Fatalf("min weight 0: the peer heard just now is a candidate: %v", got)
		}
	}
	if err := (&SlowStart{Window: caddy.Duration(time.Second), Aggression: ptr(0.0)}).Provision(caddy.Context{}); err == nil {
		t.Error("aggression 0 accepted")
	}
}

func ptr[T any](v T) *T { return &v }

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%T%s", v, b)
}

// byRandom must be uniform: over 4 peers, each comes first a quarter of the
// time, within a chi-square bound (fixed seeds, so the test is exact).
func TestByRandomUniform(t *testing.T) {
	s := policy(newTestNode(peersNamed(4)...), &ByRandom{})
	counts := map[string]int{}
	const rounds = 40000
	for i := range rounds {
		counts[chainNames(s, nil, uint64(i))[0]]++
	}
	chi2 := 0.0
	for _, c := range counts {
		d := float64(c) - rounds/4
		chi2 += d * d / (rounds / 4)
	}
	if len(counts) != 4 || chi2 > 16.27 { // p = 0.001 for 3 degrees of freedom
		t.Errorf("first places %v: chi-square %.2f, not uniform", counts, chi2)
	}
}

// byRandom; byWindow 2; <order> is the power of two choices: every pair is
// drawn uniformly without replacement and the worse of the two never wins,
// so the worst peer never wins and the best wins 1-(1-2/n) = 2/n... of the
// time: with 4 peers, best 50%, second 33%, third 17%, worst 0%.
func TestByWindow2PowerOfTwo(t *testing.T) {
	s := policy(newTestNode(tp("w0", 0, busy(0)), tp("w1", 0, busy(10)), tp("w2", 0, busy(20)), tp("w3", 0, busy(30))),
		&ByRandom{}, &ByWindow{N: 2}, &ByBusyChildren{})
	counts := map[string]int{}
	const rounds = 30000
	for i := range rounds {
		got := chainNames(s, nil, uint64(i))
		if len(got) != 2 || got[0] == got[1] {
			t.Fatalf("window %v, want two distinct peers", got)
		}
		counts[got[0]]++
	}
	want := map[string]float64{"w0": 0.5, "w1": 1.0 / 3, "w2": 1.0 / 6, "w3": 0}
	for name, share := range want {
		if got := float64(counts[name]) / rounds; got < share-0.015 || got > share+0.015 {
			t.Errorf("%s won %.3f, want %.3f", name, got, share)
		}
	}
}

func TestByWeightProportional(t *testing.T) {
	s := policy(newTestNode(tp("full", 0), tp("half", 0, appWeight(500))), &ByWeight{})
	counts := map[string]int{}
	const rounds = 30000
	for i := range rounds {
		counts[chainNames(s, nil, uint64(i))[0]]++
	}
	if got := float64(counts["full"]) / rounds; got < 2.0/3-0.015 || got > 2.0/3+0.015 {
		t.Errorf("full weight first %.3f of the time, want 2/3", got)
	}
}

// byPower puts a peer first in proportion to capacity x speed x weight,
// both when a window samples lazily (byWindow 1) and when the whole list is
// ordered (a window as large as the list), and a peer answering slowly
// (pace) is drawn less often.
func TestByPowerProportional(t *testing.T) {
	n := newTestNode(tp("s1", 0, spd(1000)), tp("s2", 0, spd(1000)), tp("x2", 0, spd(2000)), tp("x4", 0, spd(4000)),
		tp("w", 0, spd(4000), appWeight(250))) // speed 4 at weight 1/4: power 1
	want := map[string]float64{"s1": 1.0 / 9, "s2": 1.0 / 9, "x2": 2.0 / 9, "x4": 4.0 / 9, "w": 1.0 / 9}
	const rounds = 40000
	for _, window := range []int{1, 5} {
		s := policy(n, &ByPower{}, &ByWindow{N: window})
		counts := map[string]int{}
		for i := range rounds {
			counts[chainNames(s, nil, uint64(i))[0]]++
		}
		chi2 := 0.0
		for name, share := range want {
			d := float64(counts[name]) - share*rounds
			chi2 += d * d / (share * rounds)
		}
		if chi2 > 18.47 { // p = 0.001 for 4 degrees of freedom
			t.Errorf("window %d: first places %v, chi-square %.2f: not in proportion to power", window, counts, chi2)
		}
	}
	x4 := n.table.Lookup("x4")
	at := now.Add(-40 * time.Second)
	for range 400 {
		at = at.Add(100 * time.Millisecond)
		x4.local.times.observe(10*time.Millisecond, at)
	}
	for range 30 { // x4 now answers 4x slower than usual: power 4 -> about 1
		x4.local.times.observe(40*time.Millisecond, now)
	}
	s := policy(n, &ByPower{}, &ByWindow{N: 1})
	first := 0
	for i := range rounds {
		if chainNames(s, nil, uint64(i))[0] == "x4" {
			first++
		}
	}
	if got := float64(first) / rounds; got > 0.25 {
		t.Errorf("x4 answering 4x slower than usual is still first %.3f of the time, want about 1/6", got)
	}
}

func TestByLatencyPeakEWMA(t *testing.T) {
	n := newTestNode(tp("a", 0, func(p *Peer) { p.Figures.LatencyMicros = 5000 }), tp("b", 0, func(p *Peer) { p.Figures.LatencyMicros = 1000 }))
	s := policy(n, &ByLatency{})
	if got := chainNames(s, nil, 1); !slices.Equal(got, fig("b", "a")) {
		t.Errorf("without samples: got %v, want the announced latencies to decide [b a]", got)
	}
	b := n.table.Lookup("b")
	b.local.latency.observe(20*time.Millisecond, now) // b turned slow for this node
	if got := chainNames(s, nil, 1); !slices.Equal(got, fig("a", "b")) {
		t.Errorf("after a slow sample from b: got %v, want [a b]", got)
	}
	b.local.latency.observe(time.Millisecond, now.Add(time.Minute)) // long after, fast again
	if lat, _ := b.local.latency.micros(); lat > 1100 {
		t.Errorf("peak EWMA %vµs a minute after the peak, want it decayed to about 1000", lat)
	}
}

// A peer that starts answering this node five times slower than usual
// loses byWait's ranking within a few responses, long before its own
// figures say so; ignore_pace does not notice; when it recovers, it wins
// again within a few responses; and without responses the estimate
// returns to what the peer announces, so the peer gets another chance.
func TestByWaitFollowsResponseTimes(t *testing.T) {
	n := newTestNode(tp("a", 0, busy(2)), tp("b", 0, busy(1)))
	wait, blind := policy(n, &ByWait{}), policy(n, &ByWait{IgnorePace: true})
	a, b := n.table.Lookup("a"), n.table.Lookup("b")
	at := now.Add(-time.Minute)
	for i := range 400 { // a minute of usual responses, 40 ms each
		at = at.Add(150 * time.Millisecond)
		a.local.times.observe(40*time.Millisecond, at)
		b.local.times.observe(time.Duration(38+i%5)*time.Millisecond, at)
	}
	rank := func(s *testPolicy) []string { return chainNamesAt(s, at, 1) }
	if got := rank(wait); !slices.Equal(got, fig("b", "a")) {
		t.Errorf("byWait at the usual pace: got %v, want the less busy b first", got)
	}
	for range 8 { // b turns 5x slower: eight responses
		at = at.Add(10 * time.Millisecond)
		b.local.times.observe(200*time.Millisecond, at)
	}
	if got := rank(wait); !slices.Equal(got, fig("a", "b")) {
		t.Errorf("byWait: got %v, want the slow b last", got)
	}
	if got := rank(blind); !slices.Equal(got, fig("b", "a")) {
		t.Errorf("byWait ignore_pace: got %v, want the less busy b first", got)
	}
	for range 24 { // b recovers
		at = at.Add(10 * time.Millisecond)
		b.local.times.observe(40*time.Millisecond, at)
	}
	if got := rank(wait); !slices.Equal(got, fig("b", "a")) {
		t.Errorf("byWait after b recovered: got %v, want the less busy b first again", got)
	}
	for range 40 { // b turns slow for longer: its typical time follows
		at = at.Add(50 * time.Millisecond)
		b.local.times.observe(200*time.Millisecond, at)
	}
	if got := rank(blind); !slices.Equal(got, fig("a", "b")) {
		t.Errorf("byWait ignore_pace after 2 s of slow responses: got %v, want the slow b last", got)
	}
	// A minute without responses: b counts as taking what it announces.
	typical, _ := b.local.times.estimate(at.Add(time.Minute), 40e3)
	if typical > 45e3 {
		t.Errorf("typical time %.0fµs a minute after the last response, want back near the announced 40000", typical)
	}
}

// chainNamesAt is chainNames with the chain's clock set to at.
func chainNamesAt(s *testPolicy, at time.Time, seed uint64) []string {
	c := s.evaluate(Run{Now: at, Rand: rand.New(rand.NewPCG(seed, 1)).IntN})
	defer c.Release()
	return c.Names()
}

// The herd: one table, announced once, and many decisions before the next
// announcement, each leaving its request in flight. Ranked on announced
// figures alone, every decision goes to the apparent minimum; with
// prediction, the requests this node sent count and the load spreads.
func TestHerd(t *testing.T) {
	const peers, decisions = 10, 1000
	run := func(predict Predict, chain ...Function) float64 {
		var ps []*Peer
		for i := range peers {
			b := uint32(20)
			if i == 3 {
				b = 10 // the apparent minimum
			}
			ps = append(ps, tp(fmt.Sprintf("p%d", i), 0, busy(b)))
		}
		n := newTestNode(ps...)
		s := policy(n, chain...)
		s.Predict = predict
		toMin := 0
		for i := range decisions {
			c := s.evaluate(Run{Now: now, Rand: rand.New(rand.NewPCG(uint64(i), 7)).IntN})
			x := c.First()
			x.slot.local.begin()
			if x.Peer.Name == "p3" {
				toMin++
			}
			c.Release()
		}
		return float64(toMin) / decisions
	}
	classic := []Function{&ByAge{}, &ByRandom{}, &ByLogWindow{}, &ByBusyChildren{}}
	stale, predicted := run(PredictOff, classic...), run(PredictBlend, classic...)
	t.Logf("byRandom byLogWindow byBusyChildren, share to the apparent minimum: announced only %.3f, with prediction %.3f", stale, predicted)
	leastAll, leastAllPredicted := run(PredictOff, &ByBusyChildren{}), run(PredictBlend, &ByBusyChildren{})
	t.Logf("byBusyChildren over all peers: announced only %.3f, with prediction %.3f", leastAll, leastAllPredicted)
	if leastAll != 1 {
		t.Errorf("least busy of all, announced only: %.3f to the apparent minimum, want 1 (the stampede)", leastAll)
	}
	// With prediction, the minimum takes requests until it catches up with
	// the others (10 more), then the load spreads evenly: (10+99)/1000.
	if leastAllPredicted > 0.12 {
		t.Errorf("least busy of all, with prediction: %.3f to the apparent minimum, want about 0.109", leastAllPredicted)
	}
	// byLogWindow samples 3 of 10: the minimum is in the sample 3/10 of the
	// time and then always wins without prediction.
	if stale < 0.27 || stale > 0.33 {
		t.Errorf("announced only: %.3f to the apparent minimum, want about 0.30 (every sample holding it)", stale)
	}
	if predicted > 0.15 {
		t.Errorf("with prediction: %.3f to the apparent minimum, want it to get little more than its share (0.1)", predicted)
	}
}

func TestUnmarshalFunctions(t *testing.T) {
	tests := []struct {
		line string
		want Function
		err  string
	}{
		{"byAge 6", &ByAge{MaxAge: caddy.Duration(6 * time.Second)}, ""},
		{"byAge 0.5", &ByAge{MaxAge: caddy.Duration(500 * time.Millisecond)}, ""},
		{"byAge 6s", &ByAge{MaxAge: caddy.Duration(6 * time.Second)}, ""},
		{"byAge", &ByAge{}, ""},
		{"byAge -1", nil, "not a positive duration"},
		{"byAge soon", nil, "not a positive duration"},
		{"byLoad 0.5", &ByLoad{biased{Bias: 0.5}}, ""},
		{"byLoad x", nil, `bias "x" is not a number`},
		{"byBusyChildren", &ByBusyChildren{}, ""},
		{"byWindow 3", &ByWindow{N: 3}, ""},
		{"bySample", &BySample{}, ""},
		{"bySample 2", &BySample{N: 2}, ""},
		{"bySample 3 8", &BySample{N: 3, Max: 8}, ""},
		{"bySample 0", nil, `"0" is not a whole number`},
		{"bySample 3 8 9", nil, "wrong argument count"},
		{"byWait", &ByWait{}, ""},
		{"byWait 0.5 ignore_pace", &ByWait{Bias: 0.5, IgnorePace: true}, ""},
		{"byWait ignore_pace", &ByWait{IgnorePace: true}, ""},
		{"byWait 1 2", nil, `unexpected "2"`},
		{"byWait ignore_pace ignore_pace", nil, `unexpected "ignore_pace"`},
		{"byWait soon", nil, `unexpected "soon"`},
		{"byWindow 0", nil, "not a whole number >= 1"},
		{"byRandom now", nil, `byRandom takes no arguments, got "now"`},
		{"byHostname ^www", &ByHostname{Pattern: "^www"}, ""},
		{"byTag cgi images", &ByTag{Tags: []string{"cgi", "images"}}, ""},
		{"bySession JSESSIONID", &BySession{Name: "JSESSIONID"}, ""},
		{"byCookie", &ByCookie{}, ""},
		{"slowStart 30s 2 0.2", &SlowStart{Window: caddy.Duration(30 * time.Second), Aggression: ptr(2.0), MinWeight: ptr(0.2)}, ""},
		{"HTTPRedirectToName %S.%-2H.%-1H", &HTTPRedirectToName{Format: "%S.%-2H.%-1H"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tt.line)
			name := strings.Fields(tt.line)[0]
			_, err := unmarshalFunctionModule(d, name)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := unmarshalFunctionModule(caddyfile.NewTestDispenser(tt.line), name)
			if g, w := mustJSON(t, got), mustJSON(t, tt.want); g != w {
				t.Errorf("got %s, want %s", g, w)
			}
		})
	}
}

// unmarshalFunctionModule reads one line into its function module.
func unmarshalFunctionModule(d *caddyfile.Dispenser, name string) (Function, error) {
	d.Next()
	mod, err := caddyfile.UnmarshalModule(d, "backhand.functions."+name)
	if err != nil {
		return nil, err
	}
	return mod.(Function), nil
}

// prefixCookies accepts cookie values "ok:<node>".
type prefixCookies struct{}

func (prefixCookies) CookieNode(v string) (string, bool) { return strings.CutPrefix(v, "ok:") }

// byCookie keeps the client with the node its cookie names, when the
// caller's check accepts the cookie and the node is a candidate; without
// a check it only names its cookie.
func TestByCookie(t *testing.T) {
	n := newTestNode(tp("a", 0), tp("b", 0), tp("c", 0))
	for _, tt := range []struct {
		cookie  string
		cookies Cookies
		want    []string
	}{
		{"ok:b", prefixCookies{}, fig("b")},
		{"b", prefixCookies{}, fig("a", "b", "c")},       // refused by the check
		{"ok:gone", prefixCookies{}, fig("a", "b", "c")}, // not a candidate
		{"ok:b", nil, fig("a", "b", "c")},                // no check
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(&http.Cookie{Name: "sticky", Value: tt.cookie})
		c := policy(n, &ByCookie{Name: "sticky"}).Evaluate(n.table, &Run{Request: r, Now: now, Cookies: tt.cookies})
		if got := c.Names(); !slices.Equal(got, tt.want) || c.Cookie() != "sticky" {
			t.Errorf("cookie %q: got %v (cookie %q), want %v", tt.cookie, got, c.Cookie(), tt.want)
		}
		c.Release()
	}
}

// A byAge that allows older peers than the policy's max_age makes the list
// start from them (it was a silent no-op), unless max_age was configured
// (then it is refused); a negative byAge is refused; backhand_off is off.
func TestByAgeAndTheStartingList(t *testing.T) {
	c := &Chain{Functions: []Function{&ByAge{MaxAge: caddy.Duration(10 * time.Second)}, &ByRandom{}}, MaxAge: 3 * time.Second}
	if err := c.FollowByAge(false); err != nil || c.MaxAge != 10*time.Second {
		t.Errorf("implicit max_age: %v, max_age %v; want the list to start from byAge's 10s", err, c.MaxAge)
	}
	c.MaxAge = 3 * time.Second
	if err := c.FollowByAge(true); err == nil || !strings.Contains(err.Error(), "byAge 10s allows older peers than the policy's max_age 3s") {
		t.Errorf("explicit max_age: %v, want the combination refused", err)
	}
	old := tp("old", 8*time.Second)
	s := policy(newTestNode(tp("a", 0), old), &ByAge{MaxAge: caddy.Duration(10 * time.Second)})
	s.MaxAge = 3 * time.Second
	if err := s.FollowByAge(false); err != nil {
		t.Fatal(err)
	}
	if got := chainNames(s, nil, 1); !slices.Contains(got, "old") {
		t.Errorf("byAge 10s: %v, want the peer heard 8s ago on the list", got)
	}
	if err := (&ByAge{MaxAge: caddy.Duration(-time.Second)}).Validate(); err == nil {
		t.Error("byAge -1s accepted")
	}
	s = policy(newTestNode(tp("a", 0)), new(BackhandOff), &ByRandom{})
	if got := chainNames(s, nil, 1); got != nil {
		t.Errorf("backhand_off: %v, want served locally", got)
	}
}
