package candidacy

import (
	"fmt"
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The candidacy functions that reorder or truncate the list. Orderings are
// stable: ties keep the order that came before (random after byRandom).

func init() {
	for _, f := range []caddy.Module{
		new(ByRandom), new(ByLogWindow), new(ByWindow), new(BySample), new(ByLoad), new(ByBusyChildren),
		new(ByCPU), new(ByCost), new(ByLatency), new(ByWeight), new(ByWait), new(AddPrediction),
		new(ByPower),
	} {
		caddy.RegisterModule(f)
	}
}

// ranker gives a candidate's sort key; lower sorts first.
type ranker interface {
	rank(c *Candidates, x *Candidate) float64
}

// orderBy sorts the list by r's keys.
func (c *Candidates) orderBy(r ranker) {
	c.All() // an earlier ordering decides the ties
	for i := range c.list {
		c.list[i].key = r.rank(c, &c.list[i])
	}
	c.sortByKey()
}

// ByRandom shuffles the list uniformly, as mod_backhand's byRandom. Before
// a window (byLogWindow, byWindow) it costs only the window's draws.
type ByRandom struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByRandom) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byRandom", func() caddy.Module { return new(ByRandom) })
}

// Candidates applies the function.
func (ByRandom) Candidates(c *Candidates) { c.shuffle() }

// ByPower shuffles the list at random, each peer coming next with a
// probability in proportion to its power: capacity x speed x application
// weight, the weight lowered by the peer's pace (what byWait divides by).
// Followed by a window (byWindow), it samples the peers that can take more
// work more often, so that a peer with half the cluster's power is a candidate in
// most samples instead of in k of n; among equal peers it is byRandom.
// Like byRandom before a window, it costs only the window's draws.
type ByPower struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByPower) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byPower", func() caddy.Module { return new(ByPower) })
}

// Candidates applies the function.
func (ByPower) Candidates(c *Candidates) { c.shuffleByPower() }

// ByLogWindow keeps the first floor(log2 n) of the n candidates, at least
// one (mod_backhand's byLogWindow; its rounding was not documented). After
// byRandom it is a random sample of log2 n peers.
type ByLogWindow struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByLogWindow) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byLogWindow", func() caddy.Module { return new(ByLogWindow) })
}

// Candidates applies the function.
func (ByLogWindow) Candidates(c *Candidates) {
	n := len(c.All())
	if n > 0 {
		c.truncate(max(log2Floor(n), 1))
	}
}

// ByWindow keeps the first N candidates: `byWindow 2`. After byRandom it
// samples N peers, so `byRandom; byWindow 2; <order>` is the power of two
// choices.
type ByWindow struct {
	// N is how many candidates to keep, at least 1. Default: 2.
	N int `json:"n,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ByWindow) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byWindow", func() caddy.Module { return new(ByWindow) })
}

// Provision fills the default.
func (f *ByWindow) Provision(caddy.Context) error {
	if f.N == 0 {
		f.N = 2
	}
	if f.N < 1 {
		return fmt.Errorf("byWindow: n must be at least 1, got %d", f.N)
	}
	return nil
}

// Candidates applies the function.
func (f *ByWindow) Candidates(c *Candidates) { c.truncate(max(f.N, 1)) }

// UnmarshalCaddyfile reads `byWindow [n]`.
func (f *ByWindow) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return nil
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil || n < 1 {
		return d.Errf("byWindow: %q is not a whole number >= 1", d.Val())
	}
	f.N = n
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// BySample keeps the first N candidates (default 3) when other deciders
// crowd this node's peers, else the first Max (default 16): `bySample [n
// [max]]`. After byRandom it samples N, or Max, peers at random.
// Comparing every peer is best when the figures compared are exact, as
// this node's own requests in flight are: a node that decides most of
// what its peers serve (a dedicated balancer, the one entry point of a
// cluster) keeps them all, up to Max. Where other deciders send much of
// the traffic and announcements are many request times old, they all read
// the same stale figures, and comparing every peer sends them all to the
// one that looked idle: a random sample of three keeps them apart.
// Crowding (Table.Crowding) is the others' requests per request of this
// node's own times the announcement gap over the time per request, about
// (deciders - 1) x staleness; above 60 the sample is kept. In the
// simulator (4 to 100 servers, 1 to 10 deciders, staleness 2 to 50, loads
// 0.7 and 0.9) comparing all beat a sample of three in most cells; it
// lost badly only in the most crowded (10 deciders at staleness 50: 5.2
// against 2.8 mean service times), and by about 10% at most in a few
// cells of four servers at 0.9 load. With one decider comparing all
// matched least_conn's exact counts (4 and 8 servers), which a sample of
// three lost to by 5-35% (4 to 100 servers). Max bounds the cost of a
// decision in large clusters: ranking all of 64 peers took 6.8 µs,
// sixteen of them 0.94 µs, three 0.26 µs (BenchmarkSelect), and sixteen
// of a hundred gave most of the gain (1.02 against 1.37 and 1.01 for all
// at 0.7 load, one decider; 1.26 against 2.10 and 1.13 at 0.9). Part of
// the recommended default chain.
type BySample struct {
	// N is how many candidates to keep when crowded, at least 1.
	// Default: 3.
	N int `json:"n,omitempty"`

	// Max is how many candidates to keep when not crowded, at least N.
	// Default: 16.
	Max int `json:"max,omitempty"`
}

// crowdedAbove is the crowding beyond which BySample keeps its sample.
const crowdedAbove = 60

// CaddyModule returns the Caddy module information.
func (BySample) CaddyModule() caddy.ModuleInfo {
	return fnInfo("bySample", func() caddy.Module { return new(BySample) })
}

// Provision fills the defaults.
func (f *BySample) Provision(caddy.Context) error {
	if f.N == 0 {
		f.N = 3
	}
	if f.Max == 0 {
		f.Max = max(16, f.N)
	}
	if f.N < 1 {
		return fmt.Errorf("bySample: n must be at least 1, got %d", f.N)
	}
	if f.Max < f.N {
		return fmt.Errorf("bySample: max must be at least n (%d), got %d", f.N, f.Max)
	}
	return nil
}

// Candidates applies the function.
func (f *BySample) Candidates(c *Candidates) {
	if c.table.Crowding() > crowdedAbove {
		c.truncate(max(f.N, 1))
		return
	}
	c.truncate(max(f.Max, f.N, 1))
}

// UnmarshalCaddyfile reads `bySample [n [max]]`.
func (f *BySample) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	for _, dst := range []*int{&f.N, &f.Max} {
		if !d.NextArg() {
			return nil
		}
		n, err := strconv.Atoi(d.Val())
		if err != nil || n < 1 {
			return d.Errf("bySample: %q is not a whole number >= 1", d.Val())
		}
		*dst = n
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// biased holds the self bias of byLoad and byBusyChildren.
type biased struct {
	// Bias is subtracted from this node's own figure before sorting, so it
	// wins ties and near-ties: it offsets the cost of forwarding a request
	// (mod_backhand: sensible values are about 0 to 1). Default: 0.
	Bias float64 `json:"bias,omitempty"`
}

func (b *biased) selfBias(x *Candidate) float64 {
	if x.Peer.Self {
		return -b.Bias
	}
	return 0
}

// UnmarshalCaddyfile reads `<name> [bias]`.
func (b *biased) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	name := d.Val()
	if !d.NextArg() {
		return nil
	}
	v, err := strconv.ParseFloat(d.Val(), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return d.Errf("%s: bias %q is not a number", name, d.Val())
	}
	b.Bias = v
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// ByLoad orders by load, least first: the load average (with prediction,
// plus the requests this node sent since the announcement) divided by the
// number of CPUs and by the speed rating, so a load of 4 on an 8-CPU node
// counts as half a load of 4 on a 4-CPU one. A peer whose application
// reports its own load (app_report `load=`) is ranked by that figure
// instead, as it is: the application knows its load better than the
// kernel does. `byLoad [bias]`.
type ByLoad struct{ biased }

// CaddyModule returns the Caddy module information.
func (ByLoad) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byLoad", func() caddy.Module { return new(ByLoad) })
}

// Candidates applies the function.
func (f *ByLoad) Candidates(c *Candidates) { c.orderBy(f) }

func (f *ByLoad) rank(c *Candidates, x *Candidate) float64 {
	if x.Peer.Figures.HasAppLoad {
		return float64(x.Peer.Figures.AppLoad1000)/1000 + f.selfBias(x)
	}
	return c.load(x)/(cpus(x.Peer)*speed(x.Peer)) + f.selfBias(x)
}

// ByBusyChildren orders by the share of capacity in use, least first:
// requests in flight (with prediction, plus those this node sent since the
// announcement; for this node, its live count) divided by the announced
// capacity, mod_backhand's busy children over all children.
// `byBusyChildren [bias]`, the bias in the same 0-1 units.
type ByBusyChildren struct{ biased }

// CaddyModule returns the Caddy module information.
func (ByBusyChildren) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byBusyChildren", func() caddy.Module { return new(ByBusyChildren) })
}

// Candidates applies the function.
func (f *ByBusyChildren) Candidates(c *Candidates) { c.orderBy(f) }

func (f *ByBusyChildren) rank(c *Candidates, x *Candidate) float64 {
	return c.busy(x)/capacity(x.Peer) + f.selfBias(x)
}

// ByCPU orders by idle CPU, most idle first (with prediction, each request
// sent since the announcement takes one CPU's worth of idle away).
type ByCPU struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByCPU) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byCPU", func() caddy.Module { return new(ByCPU) })
}

// Candidates applies the function.
func (f *ByCPU) Candidates(c *Candidates) { c.orderBy(f) }

func (f *ByCPU) rank(c *Candidates, x *Candidate) float64 { return -c.cpuIdle(x) }

// ByCost orders by the marginal opportunity cost of one more request, the
// Amir-Awerbuch cost that mod_backhand's byCost used: each resource with
// utilisation u costs n^u, n being the number of candidates (at least 2),
// and a node costs the sum over its resources. The resources are CPU, with
// u = load / load_hwm, load_hwm being the smallest power of two at or above
// the highest load the peer has announced, as in mod_backhand (here also at
// least its CPU count, so that an idle 8-CPU node is not taken for a 1-CPU
// one), and one request adding 1/load_hwm; and memory, with
// u = 1 - available/total and one request adding 1/capacity. Least costly
// first. With prediction, load counts the requests sent since the
// announcement.
type ByCost struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByCost) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byCost", func() caddy.Module { return new(ByCost) })
}

// Candidates applies the function.
func (f *ByCost) Candidates(c *Candidates) {
	c.materialize(-1)
	c.orderBy(costRanking{n: max(float64(len(c.list)), 2)})
}

// costRanking ranks by byCost's cost with n candidates.
type costRanking struct{ n float64 }

func (f costRanking) rank(c *Candidates, x *Candidate) float64 {
	n := f.n
	load := c.load(x)
	hwm := loadHWM(max(load, float64(x.slot.local.loadHWM.Load())/1000, cpus(x.Peer)))
	uCPU := load / hwm
	cost := math.Pow(n, uCPU+1/hwm) - math.Pow(n, uCPU)
	if t := x.Peer.Figures.MemTotal; t > 0 {
		uMem := 1 - float64(min(x.Peer.Figures.MemAvail, t))/float64(t)
		cost += math.Pow(n, uMem+1/capacity(x.Peer)) - math.Pow(n, uMem)
	}
	return cost
}

// loadHWM is the smallest power of two at or above load, at least 1.
func loadHWM(load float64) float64 {
	if load <= 1 || math.IsNaN(load) {
		return 1
	}
	return math.Exp2(math.Ceil(math.Log2(load)))
}

// ByLatency orders by expected latency, least first: the peak-EWMA of the
// response times this node has seen from the peer (Finagle's and Linkerd's
// estimate: it jumps up at a slow response and decays over 10s) times this
// node's requests in flight there plus one. A peer this node has no
// samples of counts with the latency it announces for itself.
type ByLatency struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByLatency) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byLatency", func() caddy.Module { return new(ByLatency) })
}

// Candidates applies the function.
func (f *ByLatency) Candidates(c *Candidates) { c.orderBy(f) }

func (f *ByLatency) rank(c *Candidates, x *Candidate) float64 {
	lat, ok := 0.0, false
	if !x.Peer.Self && x.slot != nil {
		lat, ok = x.slot.local.latency.micros()
	}
	if !ok {
		lat = float64(x.Peer.Figures.LatencyMicros)
	}
	pending := 0.0
	switch {
	case x.Peer.Self:
		pending = c.busy(x)
	case x.slot != nil:
		pending = float64(max(x.slot.local.inflight.Load(), 0))
	}
	return max(lat, 1) * (pending + 1)
}

// ByWeight shuffles the list at random in proportion to the weights that
// the peers' applications report (app_report), so a peer at weight 0.5
// comes first half as often as one at full weight; peers without a report
// count as full weight and peers at weight 0 are dropped. (A weighted
// sample without replacement: key -ln(U)/w, lowest first.)
type ByWeight struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (ByWeight) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byWeight", func() caddy.Module { return new(ByWeight) })
}

// Candidates applies the function.
func (f *ByWeight) Candidates(c *Candidates) {
	c.filter(f)
	c.orderBy(f)
}

func (f *ByWeight) admits(_ *Candidates, p *Peer) bool { return weight(p) > 0 }

func (f *ByWeight) rank(c *Candidates, x *Candidate) float64 {
	return c.weightedKey(weight(x.Peer))
}

// ByWait orders by expected wait, shortest first: (requests in flight + 1)
// times the time the peer takes per request, divided by its capacity. In
// flight is estimated as for byBusyChildren. The time per request is
// learned from evidence: what the peer announces for the requests it
// serves (for this node: those it serves), raised to its last few
// responses to this node when they are slower beyond noise, so a peer
// that turns slow is shunned within a few responses; a peer that
// announces nothing is ranked by the response times this node sees.
// Times within 1.25x of the cluster's median count as the median, times
// below 1 ms as 1 ms. Without evidence, the cluster's median counts
// (scaled by a configured `speed`). The application's weight, when
// reported, stretches it by 1/weight. Ties are not broken in this node's
// favour (that gave it more than its share); `byWait <bias>` favours it
// by that many requests, to save the hop. Part of the recommended
// default chain.
type ByWait struct {
	// Bias is how many requests in flight this node's own count is
	// lowered by before comparing, to offset the cost of forwarding.
	// Default: 0 (this node still wins ties).
	Bias float64 `json:"bias,omitempty"`

	// IgnorePace ranks by each peer's typical response time only,
	// leaving out that its last few responses were slower than that: for
	// comparison, or where response times vary for reasons other than the
	// peers' speed. Default: false.
	IgnorePace bool `json:"ignore_pace,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ByWait) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byWait", func() caddy.Module { return new(ByWait) })
}

// Candidates applies the function.
func (f *ByWait) Candidates(c *Candidates) { c.orderBy(f) }

func (f *ByWait) rank(c *Candidates, x *Candidate) float64 {
	busy := c.busy(x)
	if x.Peer.Self {
		// Exact ties are not this node's: winning them (to save a hop)
		// gave it 39% of three identical nodes' requests in the demo.
		// The bias is the way to favour it.
		busy -= f.Bias
	}
	t := c.serviceTime(x, !f.IgnorePace)
	if math.IsInf(t, 1) {
		return t
	}
	return (busy + 1) * t / capacity(x.Peer)
}

// UnmarshalCaddyfile reads `byWait [<bias>] [ignore_pace]`.
func (f *ByWait) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	seenBias := false
	for d.NextArg() {
		if d.Val() == "ignore_pace" && !f.IgnorePace {
			f.IgnorePace = true
			continue
		}
		v, err := strconv.ParseFloat(d.Val(), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || seenBias || f.IgnorePace {
			return d.Errf("byWait: unexpected %q (want: byWait [<bias>] [ignore_pace])", d.Val())
		}
		f.Bias, seenBias = v, true
	}
	return nil
}

// AddPrediction makes the load-like functions after it (byLoad,
// byBusyChildren, byCPU, byCost, byWait) count, for each peer, the requests
// this node has sent it since its last announcement and still has in
// flight, which the announcement cannot know about yet. The policy's
// `predict` setting does the same for the whole chain (on by default).
type AddPrediction struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (AddPrediction) CaddyModule() caddy.ModuleInfo {
	return fnInfo("addPrediction", func() caddy.Module { return new(AddPrediction) })
}

// Candidates applies the function.
func (AddPrediction) Candidates(c *Candidates) {
	if c.predict == PredictOff {
		c.predict = PredictBlend
	}
}

// Interface guards
var (
	_ Function          = (*ByRandom)(nil)
	_ Function          = (*ByPower)(nil)
	_ Function          = (*ByLogWindow)(nil)
	_ Function          = (*ByWindow)(nil)
	_ Function          = (*BySample)(nil)
	_ Function          = (*ByLoad)(nil)
	_ Function          = (*ByBusyChildren)(nil)
	_ Function          = (*ByCPU)(nil)
	_ Function          = (*ByCost)(nil)
	_ Function          = (*ByLatency)(nil)
	_ Function          = (*ByWeight)(nil)
	_ Function          = (*ByWait)(nil)
	_ Function          = (*AddPrediction)(nil)
	_ caddy.Provisioner = (*ByWindow)(nil)
	_ caddy.Provisioner = (*BySample)(nil)
)
