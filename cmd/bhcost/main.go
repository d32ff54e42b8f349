// Command bhcost measures what the backhand directive costs end to end:
// requests per second and latency through `backhand` (the default chain,
// removeSelf) against `reverse_proxy` with `lb_policy random` to the same
// four loopback backends, from the same client (wrk), in one run.
//
//	go run ./cmd/bhcost [-rounds 9] [-duration 5s] [-connections 32]
//
// Throughput on a shared machine moves by 10-20% from one measurement to
// the next, so each round measures both back to back (in alternating order)
// and the headline is the median of the rounds' ratios. It also reports
// the CPU time (user and system, from the processes) that each request
// cost, on the entry node and on every process with wrk.
//
// It needs wrk on PATH (Debian package wrk).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
	"github.com/shirou/gopsutil/v4/process"
)

const (
	base     = 23000
	backends = 4
	key      = "bhcost-key-0123456789abcdef"
)

func main() {
	rounds := flag.Int("rounds", 9, "rounds, each measuring both contenders back to back (in alternating order)")
	duration := flag.Duration("duration", 5*time.Second, "wrk duration per measurement")
	conns := flag.Int("connections", 32, "wrk connections")
	threads := flag.Int("threads", 2, "wrk threads")
	flag.StringVar(&profilePath, "cpuprofile", "", "save CPU profiles of the entry node during each contender's first measurement, as `prefix`-random.prof and prefix-backhand.prof")
	flag.Parse()
	if err := run(*rounds, *duration, *conns, *threads); err != nil {
		fmt.Fprintln(os.Stderr, "bhcost:", err)
		os.Exit(1)
	}
}

var profilePath string

var profileNames = map[string]string{"reverse_proxy random": "random", "backhand (default chain)": "backhand"}

// profile saves a CPU profile of the entry over d from its admin API.
func profile(entry *cluster.Node, d time.Duration, path string) {
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", entry.Config.AdminURL(), int(d.Seconds()))
	out, err := exec.Command("curl", "-s", "-o", path, url).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "profile: %v %s\n", err, out)
	}
}

func run(rounds int, duration time.Duration, conns, threads int) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not found: apt-get install wrk")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bhcost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := cluster.Build(ctx, dir)
	if err != nil {
		return err
	}
	nodes, entry, err := startNodes(bin, dir)
	defer cluster.StopAll(nodes, 5*time.Second)
	if err != nil {
		return err
	}
	urls := map[string]string{
		"reverse_proxy random":     fmt.Sprintf("http://127.0.0.%d:%d/", entry.Config.Index, base+2),
		"backhand (default chain)": fmt.Sprintf("http://127.0.0.%d:%d/", entry.Config.Index, base+3),
	}
	names := []string{"reverse_proxy random", "backhand (default chain)"}
	results := map[string][]wrkResult{}
	for r := range rounds {
		for _, name := range roundOrder(names, r) {
			if profilePath != "" && r == 0 {
				go profile(entry, duration-2*time.Second, profilePath+"-"+profileNames[name]+".prof")
			}
			res, err := measure(nodes, urls[name], duration, conns, threads)
			if err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			fmt.Printf("round %d  %-26s %9.0f req/s  p50 %8v  p99 %8v  CPU %6.1f us/req (entry %5.1f)  errors %d\n", r+1, name, res.rps, res.p50, res.p99, res.cpuPerReq, res.entryCPU, res.errors)
			results[name] = append(results[name], res)
		}
	}
	fmt.Printf("\nmedians over %d rounds (wrk -t%d -c%d -d%v, %d backends, this machine: %d CPUs):\n", rounds, threads, conns, duration, backends, nproc())
	rp, bh := median(results[names[0]]), median(results[names[1]])
	for _, name := range names {
		m := median(results[name])
		fmt.Printf("| %s | %.0f req/s | p50 %v | p99 %v | %.1f us CPU/req | entry %.1f us/req |\n", name, m.rps, m.p50, m.p99, m.cpuPerReq, m.entryCPU)
	}
	ratios := roundRatios(results[names[0]], results[names[1]])
	fmt.Printf("throughput ratio backhand / reverse_proxy random: %.3f (median of the rounds' ratios; ratio of medians %.3f)\n", medianOf(ratios), bh.rps/rp.rps)
	fmt.Printf("rounds' ratios: %.3f\n", ratios)
	fmt.Printf("CPU per request, reverse_proxy random / backhand: %.3f (all processes), %.3f (entry)\n", rp.cpuPerReq/bh.cpuPerReq, rp.entryCPU/bh.entryCPU)
	return nil
}

// startNodes starts the backends (app sites announcing as a cluster) and an
// entry node with both contenders as sites.
func startNodes(bin, dir string) ([]*cluster.Node, *cluster.Node, error) {
	var peers, ups []string
	for i := 1; i <= backends+1; i++ {
		peers = append(peers, fmt.Sprintf("127.0.0.%d:%d", i+40, base+20))
	}
	var nodes []*cluster.Node
	for i := 1; i <= backends+1; i++ {
		cfg := cluster.NodeConfig{
			Index: i + 40, HTTPPort: base + 1, UDPPort: base + 20, AdminPort: base + 30 + i,
			Cluster: "bhcost", Peers: peers, Key: key,
		}
		if i <= backends {
			ups = append(ups, cfg.AppAddr())
		} else {
			cfg.ExtraSites = []string{
				fmt.Sprintf(":%d {\n\tbind %s\n\treverse_proxy %s {\n\t\tlb_policy random\n\t}\n}", base+2, cfg.Host(), join(ups)),
				fmt.Sprintf(":%d {\n\tbind %s\n\tbackhand {\n\t\tremoveSelf\n\t\tbyAge\n\t\tbyRandom\n\t\tbySample\n\t\tbyWait\n\t}\n\trespond \"entry\"\n}", base+3, cfg.Host()),
			}
		}
		if err := cfg.CheckFree(); err != nil {
			return nodes, nil, err
		}
		n, err := cluster.Start(bin, dir, cfg, nil)
		if err != nil {
			return nodes, nil, err
		}
		nodes = append(nodes, n)
	}
	ctx := context.Background()
	for _, n := range nodes {
		if err := n.WaitReady(ctx, 30*time.Second); err != nil {
			return nodes, nil, err
		}
	}
	entry := nodes[len(nodes)-1]
	err := cluster.Poll(ctx, 10*time.Second, 50*time.Millisecond, func() error {
		v, err := entry.Peers(ctx)
		if err != nil {
			return err
		}
		var names []string
		for _, n := range nodes {
			names = append(names, n.Name())
		}
		return v.SeesAll(names...)
	})
	return nodes, entry, err
}

func join(xs []string) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

type wrkResult struct {
	rps       float64
	p50, p99  time.Duration
	errors    int
	cpuPerReq float64 // microseconds of CPU (every node and wrk) per request
	entryCPU  float64 // of which the entry node's
	wrkCPU    time.Duration
}

// measure runs wrk against url and adds up the CPU time that the nodes
// (the entry is the last) and wrk spent meanwhile.
func measure(nodes []*cluster.Node, url string, d time.Duration, conns, threads int) (wrkResult, error) {
	all0, entry0, err := nodesCPU(nodes)
	if err != nil {
		return wrkResult{}, err
	}
	res, err := runWrk(url, d, conns, threads)
	if err != nil {
		return res, err
	}
	all1, entry1, err := nodesCPU(nodes)
	if err != nil {
		return res, err
	}
	if requests := res.rps * d.Seconds(); requests > 0 {
		res.cpuPerReq = float64(all1-all0+res.wrkCPU) / float64(time.Microsecond) / requests
		res.entryCPU = float64(entry1-entry0) / float64(time.Microsecond) / requests
	}
	return res, nil
}

// nodesCPU is the user and system time that the nodes' processes have
// used, in all and the last node's alone.
func nodesCPU(nodes []*cluster.Node) (all, last time.Duration, err error) {
	for _, n := range nodes {
		p, err := process.NewProcess(int32(n.Pid()))
		if err != nil {
			return 0, 0, err
		}
		t, err := p.Times()
		if err != nil {
			return 0, 0, err
		}
		last = time.Duration((t.User + t.System) * float64(time.Second))
		all += last
	}
	return all, last, nil
}

// roundOrder runs the contenders in turn, reversing the order every other
// round (ABBA), so that a machine speeding up or slowing down over a round
// does not favour whichever goes first.
func roundOrder(names []string, round int) []string {
	if round%2 == 0 {
		return names
	}
	rev := slices.Clone(names)
	slices.Reverse(rev)
	return rev
}

// roundRatios is backhand's throughput over random's, round by round: each
// pair ran back to back, so its ratio is less noisy than the medians'.
func roundRatios(rp, bh []wrkResult) []float64 {
	var out []float64
	for i := range min(len(rp), len(bh)) {
		out = append(out, bh[i].rps/rp[i].rps)
	}
	return out
}

// medianOf is the median of v (0 if empty).
func medianOf(v []float64) float64 {
	v = slices.Sorted(slices.Values(v))
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

var (
	reRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)`)
	reErrors  = regexp.MustCompile(`(?:Non-2xx or 3xx responses|Socket errors:.*?(?:read|write|timeout)) (\d+)`)
)

// runWrk runs wrk with latency percentiles and parses its report.
func runWrk(url string, d time.Duration, conns, threads int) (wrkResult, error) {
	cmd := exec.Command("wrk", "--latency", "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns),
		"-d"+strconv.Itoa(int(d.Seconds()))+"s", url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	r := wrkResult{wrkCPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	m := reRPS.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output: %s", out)
	}
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	for _, l := range reLatency.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(l[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(l[3])]
		if string(l[1]) == "50" {
			r.p50 = time.Duration(v * float64(unit))
		} else {
			r.p99 = time.Duration(v * float64(unit))
		}
	}
	for _, e := range reErrors.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(e[1]))
		r.errors += n
	}
	return r, nil
}

func median(rs []wrkResult) wrkResult {
	pick := func(f func(wrkResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return medianOf(v)
	}
	return wrkResult{
		rps: pick(func(r wrkResult) float64 { return r.rps }),
		p50: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p50) })),
		p99: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p99) })),

		cpuPerReq: pick(func(r wrkResult) float64 { return r.cpuPerReq }),
		entryCPU:  pick(func(r wrkResult) float64 { return r.entryCPU }),
	}
}

func nproc() int {
	n, _ := strconv.Atoi(os.Getenv("NPROC"))
	if n == 0 {
		out, err := exec.Command("nproc").Output()
		if err == nil {
			n, _ = strconv.Atoi(string(out[:len(out)-1]))
		}
	}
	return n
}
