package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Demo is the local cluster that cmd/cluster starts and the README shows:
// Nodes nodes on 127.0.0.1 to 127.0.0.<Nodes> that announce to each other,
// each with an app site that shows its status page at /backhand/ and
// reverse-proxies everything else to the node's application (an App that
// takes Work per request on average and answers "served by nodeN"). Its
// Configs are the one place the demo's Caddyfiles come from, and its
// StartApps the one place its applications come from, so that a test can
// start exactly what a user runs.
//
// Ports, for node N at 127.0.0.N: BasePort is node1's entry point (mode
// "entry"), BasePort+1 every node's app site, BasePort+2 every node's
// application (with Work > 0), AdminPort+N-1 nodeN's admin API on
// 127.0.0.1, and UDPPort (UDP) every node's announcements. With the
// defaults: 8080, 8081, 8082, 2019-2021 and 4445.
//
// The demo pins no figures (no speed, no capacity): what it shows is the
// plugin balancing with what it measures and learns by itself.
type Demo struct {
	// Nodes is the number of nodes (1-254).
	Nodes int

	// BasePort is the port of node1's entry point (mode "entry"); every
	// node's app site listens on BasePort+1 and its application on
	// BasePort+2 (AppPort), at the node's own address.
	BasePort int

	// AdminPort is node1's admin API port on 127.0.0.1; nodeN uses
	// AdminPort+N-1.
	AdminPort int

	// UDPPort is the port announcements are received on, at each node's
	// address.
	UDPPort int

	// Key is the shared announcement key; empty means insecure_no_key
	// (cmd/cluster always sets one).
	Key string

	// Interval is the announcement interval.
	Interval time.Duration

	// Policy is the entry point's lb_policy (mode "entry").
	Policy string

	// Mode is "entry": node1 has an entry point that reverse-proxies to
	// `dynamic backhand` with lb_policy Policy; or "peers": every node's
	// app site runs the backhand directive, so every node balances.
	Mode string

	// Work is the mean time each node's application takes per request
	// (exponentially distributed around it, so that requests differ). A
	// balancer can only tell nodes apart by what is in flight and how long
	// it takes, which an instant answer never shows. Zero starts no
	// application: the app sites answer at once with Caddy's respond.
	Work time.Duration
}

// DefaultDemo is the demo that `go run ./cmd/cluster` starts without flags.
func DefaultDemo() Demo {
	return Demo{
		Nodes:     3,
		BasePort:  8080,
		AdminPort: 2019,
		UDPPort:   4445,
		Interval:  time.Second,
		Policy:    "backhand",
		Mode:      "entry",
		Work:      20 * time.Millisecond,
	}
}

// DemoRetries is the entry point's lb_retries: a request whose node has
// died (but is still listed, until max_age) is tried on another one, so a
// dead node costs no request.
const DemoRetries = 2

// Validate checks the options that the Caddyfiles cannot.
func (d Demo) Validate() error {
	switch {
	case d.Mode != "entry" && d.Mode != "peers":
		return fmt.Errorf("mode %q: want entry or peers", d.Mode)
	case d.Nodes < 1 || d.Nodes > 254:
		return fmt.Errorf("%d nodes: want 1-254", d.Nodes)
	case d.BasePort < 1 || d.AppPort() > 65535:
		return fmt.Errorf("base port %d: want 1-65533", d.BasePort)
	case d.AdminPort < 1 || d.AdminPort+d.Nodes-1 > 65535:
		return fmt.Errorf("admin port %d: too large for %d nodes", d.AdminPort, d.Nodes)
	case d.AdminPort <= d.AppPort() && d.BasePort <= d.AdminPort+d.Nodes-1:
		return fmt.Errorf("admin port %d: admin ports overlap the entry, app site and application ports %d-%d", d.AdminPort, d.BasePort, d.AppPort())
	case d.UDPPort < 1 || d.UDPPort > 65535:
		return fmt.Errorf("UDP port %d: want 1-65535", d.UDPPort)
	case d.Key != "" && len(d.Key) < 16:
		return errors.New("key: at least 16 bytes")
	case d.Interval < 10*time.Millisecond:
		return fmt.Errorf("interval %v: at least 10ms", d.Interval)
	case d.Mode == "entry" && d.Policy == "":
		return errors.New("policy: empty")
	case d.Work < 0:
		return fmt.Errorf("work %v: negative", d.Work)
	}
	return nil
}

// AppPort is the port of every node's application, BasePort+2.
func (d Demo) AppPort() int { return d.BasePort + 2 }

// host is node i's (1-based) loopback address.
func (d Demo) host(i int) string { return NodeConfig{Index: i}.Host() }

// appAddr is node i's (1-based) application address, host:port.
func (d Demo) appAddr(i int) string {
	return net.JoinHostPort(d.host(i), strconv.Itoa(d.AppPort()))
}

// StartApps starts every node's application (see App), node1 first, with
// node N's draws seeded by N; with Work 0 it starts none. Close them once
// the nodes have stopped, so that no request in flight loses its app.
func (d Demo) StartApps() (Apps, error) {
	if d.Work == 0 {
		return nil, nil
	}
	var apps Apps
	for i := 1; i <= d.Nodes; i++ {
		a, err := StartApp(d.appAddr(i), "node"+strconv.Itoa(i), d.Work, uint64(i))
		if err != nil {
			return nil, errors.Join(err, apps.Close(time.Second))
		}
		apps = append(apps, a)
	}
	return apps, nil
}

// CheckFree checks that every address the demo will listen on is free:
// the nodes' (NodeConfig.CheckFree) and, with Work, the applications'.
func (d Demo) CheckFree() error {
	for _, c := range d.Configs() {
		if err := c.CheckFree(); err != nil {
			return err
		}
		if c.AppUpstream == "" {
			continue
		}
		ln, err := net.Listen("tcp", c.AppUpstream)
		if err != nil {
			return fmt.Errorf("cluster: %s: TCP %s (its application) is in use: %w", c.NodeName(), c.AppUpstream, err)
		}
		ln.Close()
	}
	return nil
}

// Configs returns the nodes' configurations, node1 first.
func (d Demo) Configs() []NodeConfig {
	peers := make([]string, d.Nodes)
	for i := range peers {
		peers[i] = net.JoinHostPort(d.host(i+1), strconv.Itoa(d.UDPPort))
	}
	configs := make([]NodeConfig, d.Nodes)
	for i := range configs {
		c := NodeConfig{
			Index:     i + 1,
			HTTPPort:  d.BasePort + 1,
			UDPPort:   d.UDPPort,
			AdminPort: d.AdminPort + i,
			Cluster:   "local",
			Peers:     peers,
			Key:       d.Key,
			Interval:  d.Interval,
			// Every node shows its view of the cluster at /backhand/.
			AppDirectives: []string{"backhand_status /backhand/*"},
		}
		if d.Work > 0 {
			c.AppUpstream = d.appAddr(i + 1)
		}
		switch {
		case d.Mode == "entry" && i == 0:
			c.Entry = true
			c.EntryPort = d.BasePort
			c.LBPolicy = d.Policy
			c.ProxyOptions = []string{"lb_retries " + strconv.Itoa(DemoRetries)}
		case d.Mode == "peers":
			c.AppDirectives = append(c.AppDirectives, "@app not path /backhand/*", "backhand @app")
		}
		configs[i] = c
	}
	return configs
}
