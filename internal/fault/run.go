package fault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// Options are one harness run's settings.
type Options struct {
	Faults      []string // fault names (see Faults); default: DefaultFaults
	Deployments []string // Directive, Balancer

	Nodes   int           // app nodes (the faulty one is the last)
	Workers int           // per application
	Mean    time.Duration // mean service time
	Load    float64       // share of the nodes' capacity offered
	Post    float64       // share of POSTs
	Timeout time.Duration // the clients' timeout

	MaxOutstanding int // requests in flight at most; later arrivals are dropped (and counted)
	// BrowserResend makes the clients resend a request, whatever its
	// method, when a kept-alive connection broke before any response
	// header, as browsers and curl do (Load.BrowserResend).
	BrowserResend bool
	// FailureDetails is how many failed requests the notes describe (the
	// client's error and the nodes' log lines naming the request).
	FailureDetails int

	Interval, MaxAge time.Duration // announcement interval, max_age (0: plugin defaults)
	GracePeriod      time.Duration // Caddy's grace_period
	// Handoff puts the backhand_handoff listener wrapper on every Caddy's
	// servers, so that a reload answers the requests the old server read
	// unanswered (README, "A reload under load").
	Handoff         bool
	BalancerRetries int // lb_retries of the balancer
	// ResponseHeaderTimeout, if set, is the response_header_timeout of
	// the transport that forwards to peers (the directive's block, the
	// balancer's reverse_proxy): what bounds a request sent to a node
	// that hangs. The hang-bounded fault sets it (default 2s).
	ResponseHeaderTimeout time.Duration

	Warmup, Before, After time.Duration // phases around every fault

	DeathFor     time.Duration // how long a killed node stays dead before "after"
	HangFor      time.Duration // SIGSTOP to SIGCONT
	PartitionFor time.Duration // each partition
	LossFor      time.Duration // each announcement-loss phase
	ReloadFor    time.Duration // the reload storm
	ReloadEvery  time.Duration
	DrainMax     time.Duration // how long to wait for a drained node to be idle
	SkewFor      time.Duration // the skewed clock
	Skew         time.Duration // how far the skewed node's clock is behind
	ReplayWindow time.Duration // replay_window in the skew fault
	SoakFor      time.Duration
	SoakReload   time.Duration
	// RotateSplit adds the rotate fault's negative check: a node jumping
	// to a new key without accept_keys.
	RotateSplit bool

	Log     io.Writer // progress; nil: none
	Dir     string    // work directory (default: a temporary one)
	KeepDir bool
}

// DefaultOptions are the settings of the full default run (under ~20
// minutes for every default fault in both deployments).
func DefaultOptions() Options {
	return Options{
		Faults:      DefaultFaults,
		Deployments: []string{Directive, Balancer},
		Nodes:       4,
		Workers:     8,
		Mean:        80 * time.Millisecond,
		Load:        0.7,
		Post:        0.2,
		Timeout:     20 * time.Second,

		MaxOutstanding: 3000,
		GracePeriod:    3 * time.Second,
		MaxAge:         3 * time.Second,
		Interval:       time.Second,
		Warmup:         3 * time.Second,
		Before:         8 * time.Second,
		After:          10 * time.Second,
		DeathFor:       10 * time.Second,
		HangFor:        10 * time.Second,
		PartitionFor:   12 * time.Second,
		LossFor:        time.Minute,
		ReloadFor:      time.Minute,
		ReloadEvery:    time.Second,
		DrainMax:       20 * time.Second,
		SkewFor:        12 * time.Second,
		Skew:           5 * time.Second,
		ReplayWindow:   2 * time.Second,
		SoakFor:        10 * time.Minute,
		SoakReload:     10 * time.Second,
		RotateSplit:    true,

		BalancerRetries: 2,
		FailureDetails:  6,
	}
}

// QuickOptions are the quick mode's: death, restart, drain, a reload
// storm and a key rotation (without its split check), short, in about
// 90 s.
func QuickOptions() Options {
	o := DefaultOptions()
	o.Faults = []string{"death", "restart", "drain", "reload", "rotate"}
	o.RotateSplit = false
	o.Deployments = []string{Directive}
	o.Load = 0.5
	o.Warmup, o.Before, o.After = 2*time.Second, 3*time.Second, 4*time.Second
	o.DeathFor = 4 * time.Second
	o.ReloadFor = 6 * time.Second
	o.DrainMax = 10 * time.Second
	return o
}

// Capacity is the app nodes' capacity, requests per second.
func (o Options) Capacity() float64 {
	return float64(o.Nodes*o.Workers) / o.Mean.Seconds()
}

// Rate is the offered load, requests per second.
func (o Options) Rate() float64 { return o.Load * o.Capacity() }

// Report is one fault in one deployment.
type Report struct {
	Fault, Deploy string
	Skipped       string // why, if it did not run

	Requests   int
	Failures   map[string]int // by kind label, GET and POST together
	GetFail    int
	PostFail   int
	Dropped    int // not sent: too many outstanding
	Lost       int // answered 2xx, but no application served it
	DupGet     int // GETs served more than once
	DupPost    int // POSTs served more than once
	ServedFail int // served by an application, yet the client saw a failure

	Inject, Recover, DuringEnd time.Duration // since the load's start; Recover 0: none

	StopAfter      time.Duration // inject to the last new request routed to the victim; -1 unknown
	SentLate       uint64        // requests routed to the victim later than max_age + 1 s after the fault
	CandidateAfter time.Duration // recover to every observer listing it live; -1 never
	ShareAfter     time.Duration // recover to the victim's first 1 s with 3/4 of its fair share; -1 never

	P99Before, P99During, P99After time.Duration
	MaxLatency                     time.Duration
	MaxLatencyDuring               time.Duration

	// Windows are parts of the run whose requests are reported on their
	// own (in the notes): e.g. the steps of a key rotation.
	Windows []Window

	Notes []string
	Err   error
}

// Window is a named part of a run, by due time since the load's start.
type Window struct {
	Name     string
	From, To time.Duration
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// obs is one poll of an observer's view of the victim.
type obs struct {
	at          time.Duration
	who         int // observer index
	ok          bool
	state       string
	incarnation string
	sent        uint64
	busy        uint32
	inflight    int64
	rejected    map[string]int
	// the observer's estimates of every peer's response time, ms (-1:
	// none): observed (peak-EWMA) and learned (byWait's typical time)
	observed, learned map[string]float64
	announced         map[string]float64 // latency_ms: the peer's own response time, as it announces it
	busyOf            map[string]uint32  // the peer's announced requests in flight
}

// runState is what a fault script and the analysis share.
type runState struct {
	e    *env
	rep  *Report
	wide bool // a cluster-wide fault: no faulty node to follow

	mu   sync.Mutex
	obss []obs
}

func (s *runState) now() time.Duration { return time.Since(s.e.start) }

// sleepUntil sleeps until d after the load's start.
func (s *runState) sleepUntil(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(time.Until(s.e.start.Add(d)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (s *runState) sleep(ctx context.Context, d time.Duration) error {
	return s.sleepUntil(ctx, s.now()+d)
}

// poll records the observers' view of the victim every 200 ms until ctx
// ends.
func (s *runState) poll(ctx context.Context) {
	victim := "node" + fmt.Sprint(s.e.victim+1)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for ctx.Err() == nil {
		for i, n := range s.e.observers() {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			v, err := n.Peers(rctx)
			cancel()
			o := obs{at: s.now(), who: i}
			if err == nil {
				o.rejected = v.Rejected
				o.observed, o.learned, o.announced, o.busyOf = map[string]float64{}, map[string]float64{}, map[string]float64{}, map[string]uint32{}
				for _, p := range v.Peers {
					o.observed[p.Name], o.learned[p.Name] = msOr(p.ObservedLatencyMS), msOr(p.LearnedLatencyMS)
					o.announced[p.Name], o.busyOf[p.Name] = p.LatencyMS, p.Busy
				}
				if p, ok := v.Peer(victim); ok {
					o.ok, o.state, o.incarnation = true, p.State, p.Incarnation
					o.sent, o.busy, o.inflight = p.SentByThisNode, p.Busy, p.InFlightFromThisNode
				}
			}
			s.mu.Lock()
			s.obss = append(s.obss, o)
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

func msOr(p *float64) float64 {
	if p == nil {
		return -1
	}
	return *p
}

// observations returns a copy of the polls.
func (s *runState) observations() []obs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.obss)
}

// Run builds Caddy and runs every fault of o in every deployment, one at a
// time, each on a fresh cluster; it returns the reports in order.
func Run(ctx context.Context, o Options) ([]*Report, error) {
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "bhfault-")
		if err != nil {
			return nil, err
		}
		dir = d
		if !o.KeepDir {
			defer os.RemoveAll(d)
		}
	}
	// Every Caddy gets its own XDG directories from cluster.Start; this
	// process's own point at the work directory too.
	os.Setenv("XDG_CONFIG_HOME", dir)
	os.Setenv("XDG_DATA_HOME", dir)
	logf(o, "building caddy into %s ...", dir)
	bin, err := cluster.Build(ctx, dir)
	if err != nil {
		return nil, err
	}
	var reps []*Report
	for _, f := range o.Faults {
		spec, ok := faultByName(f)
		if !ok {
			return reps, fmt.Errorf("fault: unknown fault %q (have %s)", f, strings.Join(FaultNames(), ", "))
		}
		for _, d := range o.Deployments {
			if ctx.Err() != nil {
				return reps, ctx.Err()
			}
			logf(o, "== %s, %s deployment", f, d)
			rep := runOne(ctx, o, bin, dir, spec, d)
			logf(o, "%s", rep.Line())
			reps = append(reps, rep)
		}
	}
	return reps, nil
}

// loadAvg is the machine's 1-minute load average (Linux), or "?": the
// harness shares the machine, and a busy one stretches every latency.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func logf(o Options, format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// runOne runs one fault in one deployment on a fresh cluster.
func runOne(ctx context.Context, o Options, bin, dir string, f faultSpec, deploy string) *Report {
	rep := &Report{Fault: f.name, Deploy: deploy, StopAfter: -1, CandidateAfter: -1, ShareAfter: -1}
	var key [16]byte
	_, _ = rand.Read(key[:])
	e := &env{o: o, bin: bin, dir: dir, deploy: deploy, n: o.Nodes, victim: o.Nodes - 1, key: hex.EncodeToString(key[:])}
	if f.prepare != nil {
		if reason := f.prepare(e); reason != "" {
			rep.Skipped = reason
			return rep
		}
	}
	horizon := o.Warmup + o.Before + f.length(o) + o.After + 2*time.Minute
	defer func() {
		if err := e.teardown(); err != nil && rep.Err == nil {
			rep.note("teardown: %v", err)
		}
	}()
	if err := e.setup(ctx, horizon); err != nil {
		rep.Err = err
		return rep
	}
	s := &runState{e: e, rep: rep, wide: f.clusterWide}
	// The load and the timelines start now.
	e.start = time.Now()
	for _, a := range e.apps {
		a.SetStart(e.start)
	}
	stop := make(chan struct{})
	load := Load{URLs: e.urls(), Rate: o.Rate(), From: 0, To: horizon, PostShare: o.Post,
		Timeout: o.Timeout, MaxOutstanding: o.MaxOutstanding, Seed: uint64(time.Now().UnixNano()), Prefix: f.name + "-", Stop: stop,
		BrowserResend: o.BrowserResend}
	var results []Result
	done := make(chan struct{})
	go func() { results = load.Run(ctx, e.start); close(done) }()
	pctx, pcancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { s.poll(pctx); close(pdone) }()

	err := s.sleepUntil(ctx, o.Warmup+o.Before)
	loadBefore := loadAvg()
	if err == nil {
		err = f.run(ctx, s)
	}
	rep.note("machine load average (1 min) at the fault and at its end: %s / %s", loadBefore, loadAvg())
	if err != nil {
		rep.Err = err
	}
	if rep.DuringEnd == 0 {
		rep.DuringEnd = s.now()
	}
	_ = s.sleep(ctx, o.After)
	close(stop)
	<-done
	pcancel()
	<-pdone
	if f.after != nil {
		f.after(ctx, s)
	}
	s.analyze(results)
	if f.clusterWide {
		rep.StopAfter, rep.CandidateAfter, rep.ShareAfter, rep.SentLate = -2, -2, -2, 0
	}
	return rep
}
