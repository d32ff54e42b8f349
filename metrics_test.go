package backhand

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// scrape gathers c from a pedantic registry, as Caddy's, and returns the
// families by name.
func scrape(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sample returns the value of the series of family name with the given
// label (or the only series, with label ""), and whether it exists.
func sample(mfs map[string]*dto.MetricFamily, name, label, value string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if label != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == label && l.GetValue() == value }) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func TestMetricsAfterScript(t *testing.T) {
	app, at := scripted(t)
	mfs := scrape(t, newCollector(func() *App { return app }, func() time.Time { return at }))

	type want struct {
		name, label, value string
		v                  float64
	}
	const p = "caddy_backhand_"
	wants := []want{
		{p + "announcements_sent_total", "", "", 4},
		{p + "announcements_received_total", "", "", 6},
		{p + "announcements_rejected_total", "reason", "replay", 1},
		{p + "announcements_rejected_total", "reason", "bad_mac", 1},
		{p + "announcements_rejected_total", "reason", "truncated", 1},
		{p + "announcements_rejected_total", "reason", "wrong_cluster", 1},
		{p + "announcements_rejected_total", "reason", "acl", 0},
		{p + "peers", "state", "self", 1},
		{p + "peers", "state", "live", 2}, // alpha and delta: metrics have no slow-start window
		{p + "peers", "state", "draining", 1},
		{p + "peers", "state", "stale", 1},
		{p + "selections_total", "outcome", "local", 2},
		{p + "selections_total", "outcome", "forwarded", 3},
		{p + "selections_total", "outcome", "redirected", 0},
		{p + "selections_total", "outcome", "fallback", 1},
		{p + "selections_total", "outcome", "failed_over", 0},
		{p + "forwarded_total", "peer", "alpha", 3},
		{p + "forwarded_total", "peer", "bravo", 0},
		{p + "draining", "", "", 0},
		{p + "peer_load", "peer", "alpha", 1.5},
		{p + "peer_cpus", "peer", "alpha", 4},
		{p + "peer_cpu_idle", "peer", "alpha", 0.25},
		{p + "peer_busy", "peer", "alpha", 3},
		{p + "peer_capacity", "peer", "alpha", 100},
		{p + "peer_mem_available_bytes", "peer", "alpha", 2 << 30},
		{p + "peer_mem_total_bytes", "peer", "alpha", 8 << 30},
		{p + "peer_latency_seconds", "peer", "alpha", 0.0125},
		{p + "peer_speed", "peer", "alpha", 1200},
		{p + "peer_age_seconds", "peer", "alpha", 0.5},
		{p + "peer_age_seconds", "peer", "charlie", 10},
		{p + "peer_in_flight", "peer", "alpha", 1},
		{p + "peer_observed_latency_seconds", "peer", "alpha", 0.04},
		{p + "peer_speed", "peer", "me", 1000},
	}
	for _, w := range wants {
		got, ok := sample(mfs, w.name, w.label, w.value)
		if !ok || math.Abs(got-w.v) > 1e-9 {
			t.Errorf("%s{%s=%q} = %v (present %v), want %v", w.name, w.label, w.value, got, ok, w.v)
		}
	}
	if _, ok := sample(mfs, p+"peer_observed_latency_seconds", "peer", "bravo"); ok {
		t.Errorf("observed latency of a peer this node never sent to should be absent")
	}
	for name, n := range map[string]int{
		p + "announcements_rejected_total": int(numRejectReasons), p + "peers": 4, p + "selections_total": int(numOutcomes),
		p + "forwarded_total": 5, p + "peer_load": 5, p + "peer_observed_latency_seconds": 1,
	} {
		if got := len(mfs[name].GetMetric()); got != n {
			t.Errorf("%s has %d series, want %d", name, got, n)
		}
	}
}

func TestMetricsChainHistogram(t *testing.T) {
	app, at := scripted(t)
	mfs := scrape(t, newCollector(func() *App { return app }, func() time.Time { return at }))
	mf := mfs["caddy_backhand_chain_duration_seconds"]
	if mf.GetType() != dto.MetricType_HISTOGRAM || len(mf.GetMetric()) != 1 {
		t.Fatalf("chain duration: %v", mf)
	}
	h := mf.GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 || math.Abs(h.GetSampleSum()-0.0020031) > 1e-12 {
		t.Errorf("count %d sum %v, want 3 and 0.0020031", h.GetSampleCount(), h.GetSampleSum())
	}
	cum := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		cum[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	// 100ns, 3µs and 2ms: cumulative counts by upper bound.
	for ub, n := range map[float64]uint64{250e-9: 1, 2.5e-6: 1, 5e-6: 2, 1e-3: 2} {
		if cum[ub] != n {
			t.Errorf("bucket le=%g: %d, want %d (all: %v)", ub, cum[ub], n, cum)
		}
	}
	if len(cum) != len(chainBuckets) {
		t.Errorf("%d buckets, want %d", len(cum), len(chainBuckets))
	}
}

// TestMetricsPeerCardinality checks that the peer label has at most
// max_peers values, however many names are announced.
func TestMetricsPeerCardinality(t *testing.T) {
	app, at := scripted(t)
	an := &announcer{app: app, node: app.node, logger: app.logger, rejectLog: rate.NewLimiter(rate.Inf, 1)}
	for i := range 100 {
		a := wire.Announcement{Cluster: "demo", Node: fmt.Sprintf("flood-%d", i), Incarnation: 1, Seq: 1, SentAt: at.UnixNano(), Advertise: "127.0.0.9:80"}
		b, err := a.Encode(nil, wire.NewSigner(scriptKey))
		if err != nil {
			t.Fatal(err)
		}
		an.receive(b, srcAddr, []*wire.Signer{wire.NewSigner(scriptKey)}, new(wire.Announcement), at)
	}
	mfs := scrape(t, newCollector(func() *App { return app }, func() time.Time { return at }))
	const maxPeers = 8 // scripted's table limit
	if n := len(app.node.table.Peers()); n > maxPeers {
		t.Fatalf("the table holds %d peers, more than max_peers %d", n, maxPeers)
	}
	for name, mf := range mfs {
		if strings.HasPrefix(name, "caddy_backhand_peer_") || name == "caddy_backhand_forwarded_total" {
			if n := len(mf.GetMetric()); n > maxPeers {
				t.Errorf("%s has %d series, more than max_peers %d", name, n, maxPeers)
			}
		}
	}
	if v, _ := sample(mfs, "caddy_backhand_announcements_rejected_total", "reason", "table_full"); v == 0 {
		t.Errorf("the flood should have been rejected as table_full")
	}
}

func TestMetricsWithoutRunningApp(t *testing.T) {
	mfs := scrape(t, newCollector(func() *App { return nil }, time.Now))
	if len(mfs) != 0 {
		t.Errorf("no app, yet metrics %v", slices.Collect(maps.Keys(mfs)))
	}
}

// TestMetricsRegisterEveryConfig checks the registration idiom: every
// config load has a fresh registry and gets the one collector; registering
// twice with one registry is harmless.
func TestMetricsRegisterEveryConfig(t *testing.T) {
	for range 2 {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		registerMetrics(ctx)
		registerMetrics(ctx) // AlreadyRegisteredError, ignored
		var are prometheus.AlreadyRegisteredError
		if err := ctx.GetMetricsRegistry().Register(theCollector); !errors.As(err, &are) {
			t.Errorf("collector not registered with this config's registry: %v", err)
		}
		if _, err := ctx.GetMetricsRegistry().Gather(); err != nil {
			t.Error(err)
		}
		cancel()
	}
}
