// Command bhcost measures what the backhand directive costs end to end:
// requests per second and latency through `backhand` (the default chain,
// removeSelf) against `reverse_proxy` with `lb_policy random` to the same
// four loopback backends, from the same client (wrk), in one run, the two
// alternating so that a noisy machine affects both alike.
//
//	go run ./cmd/bhcost [-rounds 3] [-duration 10s] [-connections 32]
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
)

const (
	base     = 23000
	backends = 4
	key      = "bhcost-key-0123456789abcdef"
)

func main() {
	rounds := flag.Int("rounds", 3, "alternating rounds of each contender")
	duration := flag.Duration("duration", 10*time.Second, "wrk duration per measurement")
	conns := flag.Int("connections", 32, "wrk connections")
	threads := flag.Int("threads", 2, "wrk threads")
	flag.StringVar(&profilePath, "cpuprofile", "", "save a CPU profile of the entry node during the first backhand measurement")
	flag.Parse()
	if err := run(*rounds, *duration, *conns, *threads); err != nil {
		fmt.Fprintln(os.Stderr, "bhcost:", err)
		os.Exit(1)
	}
}

var profilePath string

// profile saves a CPU profile of the entry over d from its admin API.
func profile(entry *cluster.Node, d time.Duration) {
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", entry.Config.AdminURL(), int(d.Seconds()))
	out, err := exec.Command("curl", "-s", "-o", profilePath, url).CombinedOutput()
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
		for _, name := range names {
			if profilePath != "" && r == 0 && name == names[1] {
				go profile(entry, duration-2*time.Second)
			}
			res, err := runWrk(urls[name], duration, conns, threads)
			if err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			fmt.Printf("round %d  %-26s %9.0f req/s  p50 %8v  p99 %8v  errors %d\n", r+1, name, res.rps, res.p50, res.p99, res.errors)
			results[name] = append(results[name], res)
		}
	}
	fmt.Printf("\nmedians over %d rounds (wrk -t%d -c%d -d%v, %d backends, this machine: %d CPUs):\n", rounds, threads, conns, duration, backends, nproc())
	rp, bh := median(results[names[0]]), median(results[names[1]])
	for _, name := range names {
		m := median(results[name])
		fmt.Printf("| %s | %.0f req/s | p50 %v | p99 %v |\n", name, m.rps, m.p50, m.p99)
	}
	fmt.Printf("throughput ratio backhand / reverse_proxy random: %.3f\n", bh.rps/rp.rps)
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
				fmt.Sprintf(":%d {\n\tbind %s\n\tbackhand {\n\t\tremoveSelf\n\t\tbyAge\n\t\tbyRandom\n\t\tbyWindow 3\n\t\tbyWait\n\t}\n\trespond \"entry\"\n}", base+3, cfg.Host()),
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
	rps      float64
	p50, p99 time.Duration
	errors   int
}

var (
	reRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)`)
	reErrors  = regexp.MustCompile(`(?:Non-2xx or 3xx responses|Socket errors:.*?(?:read|write|timeout)) (\d+)`)
)

// runWrk runs wrk with latency percentiles and parses its report.
func runWrk(url string, d time.Duration, conns, threads int) (wrkResult, error) {
	out, err := exec.Command("wrk", "--latency", "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns),
		"-d"+strconv.Itoa(int(d.Seconds()))+"s", url).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	var r wrkResult
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
		slices.Sort(v)
		return v[len(v)/2]
	}
	return wrkResult{
		rps: pick(func(r wrkResult) float64 { return r.rps }),
		p50: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p50) })),
		p99: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p99) })),
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
