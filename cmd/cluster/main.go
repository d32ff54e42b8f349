// Command cluster runs a local caddy-backhand cluster for trying it out:
//
//	go run ./cmd/cluster
//
// It builds cmd/caddy, starts N Caddy nodes on 127.0.0.1 to 127.0.0.N that
// announce to each other over UDP, each with an app site that responds
// "served by nodeN", and makes node1 an entry point on 127.0.0.1:8080 that
// reverse-proxies to the live peers (`dynamic backhand`). It waits until every
// node sees all the others, prints the URLs, and runs until Ctrl-C or
// SIGTERM, then stops every node. If a node dies, it stops the others too
// and keeps the logs.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"syscall"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

func main() {
	os.Exit(run())
}

type options struct {
	nodes     int
	basePort  int
	adminPort int
	udpPort   int
	key       string
	keepLogs  bool
	interval  time.Duration
	policy    string
	mode      string
}

func parseFlags() options {
	var o options
	flag.IntVar(&o.nodes, "nodes", 3, "number of nodes, on 127.0.0.1 to 127.0.0.N (1-254)")
	flag.IntVar(&o.basePort, "base-port", 8080, "entry point port on node1; each node's app site listens on base-port+1")
	flag.IntVar(&o.adminPort, "admin-port", 2019, "admin API port of node1 on 127.0.0.1; nodeN uses admin-port+N-1")
	flag.IntVar(&o.udpPort, "udp-port", 4445, "UDP port announcements are received on, at each node's address")
	flag.StringVar(&o.key, "key", "", "shared announcement key, at least 16 bytes (default: a random 32-hex key)")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the logs and Caddyfiles after stopping")
	flag.DurationVar(&o.interval, "interval", time.Second, "announcement interval")
	flag.StringVar(&o.policy, "policy", "round_robin", "lb_policy of the entry point (e.g. round_robin, least_conn, backhand)")
	flag.StringVar(&o.mode, "mode", "entry", "entry: node1 is an entry point proxying to the live nodes (dynamic backhand);\npeers: every node's app site runs the backhand directive, so every node is an entry point")
	flag.Parse()
	return o
}

func (o options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	case o.mode != "entry" && o.mode != "peers":
		return fmt.Errorf("-mode %q: want entry or peers", o.mode)
	case o.nodes < 1 || o.nodes > 254:
		return fmt.Errorf("-nodes %d: want 1-254", o.nodes)
	case o.basePort < 1 || o.basePort+1 > 65535:
		return fmt.Errorf("-base-port %d: want 1-65534", o.basePort)
	case o.adminPort < 1 || o.adminPort+o.nodes-1 > 65535:
		return fmt.Errorf("-admin-port %d: too large for %d nodes", o.adminPort, o.nodes)
	case o.adminPort <= o.basePort+1 && o.basePort <= o.adminPort+o.nodes-1:
		return fmt.Errorf("-admin-port %d: admin ports overlap the entry and app ports %d-%d", o.adminPort, o.basePort, o.basePort+1)
	case o.udpPort < 1 || o.udpPort > 65535:
		return fmt.Errorf("-udp-port %d: want 1-65535", o.udpPort)
	case o.key != "" && len(o.key) < 16:
		return fmt.Errorf("-key: at least 16 bytes")
	case o.interval < 10*time.Millisecond:
		return fmt.Errorf("-interval %v: at least 10ms", o.interval)
	}
	return nil
}

func run() int {
	o := parseFlags()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 2
	}
	if o.key == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		o.key = hex.EncodeToString(b[:])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	dir, err := os.MkdirTemp("", "backhand-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	var nodes []*cluster.Node
	keep := o.keepLogs
	defer func() {
		if err := cluster.StopAll(nodes, 5*time.Second); err != nil {
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

	configs := make([]cluster.NodeConfig, o.nodes)
	var peers []string
	for i := range configs {
		peers = append(peers, net.JoinHostPort("127.0.0."+strconv.Itoa(i+1), strconv.Itoa(o.udpPort)))
	}
	names := make([]string, o.nodes)
	for i := range configs {
		configs[i] = cluster.NodeConfig{
			Index:     i + 1,
			HTTPPort:  o.basePort + 1,
			UDPPort:   o.udpPort,
			AdminPort: o.adminPort + i,
			Cluster:   "local",
			Peers:     peers,
			Key:       o.key,
			Interval:  o.interval,
			Entry:     i == 0 && o.mode == "entry",
			EntryPort: o.basePort,
			LBPolicy:  o.policy,
			// Every node shows its view of the cluster at /backhand/.
			AppDirectives: []string{"backhand_status /backhand/*"},
		}
		if o.mode == "peers" {
			configs[i].AppDirectives = append(configs[i].AppDirectives, "@app not path /backhand/*", "backhand @app")
		}
		names[i] = configs[i].NodeName()
	}
	for _, cfg := range configs {
		if err := cfg.CheckFree(); err != nil {
			return fail(fmt.Errorf("%w\n(another cluster running? choose other ports with -base-port, -admin-port and -udp-port)", err))
		}
	}
	fmt.Printf("building caddy from cmd/caddy into %s ...\n", dir)
	bin, err := cluster.Build(ctx, dir)
	if err != nil {
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
		err := cluster.Poll(ctx, 3*o.interval+10*time.Second, 50*time.Millisecond, func() error {
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

	fmt.Printf("\nbackhand cluster %q is up: %d nodes, interval %v\n", "local", len(nodes), o.interval)
	for i, n := range nodes {
		fmt.Printf("  %-7s app %s  admin %s  sees %s\n", n.Name(), n.Config.AppURL(), n.Config.AdminURL(), views[i].Summary())
	}
	if o.mode == "entry" {
		fmt.Printf("\nEntry point (%s, lb_policy %s):\n  curl %s\n", nodes[0].Name(), o.policy, nodes[0].Config.EntryURL())
	} else {
		fmt.Printf("\nEvery node is an entry point (the backhand directive, default chain); e.g.:\n  curl %s\n", nodes[0].Config.AppURL())
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
	fmt.Printf("\nPress Ctrl-C to stop.\n")

	// Wait for a signal or for a node to die.
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
	for _, n := range nodes {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(n.Done())})
	}
	chosen, _, _ := reflect.Select(cases)
	if chosen > 0 {
		n := nodes[chosen-1]
		return fail(fmt.Errorf("%s exited unexpectedly (%v); stopping the others. Its log ends:\n%s",
			n.Name(), n.ExitErr(), n.LogTail(20)))
	}
	// A second Ctrl-C now kills the runner, and with it the nodes.
	stop()
	fmt.Printf("\nstopping %d nodes ...\n", len(nodes))
	return 0
}
