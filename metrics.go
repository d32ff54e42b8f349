package backhand

import (
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The Prometheus metrics of the backhand app. One collector per process
// reads the running app's counters at scrape time, so the request path
// touches no Prometheus code. Caddy gives every config load a fresh
// registry; the collector is registered with each, and its values carry
// over because they live in the process-level node state.
//
// Labels are bounded: reason (14 values), state (4), outcome (5),
// direction (2), address (the vip option's set, at most 64), and
// peer, whose values are the names in the peer table, which max_peers
// bounds (self included; a silent peer leaves the series when it is
// evicted, after evict_after).

const metricsNamespace = "caddy_backhand_"

// peerGauge is one per-peer gauge and how to read it from a peer row.
type peerGauge struct {
	desc *prometheus.Desc
	get  func(p *PeerView) float64
}

// collector is the backhand app's prometheus.Collector.
type collector struct {
	sent, received, rejected *prometheus.Desc
	peers, selections        *prometheus.Desc
	forwarded, chain         *prometheus.Desc
	draining, observed       *prometheus.Desc
	vipMoves, vipHolders     *prometheus.Desc
	vipHolder                *prometheus.Desc
	perPeer                  []peerGauge

	// app returns the app to report on, nil when none runs; now is the
	// clock that ages are measured with.
	app func() *App
	now func() time.Time
}

// theCollector is built once per process: a registry rejects a second
// collector with the same descriptors, but accepts the same one again.
var theCollector = newCollector(latestApp.Load, time.Now)

// registerMetrics registers the collector with this config's registry.
func registerMetrics(ctx caddy.Context) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(theCollector); err != nil && !errors.As(err, &are) {
		ctx.Logger().Error("registering the backhand metrics", zap.Error(err))
	}
}

func newCollector(app func() *App, now func() time.Time) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(metricsNamespace+name, help, labels, nil)
	}
	gauge := func(name, help string, get func(p *PeerView) float64) peerGauge {
		return peerGauge{d("peer_"+name, help, "peer"), get}
	}
	return &collector{
		app:        app,
		now:        now,
		sent:       d("announcements_sent_total", "Announcements this node has sent (one per interval, to every destination)."),
		received:   d("announcements_received_total", "Announcements from peers accepted into the peer table."),
		rejected:   d("announcements_rejected_total", "Datagrams rejected, by reason.", "reason"),
		peers:      d("peers", "Peers in the table by state (self, live, stale, draining).", "state"),
		selections: d("selections_total", "Balancing decisions by outcome (local, forwarded, redirected, fallback, failed_over).", "outcome"),
		forwarded:  d("forwarded_total", "Requests this node has proxied to each peer.", "peer"),
		chain:      d("chain_duration_seconds", "Time one run of the candidacy chain took, measured on one run in 8."),
		draining:   d("draining", "1 if this node announces itself as draining from its next announcement on."),
		observed:   d("peer_observed_latency_seconds", "This node's peak-EWMA estimate of the peer's response time to its proxied requests; absent until it sent one.", "peer"),
		vipMoves:   d("vip_moves_total", "Virtual addresses this process added (acquired) or removed (released).", "direction"),
		vipHolders: d("vip_holders", "Nodes holding each virtual address, as this node sees them: 1 is healthy, 0 unserved, 2 a handover or a partition.", "address"),
		vipHolder:  d("vip_holder", "1 for each virtual address and node that holds it, as this node sees them.", "address", "node"),
		perPeer: []peerGauge{
			gauge("load", "Announced load average.", func(p *PeerView) float64 { return p.Load }),
			gauge("cpus", "Announced CPUs (or the cgroup's CPU quota).", func(p *PeerView) float64 { return p.CPUs }),
			gauge("cpu_idle", "Announced CPU idle share over the last interval, 0-1.", func(p *PeerView) float64 { return p.CPUIdle }),
			gauge("busy", "Announced requests in flight.", func(p *PeerView) float64 { return float64(p.Busy) }),
			gauge("capacity", "Announced capacity (requests at once).", func(p *PeerView) float64 { return float64(p.Capacity) }),
			gauge("mem_available_bytes", "Announced available memory.", func(p *PeerView) float64 { return float64(p.MemAvail) }),
			gauge("mem_total_bytes", "Announced total memory.", func(p *PeerView) float64 { return float64(p.MemTotal) }),
			gauge("latency_seconds", "Announced response-time EWMA of the peer's own requests.", func(p *PeerView) float64 { return msToSeconds(p.LatencyMS) }),
			gauge("speed", "Announced speed rating (1000 = reference core).", func(p *PeerView) float64 { return float64(p.Speed) }),
			gauge("age_seconds", "Time since the peer's last announcement arrived.", func(p *PeerView) float64 { return msToSeconds(float64(p.AgeMS)) }),
			gauge("in_flight", "Requests this node has in flight to the peer.", func(p *PeerView) float64 { return float64(p.InFlightFromThisNode) }),
		},
	}
}

// Describe sends every descriptor, so that Caddy's pedantic registry can
// check what Collect sends.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sent, c.received, c.rejected, c.peers, c.selections, c.forwarded, c.chain, c.draining, c.observed, c.vipMoves, c.vipHolders, c.vipHolder} {
		ch <- d
	}
	for _, g := range c.perPeer {
		ch <- g.desc
	}
}

// Collect reads the running app's counters; without one it sends nothing.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	app := c.app()
	if app == nil {
		return
	}
	v := peersView(app, c.now())
	n := app.node
	counter := func(d *prometheus.Desc, val float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, val, labels...)
	}
	gauge := func(d *prometheus.Desc, val float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, val, labels...)
	}
	counter(c.sent, float64(v.Sent))
	counter(c.received, float64(v.Accepted))
	for r := range numRejectReasons {
		counter(c.rejected, float64(v.Rejected[r.String()]), r.String())
	}
	for o := range numOutcomes {
		counter(c.selections, float64(v.Decisions[o.String()]), o.String())
	}
	gauge(c.draining, boolFloat(v.Draining))
	c.collectStates(ch, v.Peers)
	for i := range v.Peers {
		p := &v.Peers[i]
		counter(c.forwarded, float64(p.SentByThisNode), p.Name)
		for _, g := range c.perPeer {
			gauge(g.desc, g.get(p), p.Name)
		}
		if p.ObservedLatencyMS != nil {
			gauge(c.observed, msToSeconds(*p.ObservedLatencyMS), p.Name)
		}
	}
	ch <- chainHistogram(c.chain, &n.decisions)
	if v.VIP != nil {
		counter(c.vipMoves, float64(v.VIP.Acquired), "acquired")
		counter(c.vipMoves, float64(v.VIP.Released), "released")
		for _, a := range v.VIP.Addresses {
			gauge(c.vipHolders, float64(len(a.Holders)), a.Address)
			for _, h := range a.Holders {
				gauge(c.vipHolder, 1, a.Address, h)
			}
		}
	}
}

// peerStates are the values of the peers metric's state label, all sent
// on every scrape so that a state that empties reads 0, not absent.
var peerStates = [...]string{"self", "live", "stale", "draining"}

func (c *collector) collectStates(ch chan<- prometheus.Metric, peers []PeerView) {
	counts := make(map[string]int, len(peerStates))
	for i := range peers {
		counts[peers[i].State]++
	}
	for _, s := range peerStates {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(counts[s]), s)
	}
}

// chainHistogram turns the lock-free per-bucket counts into a cumulative
// Prometheus histogram. The count is the buckets' own total, so the
// histogram is always consistent; the sum may be a few runs ahead.
func chainHistogram(desc *prometheus.Desc, d *decisions) prometheus.Metric {
	buckets := make(map[float64]uint64, len(chainBuckets))
	var cum uint64
	for i, ub := range chainBuckets {
		cum += d.buckets[i].Load()
		buckets[ub.Seconds()] = cum
	}
	cum += d.buckets[len(chainBuckets)].Load()
	sum := time.Duration(d.sumNanos.Load()).Seconds()
	return prometheus.MustNewConstHistogram(desc, cum, sum, buckets)
}

// ms converts milliseconds to seconds.
func msToSeconds(v float64) float64 { return v / 1000 }

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Interface guards
var _ prometheus.Collector = (*collector)(nil)
