// Command cluster runs a local caddy-backhand cluster for trying it out:
//
//	go run ./cmd/cluster
//
// It builds cmd/caddy, starts N Caddy nodes on 127.0.0.1 to 127.0.0.N that
// announce to each other over UDP, each with an app site (port 8081) that
// reverse-proxies to the node's own application: a small server run by
// this program on 127.0.0.N:8082 that takes ~20ms per request (-work;
// exponentially distributed, so requests differ) and answers "served by
// nodeN". It makes node1 an entry point on 127.0.0.1:8080 that
// reverse-proxies to the live peers (`dynamic backhand`) and balances with
// the plugin's policy (`lb_policy backhand`; -policy picks another), trying
// another node if one fails (`lb_retries 2`). With -mode peers, every
// node's app site runs the `backhand` directive instead. With -work 0 there
// is no application and the app sites answer at once with Caddy's respond:
// then nothing is ever in flight, and a balancer sees only ties. The nodes
// and applications come from cluster.Demo, which the integration tests
// start too. Admin APIs are on 127.0.0.1:2019 on, announcements on UDP
// 4445 at each node's address. It
// waits until every node sees all the others, prints the URLs, and runs
// until Ctrl-C or SIGTERM, then stops every node. If a node dies (try
// kill -9 on its pid, printed at start), it reports the death, keeps the
// others serving, and starts the node again (a new incarnation) when you
// type r and Enter, or by itself after -restart (e.g. -restart 10s). See
// FAULTS.md for a failover walk-through.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

func main() {
	os.Exit(run())
}

type options struct {
	cluster.Demo
	keepLogs bool
	restart  time.Duration
}

func parseFlags() options {
	o := options{Demo: cluster.DefaultDemo()}
	flag.IntVar(&o.Nodes, "nodes", o.Nodes, "number of nodes, on 127.0.0.1 to 127.0.0.N (1-254)")
	flag.IntVar(&o.BasePort, "base-port", o.BasePort, "entry point port on node1; each node's app site listens on base-port+1, its application on base-port+2")
	flag.IntVar(&o.AdminPort, "admin-port", o.AdminPort, "admin API port of node1 on 127.0.0.1; nodeN uses admin-port+N-1")
	flag.IntVar(&o.UDPPort, "udp-port", o.UDPPort, "UDP port announcements are received on, at each node's address")
	flag.StringVar(&o.Key, "key", "", "shared announcement key, at least 16 bytes (default: a random 32-hex key)")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the logs and Caddyfiles after stopping")
	flag.DurationVar(&o.restart, "restart", 0, "start a node that died again after this long (0: only when you type r and Enter)")
	flag.DurationVar(&o.Interval, "interval", o.Interval, "announcement interval")
	flag.StringVar(&o.Policy, "policy", o.Policy, "lb_policy of the entry point: backhand (the plugin's own balancing), or one of Caddy's, e.g. round_robin or least_conn")
	flag.DurationVar(&o.Work, "work", o.Work, "mean time each node's application takes per request (exponentially distributed);\n0: no application, the app sites answer at once with Caddy's respond")
	flag.StringVar(&o.Mode, "mode", o.Mode, "entry: node1 is an entry point proxying to the live nodes (dynamic backhand, lb_policy from -policy);\npeers: every node's app site runs the backhand directive, so every node is an entry point")
	flag.Parse()
	return o
}

func (o options) check() error {
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}
	if o.restart < 0 {
		return fmt.Errorf("restart %v: negative", o.restart)
	}
	return o.Validate()
}

func run() int {
	o := parseFlags()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 2
	}
	if o.Key == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		o.Key = hex.EncodeToString(b[:])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	dir, err := os.MkdirTemp("", "backhand-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	var nodes []*cluster.Node
	var apps cluster.Apps
	keep := o.keepLogs
	defer func() {
		if err := cluster.StopAll(nodes, 5*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
		}
		// After the nodes, so that no request in flight loses its app.
		if err := apps.Close(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
		}
		if keep {
			fmt.Printf("logs kept in %s\n", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		keep = keep || len(nodes) > 0
		return 1
	}

	configs := o.Configs()
	names := make([]string, len(configs))
	for i, cfg := range configs {
		names[i] = cfg.NodeName()
	}
	if err := o.CheckFree(); err != nil {
		return fail(fmt.Errorf("%w\n(another cluster running? choose other ports with -base-port, -admin-port and -udp-port)", err))
	}
	fmt.Printf("building caddy from cmd/caddy into %s ...\n", dir)
	bin, err := cluster.Build(ctx, dir)
	if err != nil {
		return fail(err)
	}

	if apps, err = o.StartApps(); err != nil {
		return fail(err)
	}
	for _, cfg := range configs {
		n, err := cluster.Start(bin, dir, cfg, nil)
		if err != nil {
			return fail(err)
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if err := n.WaitReady(ctx, 30*time.Second); err != nil {
			return fail(err)
		}
	}
	fmt.Printf("%d nodes started; waiting until each sees all %d ...\n", len(nodes), len(nodes))
	views := make([]*cluster.PeersView, len(nodes))
	for i, n := range nodes {
		err := cluster.Poll(ctx, 3*o.Interval+10*time.Second, 50*time.Millisecond, func() error {
			if n.Exited() {
				return cluster.Permanent(fmt.Errorf("%s exited: %v\n%s", n.Name(), n.ExitErr(), n.LogTail(20)))
			}
			v, err := n.Peers(ctx)
			if err != nil {
				return err
			}
			views[i] = v
			return v.SeesAll(names...)
		})
		if err != nil {
			return fail(err)
		}
	}

	fmt.Printf("\nbackhand cluster %q is up: %d nodes, interval %v\n", "local", len(nodes), o.Interval)
	for i, n := range nodes {
		fmt.Printf("  %-7s pid %-7d app %s  admin %s  sees %s\n", n.Name(), n.Pid(), n.Config.AppURL(), n.Config.AdminURL(), views[i].Summary())
	}
	if o.Work > 0 {
		fmt.Printf("Each node's app takes ~%v per request (exponentially distributed; -work): its app site proxies to\nits application, run by this program at the node's address, port %d (e.g. %s).\n",
			o.Work, o.AppPort(), nodes[0].Config.AppUpstream)
	} else {
		fmt.Printf("Each node's app answers at once (-work 0: Caddy's respond), so nothing is ever in flight.\n")
	}
	if o.Mode == "entry" {
		entry := nodes[0]
		fmt.Printf("\nEntry point (%s, lb_policy %s, lb_retries %d):\n", entry.Name(), o.Policy, cluster.DemoRetries)
		fmt.Printf("  for i in 1 2 3 4 5 6; do curl -s %s; echo; done\n", entry.Config.EntryURL())
		if o.Policy == "backhand" {
			fmt.Printf("Its decisions and what it sent each node (decisions, sent_by_this_node):\n  curl %s/backhand/peers\n", entry.Config.AdminURL())
		} else {
			fmt.Printf("(Caddy's %s chooses the node; the plugin only lists the live ones, so its decision counters stay 0.)\n", o.Policy)
		}
	} else {
		n := nodes[min(1, len(nodes)-1)]
		fmt.Printf("\nEvery node balances the requests to its app site (the backhand directive, default chain); e.g.:\n")
		fmt.Printf("  for i in 1 2 3 4 5 6; do curl -s %s; echo; done\n", n.Config.AppURL())
		fmt.Printf("Its decisions and what it sent each node (decisions, sent_by_this_node):\n  curl %s/backhand/peers\n", n.Config.AdminURL())
	}
	fmt.Printf("Status pages (open in a browser):\n")
	for _, n := range nodes {
		fmt.Printf("  %sbackhand/\n", n.Config.AppURL())
	}
	fmt.Printf("Peer tables (admin API):\n")
	for _, n := range nodes {
		fmt.Printf("  curl %s/backhand/peers\n", n.Config.AdminURL())
	}
	fmt.Printf("Logs: %s/node*/caddy.log", dir)
	if !o.keepLogs {
		fmt.Printf(" (removed on exit; keep them with -keep-logs)")
	}
	fmt.Println()
	fmt.Printf("\nPress Ctrl-C to stop. Kill a node to see the others take over (e.g. kill -9 %d, %s's Caddy);\n", nodes[len(nodes)-1].Pid(), nodes[len(nodes)-1].Name())
	if o.restart > 0 {
		fmt.Printf("a node that dies is started again after %v (or type r and Enter).\n", o.restart)
	} else {
		fmt.Printf("type r and Enter to start a node that died again.\n")
	}
	return supervise(ctx, stop, bin, dir, o, nodes)
}

// supervise runs until ctx ends: it reports a node that dies, keeps the
// others serving, and starts the dead ones again on "r" + Enter or after
// o.restart. nodes is updated in place, so that the caller stops the new
// processes.
func supervise(ctx context.Context, stop func(), bin, dir string, o options, nodes []*cluster.Node) int {
	died := make(chan int)
	watch := func(i int, n *cluster.Node) {
		go func() {
			select {
			case <-n.Done():
				select {
				case died <- i:
				case <-ctx.Done():
				}
			case <-ctx.Done():
			}
		}()
	}
	for i, n := range nodes {
		watch(i, n)
	}
	restart := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "r" {
				select {
				case restart <- struct{}{}:
				default:
				}
			}
		}
	}()
	dead := map[int]bool{}
	for {
		select {
		case <-ctx.Done():
			// A second Ctrl-C now kills the runner, and with it the nodes.
			stop()
			fmt.Printf("\nstopping %d nodes ...\n", len(nodes))
			return 0
		case i := <-died:
			n := nodes[i]
			dead[i] = true
			fmt.Printf("\n%s (pid %d) died: %v. Its log ends:\n%s\n", n.Name(), n.Pid(), n.ExitErr(), indent(n.LogTail(5)))
			alive := len(nodes) - len(dead)
			if o.Mode == "entry" && i == 0 {
				fmt.Printf("It was the entry point: %s no longer answers; the other %d nodes keep serving on their app sites.\n", nodes[0].Config.EntryURL(), alive)
			} else {
				fmt.Printf("The other %d nodes keep serving; their peers drop %s once its last announcement is older than max_age\n(3 intervals), or at once after a request to it fails.\n", alive, n.Name())
			}
			if o.restart > 0 {
				fmt.Printf("Starting it again in %v (or type r and Enter).\n", o.restart)
				time.AfterFunc(o.restart, func() {
					select {
					case restart <- struct{}{}:
					default:
					}
				})
			} else {
				fmt.Printf("Type r and Enter to start it again.\n")
			}
		case <-restart:
			if len(dead) == 0 {
				fmt.Printf("every node is running\n")
				continue
			}
			for i := range nodes {
				if !dead[i] {
					continue
				}
				n, err := cluster.Start(bin, dir, nodes[i].Config, nil)
				if err != nil {
					fmt.Fprintf(os.Stderr, "restarting %s: %v\n", nodes[i].Name(), err)
					continue
				}
				nodes[i] = n
				delete(dead, i)
				if err := n.WaitReady(ctx, 30*time.Second); err != nil {
					fmt.Fprintf(os.Stderr, "%v\n", err)
				}
				watch(i, n)
				inc := ""
				if v, err := n.Peers(ctx); err == nil {
					inc = " incarnation " + v.Incarnation
				}
				fmt.Printf("%s started again: pid %d%s; its peers list it live from its first announcement.\n", n.Name(), n.Pid(), inc)
			}
		}
	}
}

// indent indents every line of s by four spaces.
func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
