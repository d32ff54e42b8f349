// Package bench is the real-process quality benchmark of caddy-backhand:
// simulated application servers inside the harness, each behind a real
// Caddy node built with the plugin, an open-loop load generator, and the
// contenders (backhand as the README configures it, as a dedicated
// balancer and as the directive on every node, backhand on nodes told
// what the harness knows, other chains, Caddy's built-in policies,
// HAProxy, nginx and an oracle) run one after the other on the same app
// servers. See cmd/bhbench and BENCHMARKS.md.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// Options is one benchmark run.
type Options struct {
	Scenarios  []Scenario
	Contenders []Contender
	Loads      []float64 // fractions of Scenario.Capacity

	Warmup     time.Duration // discarded at the start of every cell
	Measure    time.Duration // measured per cell
	MeasureMid time.Duration // measured per cell at load 0.7, the headline load; 0 = Measure

	// Rounds runs every contender this many times at each load, in a
	// rotating order, and pools the rounds' samples into one cell; the
	// spread of the rounds' p99 shows how much a single run can be
	// trusted. Default 1.
	Rounds int

	MaxOutstanding int           // load generator bound; default 2000
	Timeout        time.Duration // per request; default 10s
	Seed           uint64        // load generator seed; 0 = random

	// Block picks the addresses: 0 (the default) puts the nodes on
	// 127.0.0.11-14 and the entries on 127.0.0.21-23, admin APIs on ports
	// 12001-12023; block b moves them to 127.0.0.(10+100b+i) and ports
	// 12000+100b+... . The test uses block 1, so that it does not collide
	// with a benchmark running at the same time.
	Block int

	// Ports, when not 0, is the first of 35 consecutive ports (portBlock)
	// the run listens on in place of the fixed ones (12000+100b+...,
	// 14445, 18000-18090). The test takes a free block (cluster.FreeBlock
	// on runHosts), so that two runs of it at once do not meet.
	Ports int

	Caddy   string // Caddy binary; empty = build cmd/caddy
	WorkDir string // for configs and logs; empty = a temporary directory, removed after
	Log     io.Writer
}

// measureFor is the measurement length at load.
func (o *Options) measureFor(load float64) time.Duration {
	if o.MeasureMid > 0 && load > 0.695 && load < 0.705 {
		return o.MeasureMid
	}
	return o.Measure
}

// Results is what a run produced.
type Results struct {
	Started    time.Time      `json:"started"`
	Duration   time.Duration  `json:"duration_ns"`
	Scenarios  []Scenario     `json:"scenarios"`
	Contenders []Contender    `json:"contenders"`
	Loads      []float64      `json:"loads"`
	Rounds     int            `json:"rounds,omitempty"`
	Warmup     time.Duration  `json:"warmup_ns"`
	Measure    time.Duration  `json:"measure_ns"`
	MeasureMid time.Duration  `json:"measure_mid_ns"`
	Cells      []Cell         `json:"cells"`
	Machine    Machine        `json:"machine"`
	Meta       map[string]any `json:"meta,omitempty"`
}

// Cell returns the cell of scenario, contender and load, if it ran.
func (r *Results) Cell(scenario, contender string, load float64) (Cell, bool) {
	for _, c := range r.Cells {
		if c.Scenario == scenario && c.Contender == contender && c.Load == load && c.Skipped == "" {
			return c, true
		}
	}
	return Cell{}, false
}

// Run runs every scenario at every load with every contender.
func Run(ctx context.Context, o Options) (*Results, error) {
	if o.MaxOutstanding == 0 {
		o.MaxOutstanding = 2000
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	o.Rounds = max(o.Rounds, 1)
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Block < 0 || o.Block > 1 {
		return nil, fmt.Errorf("address block %d: want 0 or 1", o.Block)
	}
	for _, c := range o.Contenders {
		if err := c.check(); err != nil {
			return nil, err
		}
	}
	if o.Ports != 0 && (o.Ports < 1 || o.Ports+portBlock-1 > 65535) {
		return nil, fmt.Errorf("port block %d: want 1-%d", o.Ports, 65535-portBlock+1)
	}
	placePorts(o.Block, o.Ports)
	res := &Results{
		Started: time.Now(), Scenarios: o.Scenarios, Contenders: o.Contenders, Loads: o.Loads, Rounds: o.Rounds,
		Warmup: o.Warmup, Measure: o.Measure, MeasureMid: o.MeasureMid,
	}
	dir := o.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "bhbench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	bin := o.Caddy
	if bin == "" {
		fmt.Fprintf(o.Log, "building cmd/caddy ...\n")
		b, err := cluster.Build(ctx, dir)
		if err != nil {
			return nil, err
		}
		bin = b
	}
	res.Machine = DescribeMachine(ctx, bin)
	var kb [16]byte
	_, _ = rand.Read(kb[:])
	key := hex.EncodeToString(kb[:])

	seed := o.Seed
	for _, sc := range o.Scenarios {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		e := &env{sc: sc, dir: filepath.Join(dir, sc.Name), bin: bin, key: key, log: o.Log}
		if err := os.MkdirAll(e.dir, 0o755); err != nil {
			return res, err
		}
		err := e.start(ctx)
		if err == nil {
			for _, load := range o.Loads {
				var cells []Cell
				cells, err = e.runLoad(ctx, load, o, &seed)
				res.Cells = append(res.Cells, cells...)
				if err != nil || ctx.Err() != nil {
					break
				}
			}
		}
		e.stop()
		if err != nil {
			res.Duration = time.Since(res.Started)
			return res, err
		}
	}
	res.Duration = time.Since(res.Started)
	return res, ctx.Err()
}

// env is one scenario's running cluster: the app servers and their Caddy
// nodes.
type env struct {
	sc   Scenario
	dir  string
	bin  string
	key  string
	log  io.Writer
	apps []*App

	mu      sync.Mutex
	nodes   []*proc // index 0 = node1
	profile Profile // the nodes' current configuration
	fresh   bool    // the nodes have just started: no cell has run on them
	seq     int     // for unique process directories
}

func (e *env) appConfig(i int) AppConfig {
	return AppConfig{
		Name:      nodeName(i),
		Addr:      appAddr(i),
		AgentAddr: hostPort(nodeHost(i), agentPort),
		Workers:   e.sc.Workers,
		Speed:     e.sc.Speeds[i-1],
		Mean:      e.sc.Mean,
		Dist:      e.sc.Dist,
	}
}

// maxEntries is the number of entry addresses the nodes announce to.
const maxEntries = 3

// start starts the app servers and their Caddy nodes and waits for them.
// The nodes start in the minimal profile, the headline's, so that whatever
// they measure about themselves at start-up they measure in the
// scenario's conditions (see Scenario.BusyStart).
func (e *env) start(ctx context.Context) error {
	fmt.Fprintf(e.log, "== scenario %s: %s; capacity for proxied traffic %.0f req/s\n", e.sc.Name, e.sc.Desc, e.sc.Capacity())
	n := e.sc.Nodes()
	e.nodes = make([]*proc, n)
	e.profile, e.fresh = ProfileMinimal, true
	for i := 1; i <= n; i++ {
		a := NewApp(e.appConfig(i))
		if e.sc.HogNode == i {
			a.SetSlowdown(e.sc.HogSlowdown)
		}
		e.apps = append(e.apps, a)
		if err := a.Start(); err != nil {
			return err
		}
	}
	stopBurn := func() {}
	if e.sc.BusyStart {
		fmt.Fprintf(e.log, "   starting the nodes with every CPU busy\n")
		stopBurn = burnCPUs()
	}
	err := e.startNodes(ctx)
	stopBurn()
	if err != nil {
		return err
	}
	e.logRatings(ctx)
	// Warm the fresh nodes up (connection pools, latency averages, the
	// apps' own timing) so that the first cell does not pay for it: half
	// the capacity straight to the node sites, discarded.
	var urls []string
	for i := 1; i <= n; i++ {
		urls = append(urls, "http://"+siteAddr(i)+"/")
	}
	Generate(ctx, LoadSpec{URLs: urls, Rate: 0.5 * e.sc.Capacity(), Measure: scenarioWarmup,
		MaxOutstanding: 2000, Timeout: 10 * time.Second, Seed: 1}, nodeIndex{}, time.Now())
	ictx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for _, a := range e.apps {
		a.WaitIdle(ictx)
	}
	return ctx.Err()
}

// scenarioWarmup is the discarded load at the start of each scenario.
const scenarioWarmup = 5 * time.Second

// stop stops every node and app.
func (e *env) stop() {
	e.mu.Lock()
	nodes := slices.Clone(e.nodes)
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range nodes {
		wg.Go(func() { p.stop(3 * time.Second) })
	}
	wg.Wait()
	for _, a := range e.apps {
		a.Kill()
	}
}

// caddyDir makes a fresh directory for one Caddy process.
func (e *env) procDir(name string) (string, error) {
	e.mu.Lock()
	e.seq++
	d := filepath.Join(e.dir, name+"-"+strconv.Itoa(e.seq))
	e.mu.Unlock()
	return d, os.MkdirAll(d, 0o755)
}

// startCaddy runs Caddy on caddyfile in a new directory.
func (e *env) startCaddy(name, caddyfile string) (*proc, error) {
	d, err := e.procDir(name)
	if err != nil {
		return nil, err
	}
	cf := filepath.Join(d, "Caddyfile")
	if err := os.WriteFile(cf, []byte(caddyfile), 0o644); err != nil {
		return nil, err
	}
	env := []string{"XDG_CONFIG_HOME=" + filepath.Join(d, "config"), "XDG_DATA_HOME=" + filepath.Join(d, "data")}
	return startProc(d, name, env, e.bin, "run", "--config", cf, "--adapter", "caddyfile")
}

// startNodes starts every node's Caddy at once and waits until each
// serves through its app and sees the others.
func (e *env) startNodes(ctx context.Context) error {
	n := e.sc.Nodes()
	for i := 1; i <= n; i++ {
		if err := e.startNode(i); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		if err := e.waitNode(ctx, i); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		if err := e.waitNodePeers(ctx, i, time.Time{}); err != nil {
			return err
		}
	}
	return nil
}

// startNode starts node i's Caddy (1-based) in the current profile.
func (e *env) startNode(i int) error {
	p, err := e.startCaddy(nodeName(i), e.nodeCaddyfile(i, e.currentProfile()))
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.nodes[i-1] = p
	e.mu.Unlock()
	return nil
}

func (e *env) node(i int) *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nodes[i-1]
}

// waitNode waits until node i's site answers through its app.
func (e *env) waitNode(ctx context.Context, i int) error {
	return e.node(i).waitHTTP(ctx, "http://"+siteAddr(i)+"/", 20*time.Second)
}

// aliveApps counts the apps that are serving.
func (e *env) aliveApps() int {
	n := 0
	for _, a := range e.apps {
		if a.Alive() {
			n++
		}
	}
	return n
}

// startEntries starts contender c's entry points and waits until they
// proxy; stop stops them. The peers contender has none: the nodes are its
// entry points.
func (e *env) startEntries(ctx context.Context, c Contender) (stop func(), err error) {
	entries := e.sc.Entries
	if c.Kind == KindPeers {
		return func() {}, nil
	}
	if c.Kind == KindOracle {
		o, err := StartOracle(e.apps, entries)
		if err != nil {
			return nil, err
		}
		return o.Stop, nil
	}
	var procs []*proc
	stop = func() {
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Go(func() { p.stop(3 * time.Second) })
		}
		wg.Wait()
	}
	for j := 1; j <= entries; j++ {
		name := c.Name + "-" + entryName(j)
		var p *proc
		switch c.Kind {
		case KindBackhand:
			p, err = e.startCaddy(name, backhandEntryCaddyfile(j, c, e.key, e.sc.Nodes(), maxEntries))
		case KindCaddy:
			p, err = e.startCaddy(name, caddyEntryCaddyfile(j, c, e.sc.Nodes()))
		case KindHAProxy:
			p, err = e.startHAProxy(name, j, c)
		case KindNginx:
			p, err = e.startNginx(name, j, c)
		default:
			err = fmt.Errorf("unknown contender kind %q", c.Kind)
		}
		if err != nil {
			stop()
			return nil, err
		}
		procs = append(procs, p)
	}
	for j, p := range procs {
		if c.Kind == KindBackhand {
			if err := e.waitPeers(ctx, p, adminBase+20+j+1); err != nil {
				stop()
				return nil, err
			}
		}
		if err := p.waitHTTP(ctx, "http://"+entryAddr(j+1)+"/", 20*time.Second); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// waitPeers waits until a backhand entry sees every serving app node live.
func (e *env) waitPeers(ctx context.Context, p *proc, admin int) error {
	return waitView(ctx, p, admin, func(v *cluster.PeersView) error {
		if live, want := liveTagged(v, "app"), e.aliveApps(); live < want {
			return fmt.Errorf("sees %d of %d app nodes: %s", live, want, v.Summary())
		}
		return nil
	})
}

func (e *env) startHAProxy(name string, j int, c Contender) (*proc, error) {
	bin, err := lookTool("haproxy")
	if err != nil {
		return nil, err
	}
	d, err := e.procDir(name)
	if err != nil {
		return nil, err
	}
	cfgs := make([]AppConfig, e.sc.Nodes())
	for i := range cfgs {
		cfgs[i] = e.appConfig(i + 1)
	}
	cf := filepath.Join(d, "haproxy.cfg")
	if err := os.WriteFile(cf, []byte(haproxyConfig(j, c, cfgs)), 0o644); err != nil {
		return nil, err
	}
	return startProc(d, name, nil, bin, "-db", "-f", cf)
}

func (e *env) startNginx(name string, j int, c Contender) (*proc, error) {
	bin, err := lookTool("nginx")
	if err != nil {
		return nil, err
	}
	d, err := e.procDir(name)
	if err != nil {
		return nil, err
	}
	cf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(cf, []byte(nginxConfig(j, c, e.sc.Nodes(), d)), 0o644); err != nil {
		return nil, err
	}
	return startProc(d, name, nil, bin, "-p", d, "-e", filepath.Join(d, "error.log"), "-c", cf)
}

// available says why contender c cannot run here, or "" if it can.
func available(c Contender) string {
	switch c.Kind {
	case KindHAProxy:
		if _, err := lookTool("haproxy"); err != nil {
			return "haproxy is not installed (Debian package haproxy)"
		}
	case KindNginx:
		if _, err := lookTool("nginx"); err != nil {
			return "nginx is not installed (Debian package nginx-light or nginx)"
		}
	}
	return ""
}

// runLoad runs every contender at load, o.Rounds times each in a rotating
// order (so that none always runs first, on the coolest machine), and
// pools each contender's rounds into its cell.
func (e *env) runLoad(ctx context.Context, load float64, o Options, seed *uint64) ([]Cell, error) {
	n := len(o.Contenders)
	rounds := make([][][]Sample, n)
	skipped := make([]string, n)
	for r := range o.Rounds {
		for k := range n {
			i := (k + r) % n
			c := o.Contenders[i]
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if skipped[i] != "" {
				continue
			}
			if skipped[i] = available(c); skipped[i] != "" {
				continue
			}
			*seed++
			samples, err := e.runOnce(ctx, c, load, o, *seed)
			if err != nil {
				return nil, fmt.Errorf("%s / %s / %.0f%%: %w", e.sc.Name, c.Name, load*100, err)
			}
			rounds[i] = append(rounds[i], samples)
			if o.Rounds > 1 {
				one := summarize(samples, e.sc.Nodes(), o.measureFor(load))
				fmt.Fprintf(e.log, "     round %d/%d  %-24s p99 %7.1f ms\n", r+1, o.Rounds, c.Name, one.P99)
			}
		}
	}
	cells := make([]Cell, n)
	for i, c := range o.Contenders {
		if skipped[i] != "" {
			cells[i].Skipped = skipped[i]
		} else {
			cells[i] = summarizeRounds(rounds[i], e.sc.Nodes(), o.measureFor(load))
		}
		cells[i].Scenario, cells[i].Contender, cells[i].Load, cells[i].Rate = e.sc.Name, c.Name, load, load*e.sc.Capacity()
		e.logCell(cells[i])
	}
	return cells, nil
}

// runOnce runs contender c at load in the scenario once and returns the
// load generator's samples.
func (e *env) runOnce(ctx context.Context, c Contender, load float64, o Options, seed uint64) ([]Sample, error) {
	measure := o.measureFor(load)
	rate := load * e.sc.Capacity()
	settle, err := e.readyFor(ctx, c)
	if err != nil {
		return nil, err
	}
	warmup := o.Warmup + settle
	stop, err := e.startEntries(ctx, c)
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()

	urls := e.clientURLs(c)
	nodes := nodeIndex{}
	for i := 1; i <= e.sc.Nodes(); i++ {
		nodes[nodeName(i)] = i - 1
	}
	start := time.Now().Add(20 * time.Millisecond)
	measureStart := start.Add(warmup)

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var evErr error
	wg.Go(func() { evErr = e.events(cctx, measureStart, measure) })
	for _, spec := range e.sideLoads(o, warmup, measure, seed) {
		wg.Go(func() { Generate(cctx, spec, nodes, start) })
	}
	spec := LoadSpec{
		URLs: urls, Rate: rate, Warmup: warmup, Measure: measure,
		MaxOutstanding: o.MaxOutstanding, Timeout: o.Timeout, Seed: seed, Record: true,
	}
	samples := Generate(cctx, spec, nodes, start)
	wg.Wait()
	stop()
	stopped = true
	if err := e.restore(ctx); err != nil {
		return nil, err
	}
	if evErr != nil && ctx.Err() == nil {
		return nil, evErr
	}
	return samples, ctx.Err()
}

// clientURLs are where contender c's clients send their requests: the
// entry points, or for the peers contender the first Entries node sites.
func (e *env) clientURLs(c Contender) []string {
	var urls []string
	for j := 1; j <= e.sc.Entries; j++ {
		if c.Kind == KindPeers {
			urls = append(urls, "http://"+siteAddr(j)+"/")
		} else {
			urls = append(urls, "http://"+entryAddr(j)+"/")
		}
	}
	return urls
}

// sideLoads are the scenario's traffic besides the clients': bypass
// traffic to a node's site and hidden traffic to a node's app server,
// unrecorded. Both carry the bypass header, so that the oracle counts them
// in the app's queue, as it counts everything it did not send itself.
func (e *env) sideLoads(o Options, warmup, measure time.Duration, seed uint64) []LoadSpec {
	var specs []LoadSpec
	side := func(url string, rate float64, seed uint64) {
		specs = append(specs, LoadSpec{
			URLs: []string{url}, Rate: rate,
			Warmup: warmup, Measure: measure, MaxOutstanding: o.MaxOutstanding, Timeout: o.Timeout,
			Header: http.Header{bypassHeader: {"1"}}, Seed: seed,
		})
	}
	if n := e.sc.BypassNode; n > 0 {
		side("http://"+siteAddr(n)+"/", e.sc.bypassRate(), seed^0xb1a5)
	}
	if n := e.sc.HiddenNode; n > 0 {
		side("http://"+appAddr(n)+"/", e.sc.hiddenRate(), seed^0x41dde)
	}
	return specs
}

// events injects the scenario's transient trouble relative to the
// measurement window.
func (e *env) events(ctx context.Context, measureStart time.Time, measure time.Duration) error {
	type ev struct {
		at time.Duration
		do func() error
	}
	var evs []ev
	if s := e.sc.SlowNode; s > 0 {
		a := e.apps[s-1]
		evs = append(evs,
			ev{measure / 3, func() error { a.SetSlowdown(e.sc.SlowFactor); return nil }},
			ev{2 * measure / 3, func() error { a.SetSlowdown(1); return nil }})
	}
	if d := e.sc.DeathNode; d > 0 {
		a := e.apps[d-1]
		evs = append(evs,
			ev{measure / 3, func() error {
				e.node(d).kill()
				a.Kill()
				return nil
			}},
			ev{2 * measure / 3, func() error {
				if err := a.Start(); err != nil {
					return err
				}
				return e.startNode(d)
			}})
	}
	for _, v := range evs {
		t := time.NewTimer(time.Until(measureStart.Add(v.at)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := v.do(); err != nil {
			return err
		}
	}
	return nil
}

// restore undoes transient trouble after a cell and waits until the apps
// are idle, so that cells start alike.
func (e *env) restore(ctx context.Context) error {
	if s := e.sc.SlowNode; s > 0 {
		e.apps[s-1].SetSlowdown(1)
	}
	if d := e.sc.DeathNode; d > 0 {
		a := e.apps[d-1]
		if !a.Alive() {
			if err := a.Start(); err != nil {
				return err
			}
		}
		if p := e.node(d); p == nil || p.exited() {
			if err := e.startNode(d); err != nil {
				return err
			}
		}
		if err := e.waitNode(ctx, d); err != nil {
			return err
		}
	}
	ictx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for _, a := range e.apps {
		a.WaitIdle(ictx)
	}
	return nil
}

func (e *env) logCell(c Cell) {
	if c.Skipped != "" {
		fmt.Fprintf(e.log, "   %-24s %3.0f%%  skipped: %s\n", c.Contender, c.Load*100, c.Skipped)
		return
	}
	fmt.Fprintf(e.log, "   %-24s %3.0f%%  %6.0f req/s  p50 %6.1f  p90 %6.1f  p99 %7.1f  p99.9 %7.1f ms  errors %4d  share %s  p50 by node %s%s\n",
		c.Contender, c.Load*100, c.Throughput, c.P50, c.P90, c.P99, c.P999, c.Errors, fmtShare(c.Share), fmtMillis(c.NodeP50), fmtRounds(c.P99Rounds)+fmtThirds(c.ThirdsP99))
}

// fmtMillis formats figures in milliseconds as a/b/c.
func fmtMillis(ms []float64) string {
	out := make([]string, len(ms))
	for i, x := range ms {
		out[i] = "-" // served none
		if x > 0 {
			out[i] = strconv.FormatFloat(x, 'f', 1, 64)
		}
	}
	return strings.Join(out, "/")
}

func fmtShare(s []float64) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += "/"
		}
		out += strconv.FormatFloat(x*100, 'f', 0, 64)
	}
	return out
}

// fmtThirds shows the p99 of each third of the measurement.
func fmtThirds(p99s []float64) string {
	if len(p99s) != 3 {
		return ""
	}
	return fmt.Sprintf("  p99 by third %.0f/%.0f/%.0f", p99s[0], p99s[1], p99s[2])
}

// fmtRounds shows the rounds' p99 range, if there was more than one.
func fmtRounds(p99s []float64) string {
	if len(p99s) < 2 {
		return ""
	}
	return fmt.Sprintf("  p99 per round %.1f-%.1f", slices.Min(p99s), slices.Max(p99s))
}
