package fault

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// DefaultFaults are the faults of the default run, in order (soak only
// when asked).
var DefaultFaults = []string{"death", "hang", "hang-bounded", "partition-announce", "partition-http", "loss30", "loss90",
	"reload", "restart", "drain", "skew", "rotate"}

// faultSpec is one fault: its script runs at the fault's time, in the
// middle of the load, and sets the report's marks.
type faultSpec struct {
	name    string
	desc    string
	length  func(Options) time.Duration // the script's nominal length
	prepare func(*env) string           // before the cluster starts; a reason to skip
	run     func(context.Context, *runState) error
	after   func(context.Context, *runState) // once the load has ended
	// cluster-wide faults have no faulty node: no stop, candidate or
	// share figures.
	clusterWide bool
}

var faults = []faultSpec{
	{name: "death", desc: "kill -9 of the node's Caddy and its application",
		length: func(o Options) time.Duration { return o.DeathFor }, run: runDeath},
	{name: "hang", desc: "SIGSTOP of the node's Caddy, SIGCONT after -hang",
		length: func(o Options) time.Duration { return o.HangFor }, run: runHang},
	{name: "hang-bounded", desc: "hang, with response_header_timeout (-response-header-timeout, default 2s) on the proxy to peers",
		length: func(o Options) time.Duration { return o.HangFor }, run: runHang, prepare: prepareHangBounded},
	{name: "partition-announce", desc: "the node's announcements dropped on every link, HTTP working",
		length: func(o Options) time.Duration { return o.PartitionFor }, run: runPartitionAnnounce},
	{name: "partition-http", desc: "the node's advertised HTTP address cut (new connections refused, open ones black-holed), announcements working",
		length: func(o Options) time.Duration { return o.PartitionFor }, run: runPartitionHTTP},
	{name: "loss30", clusterWide: true, desc: "30% of the announcements dropped on every link",
		length: func(o Options) time.Duration { return o.LossFor }, run: runLoss(0.3)},
	{name: "loss90", clusterWide: true, desc: "90% of the announcements dropped on every link",
		length: func(o Options) time.Duration { return o.LossFor }, run: runLoss(0.9)},
	{name: "reload", clusterWide: true, desc: "POST /load of two valid configs alternately on every Caddy every -reload-every, one invalid among them",
		length: func(o Options) time.Duration { return o.ReloadFor }, run: runReload},
	{name: "restart", desc: "the node's Caddy stopped (SIGTERM) and started again: a new incarnation",
		length: func(o Options) time.Duration { return 5 * time.Second }, run: runRestart},
	{name: "drain", desc: "POST /backhand/drain, wait until the observers show it idle, stop it",
		length: func(o Options) time.Duration { return o.DrainMax }, run: runDrain},
	{name: "skew", desc: "the node's clock behind by -skew > replay_window (its announcements delayed by a relay)",
		length: func(o Options) time.Duration { return o.SkewFor }, prepare: prepareSkew, run: runSkew},
	{name: "rotate", clusterWide: true, desc: "a rolling key rotation (accept_keys <new>; key <new>, accept_keys <old>; accept_keys dropped), node by node via POST /load; then the node jumps to a new key without accept_keys (the split)",
		length: func(o Options) time.Duration { return 40 * time.Second }, run: runRotate},
	{name: "soak", clusterWide: true, desc: "load with a reload of every Caddy every -soak-reload; resources at start and end",
		length: func(o Options) time.Duration { return o.SoakFor }, run: runSoak},
}

func faultByName(name string) (faultSpec, bool) {
	for _, f := range faults {
		if f.name == name {
			return f, true
		}
	}
	return faultSpec{}, false
}

// FaultNames lists every fault.
func FaultNames() []string {
	var out []string
	for _, f := range faults {
		out = append(out, f.name)
	}
	return out
}

// FaultHelp describes every fault, one per line.
func FaultHelp() string {
	var b strings.Builder
	for _, f := range faults {
		fmt.Fprintf(&b, "  %-19s %s\n", f.name, f.desc)
	}
	return b.String()
}

func runDeath(ctx context.Context, s *runState) error {
	e := s.e
	s.rep.Inject = s.now()
	err := e.node(e.victim).Kill()
	e.apps[e.victim].Kill()
	e.logf("killed %s (kill -9) and its application", e.node(e.victim).Name())
	if err != nil {
		return err
	}
	err = s.sleep(ctx, e.o.DeathFor)
	s.rep.DuringEnd = s.now()
	return err
}

func runHang(ctx context.Context, s *runState) error {
	e := s.e
	n := e.node(e.victim)
	s.rep.Inject = s.now()
	if err := n.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	e.logf("SIGSTOP %s", n.Name())
	err := s.sleep(ctx, e.o.HangFor)
	if cerr := n.Signal(syscall.SIGCONT); cerr != nil {
		return cerr
	}
	e.logf("SIGCONT %s", n.Name())
	s.rep.Recover = s.now()
	s.rep.DuringEnd = s.rep.Recover
	return err
}

// prepareHangBounded bounds the requests to peers by a response header
// timeout (2 s unless set).
func prepareHangBounded(e *env) string {
	if e.o.ResponseHeaderTimeout <= 0 {
		e.o.ResponseHeaderTimeout = 2 * time.Second
	}
	return ""
}

func runPartitionAnnounce(ctx context.Context, s *runState) error {
	e := s.e
	s.rep.Inject = s.now()
	for j, u := range e.udp {
		if j != e.victim {
			u.SetDropFrom(host(e.victim), 1)
		}
	}
	e.logf("dropping every announcement of node%d", e.victim+1)
	err := s.sleep(ctx, e.o.PartitionFor)
	for _, u := range e.udp {
		u.Reset()
	}
	e.logf("announcements of node%d flow again", e.victim+1)
	s.rep.Recover = s.now()
	s.rep.DuringEnd = s.rep.Recover
	return err
}

func runPartitionHTTP(ctx context.Context, s *runState) error {
	e := s.e
	s.rep.Inject = s.now()
	e.tcp[e.victim].Cut()
	e.logf("cut node%d's advertised HTTP address", e.victim+1)
	err := s.sleep(ctx, e.o.PartitionFor)
	if herr := e.tcp[e.victim].Heal(); herr != nil {
		return herr
	}
	e.logf("healed node%d's HTTP address", e.victim+1)
	s.rep.Recover = s.now()
	s.rep.DuringEnd = s.rep.Recover
	return err
}

func runLoss(p float64) func(context.Context, *runState) error {
	return func(ctx context.Context, s *runState) error {
		e := s.e
		s.rep.Inject = s.now()
		for _, u := range e.udp {
			u.SetDrop(p)
		}
		e.logf("dropping %.0f%% of the announcements on every link", p*100)
		err := s.sleep(ctx, e.o.LossFor)
		var fwd, drop int64
		for _, u := range e.udp {
			u.Reset()
			fwd += u.Forwarded.Load()
			drop += u.Dropped.Load()
		}
		s.rep.note("relays forwarded %d datagrams, dropped %d over the run", fwd, drop)
		s.rep.Recover = s.now()
		s.rep.DuringEnd = s.rep.Recover
		return err
	}
}

// reloadConfigs are Caddy i's two valid configurations (its own and one
// with another grace_period) and an invalid one.
func (e *env) reloadConfigs(i int) (a, b, bad string) {
	cfg := e.nodeConfig(i)
	a = cfg.Caddyfile()
	cfg.GracePeriod = e.o.GracePeriod + time.Second
	b = cfg.Caddyfile()
	bad = strings.Replace(a, "\tbackhand {\n", "\tbackhand {\n\t\tno_such_option 1\n", 1)
	return a, b, bad
}

// storm reloads every Caddy every `every` for `d`, alternating the two
// valid configurations; the invalid one goes to every Caddy once, half way.
// It counts the failures of the valid loads, and checks that the invalid
// one is rejected and leaves the running config as it was.
func (s *runState) storm(ctx context.Context, d, every time.Duration, invalid bool) error {
	e := s.e
	end := s.now() + d
	nodes := e.allNodes()
	badDone := false
	var okLoads, failLoads, rejected, harmed int
	var firstErr string
	var mu sync.Mutex
	for k := 0; s.now() < end; k++ {
		tick := s.now()
		sendBad := invalid && !badDone && tick >= end-d/2
		badDone = badDone || sendBad
		var wg sync.WaitGroup
		for i, n := range nodes {
			wg.Go(func() {
				a, b, bad := e.reloadConfigs(i)
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if sendBad {
					_, before, _ := n.AdminGet(rctx, "/config/")
					err := n.Load(rctx, bad)
					_, after, _ := n.AdminGet(rctx, "/config/")
					mu.Lock()
					if err != nil {
						rejected++
					}
					if !bytes.Equal(before, after) || len(after) < 10 {
						harmed++
					}
					mu.Unlock()
					return
				}
				cf := a
				if k%2 == 1 {
					cf = b
				}
				err := n.Load(rctx, cf)
				mu.Lock()
				if err != nil {
					failLoads++
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					okLoads++
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		if err := s.sleepUntil(ctx, tick+every); err != nil {
			return err
		}
	}
	s.rep.note("%d reloads succeeded, %d failed; net.ipv4.tcp_migrate_req = %s", okLoads, failLoads, migrateReq())
	if firstErr != "" {
		s.rep.note("first failed reload: %.200s", firstErr)
	}
	if invalid {
		s.rep.note("invalid config rejected by %d/%d Caddies; running config changed by it on %d", rejected, len(nodes), harmed)
	}
	return nil
}

func runReload(ctx context.Context, s *runState) error {
	e := s.e
	s.rep.Inject = s.now()
	e.logf("reload storm: every %v for %v", e.o.ReloadEvery, e.o.ReloadFor)
	err := s.storm(ctx, e.o.ReloadFor, e.o.ReloadEvery, true)
	s.rep.Recover = s.now()
	s.rep.DuringEnd = s.rep.Recover
	for _, n := range e.allNodes() {
		if n.Exited() {
			s.rep.note("%s exited during the storm: %v", n.Name(), n.ExitErr())
		}
	}
	return err
}

func runRestart(ctx context.Context, s *runState) error {
	e := s.e
	old := e.node(e.victim)
	oldInc := ""
	if v, err := old.Peers(ctx); err == nil {
		oldInc = v.Incarnation
	}
	s.rep.Inject = s.now()
	err := old.Stop(10 * time.Second)
	e.logf("stopped %s (SIGTERM): %v", old.Name(), err)
	if err := e.startNode(e.victim); err != nil {
		return err
	}
	n := e.node(e.victim)
	if err := n.WaitReady(ctx, 30*time.Second); err != nil {
		return err
	}
	s.rep.Recover = s.now()
	e.logf("%s started again", n.Name())
	s.rep.note("down for %v (SIGTERM to ready)", (s.rep.Recover - s.rep.Inject).Round(time.Millisecond))
	// The candidate time is measured from the observers' polls, the new
	// incarnation only.
	s.rep.note("old incarnation %s", oldInc)
	err = s.sleep(ctx, 5*time.Second)
	s.rep.DuringEnd = s.now()
	return err
}

func runDrain(ctx context.Context, s *runState) error {
	e := s.e
	n := e.node(e.victim)
	s.rep.Inject = s.now()
	status, body, err := n.AdminPost(ctx, "/backhand/drain")
	if err != nil || status != 200 {
		return fmt.Errorf("drain: %d %s %v", status, body, err)
	}
	e.logf("drained %s: %s", n.Name(), bytes.TrimSpace(body))
	name := n.Name()
	err = cluster.Poll(ctx, e.o.DrainMax, 100*time.Millisecond, func() error {
		for _, o := range e.observers() {
			v, err := o.Peers(ctx)
			if err != nil {
				return err
			}
			p, ok := v.Peer(name)
			if !ok || p.State != "draining" || p.Busy != 0 || p.InFlightFromThisNode != 0 {
				return fmt.Errorf("%s sees %s %s busy %d in flight from it %d", o.Name(), name, p.State, p.Busy, p.InFlightFromThisNode)
			}
		}
		return nil
	})
	idle := s.now()
	if err != nil {
		s.rep.note("not idle: %v", err)
	} else {
		s.rep.note("observers showed it draining and idle %.1fs after the drain", (idle - s.rep.Inject).Seconds())
	}
	if inSys := e.apps[e.victim].InSystem(); inSys != 0 {
		s.rep.note("its application still had %d requests when the observers showed it idle", inSys)
	}
	serr := n.Stop(10 * time.Second)
	e.apps[e.victim].Kill()
	e.logf("stopped %s: %v", name, serr)
	s.rep.DuringEnd = s.now()
	return nil
}

// prepareSkew sets replay_window on every node. The node's clock cannot be
// moved with faketime (Go reads the clock through the vDSO, which
// LD_PRELOAD does not reach); its announcements are delayed instead, which
// a receiver cannot tell from a send time that far in the past.
func prepareSkew(e *env) string {
	e.extra = append(e.extra, "replay_window "+e.o.ReplayWindow.String())
	if e.o.Skew <= e.o.ReplayWindow {
		return fmt.Sprintf("skew %v is within replay_window %v", e.o.Skew, e.o.ReplayWindow)
	}
	return ""
}

func runSkew(ctx context.Context, s *runState) error {
	e := s.e
	before := s.rejected()
	s.rep.Inject = s.now()
	for j, u := range e.udp {
		if j != e.victim {
			u.SetDelayFrom(host(e.victim), e.o.Skew)
		}
	}
	e.logf("node%d's announcements delayed by %v (replay_window %v)", e.victim+1, e.o.Skew, e.o.ReplayWindow)
	err := s.sleep(ctx, e.o.SkewFor)
	for _, u := range e.udp {
		u.Reset()
	}
	s.rep.Recover = s.now()
	s.rep.DuringEnd = s.rep.Recover
	after := s.rejected()
	var parts []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s +%d", k, d))
		}
	}
	s.rep.note("observers' announcements_rejected during the skew: %s", strings.Join(parts, ", "))
	return err
}

// rejected sums the observers' rejection counters.
func (s *runState) rejected() map[string]int {
	sum := map[string]int{}
	for _, n := range s.e.observers() {
		v, err := n.Peers(context.Background())
		if err != nil {
			continue
		}
		for k, c := range v.Rejected {
			sum[k] += c
		}
	}
	return sum
}

// Resources is one Caddy's goroutines, open files and heap.
type Resources struct {
	Goroutines int
	FDs        int
	HeapAlloc  uint64
}

func (r Resources) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, heap %.1f MB", r.Goroutines, r.FDs, float64(r.HeapAlloc)/1e6)
}

// resources reads n's goroutine count (pprof), open file descriptors
// (/proc/<pid>/fd) and heap (/debug/vars memstats).
func resources(ctx context.Context, n *cluster.Node) Resources {
	var r Resources
	if _, body, err := n.AdminGet(ctx, "/debug/pprof/goroutine?debug=1"); err == nil {
		line, _, _ := strings.Cut(string(body), "\n")
		if i := strings.LastIndex(line, "total "); i >= 0 {
			r.Goroutines, _ = strconv.Atoi(strings.TrimSpace(line[i+6:]))
		}
	}
	if ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(n.Pid()), "fd")); err == nil {
		r.FDs = len(ents)
	}
	if _, body, err := n.AdminGet(ctx, "/debug/vars"); err == nil {
		var v struct {
			Memstats struct {
				HeapAlloc uint64 `json:"HeapAlloc"`
			} `json:"memstats"`
		}
		if jsonUnmarshal(body, &v) == nil {
			r.HeapAlloc = v.Memstats.HeapAlloc
		}
	}
	return r
}

// goroutineGroups sums n's goroutines by the first function of their
// stacks outside the runtime (pprof's debug=1 groups), the largest first,
// at most max of them.
func goroutineGroups(ctx context.Context, n *cluster.Node, max int) string {
	_, body, err := n.AdminGet(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	by := map[string]int{}
	for _, group := range strings.Split(string(body), "\n\n") {
		lines := strings.Split(group, "\n")
		k, _, ok := strings.Cut(lines[0], " @ ")
		count, cerr := strconv.Atoi(k)
		if !ok || cerr != nil {
			continue
		}
		fn := "?"
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "#" && !strings.HasPrefix(f[2], "runtime.") && !strings.HasPrefix(f[2], "internal/poll.") {
				fn, _, _ = strings.Cut(f[2], "+0x")
				break
			}
		}
		by[fn] += count
	}
	keys := slices.SortedFunc(maps.Keys(by), func(a, b string) int { return by[b] - by[a] })
	var parts []string
	for _, k := range keys[:min(max, len(keys))] {
		parts = append(parts, fmt.Sprintf("%d %s", by[k], k))
	}
	return strings.Join(parts, ", ")
}

func runSoak(ctx context.Context, s *runState) error {
	e := s.e
	s.rep.Inject = s.now()
	nodes := e.allNodes()
	// Every node's resources at the start and every soakSample, to tell
	// growth from a plateau.
	const soakSample = time.Minute
	series := map[string][]Resources{}
	sample := func() {
		for _, n := range nodes {
			series[n.Name()] = append(series[n.Name()], resources(ctx, n))
		}
	}
	sample()
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(soakSample)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				sample()
			}
		}
	}()
	err := s.storm(ctx, e.o.SoakFor, e.o.SoakReload, false)
	close(stop)
	<-sampled
	sample()
	for _, n := range nodes {
		rs := series[n.Name()]
		var g, f, h []string
		for _, r := range rs {
			g = append(g, strconv.Itoa(r.Goroutines))
			f = append(f, strconv.Itoa(r.FDs))
			h = append(h, fmt.Sprintf("%.1f", float64(r.HeapAlloc)/1e6))
		}
		s.rep.note("%s: start %v; end %v; per minute: goroutines %s; fds %s; heap MB %s", n.Name(), rs[0], rs[len(rs)-1],
			strings.Join(g, " "), strings.Join(f, " "), strings.Join(h, " "))
		s.rep.note("%s: goroutines at the end by function: %s", n.Name(), goroutineGroups(ctx, n, 5))
	}
	s.rep.DuringEnd = s.now()
	return err
}

// migrateReq reads net.ipv4.tcp_migrate_req (Linux 5.14 and later): at 1
// the kernel hands connections queued on a closing listener to another
// listener of its SO_REUSEPORT group, which is what a Caddy reload needs so
// that none is reset (README, "A reload under load"). "?" where unknown.
func migrateReq() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
