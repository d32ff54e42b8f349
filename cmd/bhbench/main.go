// Command bhbench is caddy-backhand's real-process quality benchmark: it
// starts simulated application servers on 127.0.0.11-14, each behind a real
// Caddy node built from this checkout, and runs every contender on them in
// turn, under open-loop Poisson load at several fractions of the cluster's
// capacity. It writes the results between the bhbench markers of
// BENCHMARKS.md, with CDF plots in bench/results/.
//
// The contenders: backhand exactly as the README's minimal configuration
// runs it (backhand-minimal, the headline, a dedicated balancer;
// backhand-minimal-track, the same behind backhand_track; backhand-peers,
// the backhand directive on every node), backhand-informed (nodes that
// announce their true speed, capacity and an app report, which no other
// contender is told), other backhand chains, Caddy's built-in policies,
// HAProxy, nginx and an oracle. The app nodes' Caddy config follows the
// contender (its node profile: minimal, informed or peers), switched
// through Caddy's admin API. -list shows the scenarios and contenders.
//
// The full run (8 scenarios x 20 contenders x 3 loads, about two hours on
// 2 cores):
//
//	go run ./cmd/bhbench
//
// A quick check that everything works (a few minutes; no figures to trust):
//
//	go run ./cmd/bhbench -quick -out /tmp/bhbench
//
// The README's rows against Caddy in one scenario, short cells:
//
//	go run ./cmd/bhbench -scenarios heterogeneous -contenders backhand-minimal,backhand-peers,caddy-least_conn -loads 70 -measure70 5s -out /tmp/bhbench
//
// HAProxy and nginx come from Debian's packages haproxy and nginx-light;
// when they are missing their contenders are skipped, with the reason.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/internal/bench"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	os.Exit(run())
}

func run() int {
	var (
		quick       = flag.Bool("quick", false, "quick mode: one scenario, 70% load, a few contenders, short cells (checks the harness, not the balancers)")
		list        = flag.Bool("list", false, "list the scenarios and contenders, and exit")
		scenarios   = flag.String("scenarios", "", "comma-separated scenarios (default: all; quick: heterogeneous); -list shows them")
		contenders  = flag.String("contenders", "", "comma-separated contenders (default: all; quick: the README's backhand rows, one Caddy, HAProxy and nginx row, the oracle); -list shows them")
		loads       = flag.String("loads", "", "comma-separated loads in percent of capacity (default: 50,70,90; quick: 70)")
		warmup      = flag.Duration("warmup", 0, "warm-up per cell, discarded (default 3s; quick 2s)")
		measure     = flag.Duration("measure", 0, "measurement per cell at loads other than 70% (default 7s; quick 5s)")
		measureMid  = flag.Duration("measure70", 0, "measurement per cell at 70% load, the headline (default 16s; quick: -measure)")
		rounds      = flag.Int("rounds", 1, "run every contender this many times per cell, in rotating order, and pool the rounds (the report shows each round's p99 range)")
		seed        = flag.Uint64("seed", 0, "load generator seed (default: random)")
		out         = flag.String("out", ".", "repository root to write BENCHMARKS.md and bench/results/ into")
		reportOnly  = flag.String("report", "", "only regenerate the report from this results JSON file")
		caddyBin    = flag.String("caddy", "", "Caddy binary to use (default: build cmd/caddy)")
		keepWorkdir = flag.String("workdir", "", "keep configs and logs in this directory (default: a temporary one, removed)")
		chains      listFlag
	)
	flag.Var(&chains, "chain", "extra backhand contender `name=fn;fn;...` (repeatable), e.g. -chain 'w3=byAge;byRandom;byWindow 3;byWait'")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "bhbench: unexpected arguments:", flag.Args())
		return 2
	}
	if *list {
		printList(os.Stdout)
		return 0
	}
	command := "go run ./cmd/bhbench"
	if len(os.Args) > 1 {
		command += " " + shellJoin(os.Args[1:])
	}

	if *reportOnly != "" {
		data, err := os.ReadFile(*reportOnly)
		if err != nil {
			return fail(err)
		}
		var res bench.Results
		if err := json.Unmarshal(data, &res); err != nil {
			return fail(err)
		}
		if err := bench.WriteReport(&res, *out); err != nil {
			return fail(err)
		}
		return 0
	}

	if *rounds < 1 || *rounds > 20 {
		return fail(fmt.Errorf("-rounds: %d is not between 1 and 20", *rounds))
	}
	o := bench.Options{Rounds: *rounds, Seed: *seed, Caddy: *caddyBin, WorkDir: *keepWorkdir, Log: os.Stdout}
	allContenders := bench.DefaultContenders()
	for _, c := range chains {
		ct, err := bench.ParseChainContender(c)
		if err != nil {
			return fail(err)
		}
		allContenders = append(allContenders[:len(allContenders)-1:len(allContenders)-1], ct, allContenders[len(allContenders)-1])
	}
	var err error
	if *quick {
		o.Scenarios, _ = bench.SelectScenarios(bench.DefaultScenarios(), []string{"heterogeneous"})
		o.Contenders = bench.QuickContenders()
		o.Loads = []float64{0.7}
		o.Warmup, o.Measure = 2*time.Second, 5*time.Second
	} else {
		o.Scenarios = bench.DefaultScenarios()
		o.Contenders = allContenders
		o.Loads = []float64{0.5, 0.7, 0.9}
		o.Warmup, o.Measure, o.MeasureMid = 3*time.Second, 7*time.Second, 16*time.Second
	}
	if *scenarios != "" {
		if o.Scenarios, err = bench.SelectScenarios(bench.DefaultScenarios(), split(*scenarios)); err != nil {
			return fail(err)
		}
	}
	if *contenders != "" {
		if o.Contenders, err = bench.SelectContenders(allContenders, split(*contenders)); err != nil {
			return fail(err)
		}
	}
	if *loads != "" {
		o.Loads = nil
		for _, s := range split(*loads) {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v <= 0 || v > 150 {
				return fail(fmt.Errorf("-loads: %q is not a percentage", s))
			}
			o.Loads = append(o.Loads, v/100)
		}
	}
	if *warmup > 0 {
		o.Warmup = *warmup
	}
	if *measure > 0 {
		o.Measure = *measure
	}
	if *measureMid > 0 {
		o.MeasureMid = *measureMid
	}
	if *keepWorkdir != "" {
		if err := os.MkdirAll(*keepWorkdir, 0o755); err != nil {
			return fail(err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, o)
	if res != nil {
		res.Meta = map[string]any{"command": command, "quick": *quick}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bhbench:", err)
		if res == nil || len(res.Cells) == 0 {
			return 1
		}
		fmt.Fprintln(os.Stderr, "bhbench: writing the partial results")
	}
	if werr := bench.WriteReport(res, *out); werr != nil {
		return fail(werr)
	}
	fmt.Printf("done in %s; wrote %s and %s\n", res.Duration.Round(time.Second),
		filepath.Join(*out, "BENCHMARKS.md"), filepath.Join(*out, bench.ResultsDir))
	if err != nil {
		return 1
	}
	return 0
}

// printList shows what -scenarios and -contenders accept.
func printList(w io.Writer) {
	fmt.Fprintln(w, "scenarios:")
	for _, s := range bench.DefaultScenarios() {
		fmt.Fprintf(w, "  %-16s %s\n", s.Name, s.Desc)
	}
	fmt.Fprintln(w, "contenders (nodes: the app nodes' profile):")
	for _, c := range bench.DefaultContenders() {
		fmt.Fprintf(w, "  %-24s nodes %-8s %s\n", c.Name, c.Nodes, c.Desc)
	}
}

func split(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// shellJoin quotes args for a command line.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "bhbench:", err)
	return 1
}
