// Command bhfault is the fault-injection harness: it builds cmd/caddy, runs
// four Caddy nodes on 127.0.0.1-4 (each fronting an application that counts
// what it serves by request id), drives open-loop load through them and
// injects one fault at a time, in the directive deployment (the backhand
// directive on every node) and the balancer deployment (a fifth Caddy with
// dynamic backhand and lb_policy backhand), and prints a table per fault.
// See FAULTS.md.
//
//	go run ./cmd/bhfault                       # every default fault, both deployments (~20 min)
//	go run ./cmd/bhfault -faults death,restart -deploy directive
//	go run ./cmd/bhfault -faults soak          # 10 min of load and reloads
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/internal/fault"
)

func main() {
	o := fault.DefaultOptions()
	faults := flag.String("faults", strings.Join(o.Faults, ","), "faults to run, comma-separated:\n"+fault.FaultHelp())
	deploy := flag.String("deploy", strings.Join(o.Deployments, ","), "deployments: directive, balancer")
	quick := flag.Bool("quick", false, "the quick mode's settings (death, restart, drain, reload, rotate; short; directive)")
	flag.IntVar(&o.Nodes, "nodes", o.Nodes, "app nodes (the last is the faulty one)")
	flag.IntVar(&o.Workers, "workers", o.Workers, "workers per application")
	flag.DurationVar(&o.Mean, "mean", o.Mean, "mean service time (exponential)")
	flag.Float64Var(&o.Load, "load", o.Load, "offered load, share of the nodes' capacity")
	flag.Float64Var(&o.Post, "post", o.Post, "share of POST requests")
	flag.DurationVar(&o.Timeout, "timeout", o.Timeout, "client timeout")
	flag.DurationVar(&o.MaxAge, "max-age", o.MaxAge, "backhand max_age")
	flag.IntVar(&o.BalancerRetries, "balancer-retries", o.BalancerRetries, "lb_retries of the balancer")
	flag.DurationVar(&o.ResponseHeaderTimeout, "response-header-timeout", 0, "response_header_timeout of the proxy to peers (directive block, balancer); hang-bounded: default 2s")
	flag.BoolVar(&o.Handoff, "handoff", false, "every Caddy's servers get the backhand_handoff listener wrapper (a reload answers what the old server read unanswered)")
	flag.BoolVar(&o.BrowserResend, "browser-resend", false, "clients resend any request once when a kept-alive connection broke before a response header (as browsers and curl do)")
	flag.IntVar(&o.FailureDetails, "failure-details", o.FailureDetails, "failed requests described in the notes (error, log lines)")
	flag.DurationVar(&o.Warmup, "warmup", o.Warmup, "load before the measured baseline")
	flag.DurationVar(&o.Before, "before", o.Before, "baseline before each fault")
	flag.DurationVar(&o.After, "after", o.After, "load after each fault")
	flag.DurationVar(&o.DeathFor, "death", o.DeathFor, "death: the 'during' phase after the kill")
	flag.DurationVar(&o.HangFor, "hang", o.HangFor, "hang: SIGSTOP to SIGCONT")
	flag.DurationVar(&o.PartitionFor, "partition", o.PartitionFor, "each partition")
	flag.DurationVar(&o.LossFor, "loss", o.LossFor, "each announcement-loss phase")
	flag.DurationVar(&o.ReloadFor, "reload", o.ReloadFor, "reload storm length")
	flag.DurationVar(&o.ReloadEvery, "reload-every", o.ReloadEvery, "reload storm period")
	flag.DurationVar(&o.DrainMax, "drain-max", o.DrainMax, "drain: longest wait for the node to show idle")
	flag.DurationVar(&o.SkewFor, "skew-for", o.SkewFor, "skew: how long")
	flag.DurationVar(&o.Skew, "skew", o.Skew, "skew: how far behind the node's clock is (> replay window)")
	flag.DurationVar(&o.ReplayWindow, "replay-window", o.ReplayWindow, "skew: replay_window of every node")
	flag.DurationVar(&o.SoakFor, "soak", o.SoakFor, "soak length")
	flag.DurationVar(&o.SoakReload, "soak-reload", o.SoakReload, "soak: reload period")
	flag.StringVar(&o.Dir, "dir", "", "work directory (default: a temporary one, removed)")
	flag.BoolVar(&o.KeepDir, "keep", false, "keep the work directory (logs)")
	md := flag.String("md", "", "also write the tables as Markdown to this file")
	flag.Parse()
	if *quick {
		q := fault.QuickOptions()
		q.Dir, q.KeepDir, q.BrowserResend, q.FailureDetails = o.Dir, o.KeepDir, o.BrowserResend, o.FailureDetails
		o = q
	} else {
		o.Faults = split(*faults)
		o.Deployments = split(*deploy)
	}
	o.Log = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("bhfault: %d nodes x %d workers x %v mean = %.0f req/s capacity; load %.0f%% = %.0f req/s, %.0f%% POST\n",
		o.Nodes, o.Workers, o.Mean, o.Capacity(), o.Load*100, o.Rate(), o.Post*100)
	t0 := time.Now()
	reps, err := fault.Run(ctx, o)
	fmt.Printf("\n## Results (%s, %v)\n\nCommand: `go run ./cmd/bhfault %s`\n\n", time.Now().Format("2006-01-02"), time.Since(t0).Round(time.Second), strings.Join(os.Args[1:], " "))
	fault.WriteMarkdown(os.Stdout, reps)
	if *md != "" {
		f, ferr := os.Create(*md)
		if ferr == nil {
			fmt.Fprintf(f, "Command: `go run ./cmd/bhfault %s` (%v)\n\n", strings.Join(os.Args[1:], " "), time.Since(t0).Round(time.Second))
			fault.WriteMarkdown(f, reps)
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bhfault:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
