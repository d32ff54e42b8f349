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
// each with an app site that responds "served by nodeN" and shows its
// status page at /backhand/. Its Configs are the one place the demo's
// Caddyfiles come from, so that a test can start exactly what a user runs.
//
// The demo pins no figures (no speed, no capacity): what it shows is the
// plugin balancing with what it measures and learns by itself.
type Demo struct {
	// Nodes is the number of nodes (1-254).
	Nodes int

	// BasePort is the port of node1's entry point (mode "entry"); every
	// node's app site listens on BasePort+1 at its own address.
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
	case d.BasePort < 1 || d.BasePort+1 > 65535:
		return fmt.Errorf("base port %d: want 1-65534", d.BasePort)
	case d.AdminPort < 1 || d.AdminPort+d.Nodes-1 > 65535:
		return fmt.Errorf("admin port %d: too large for %d nodes", d.AdminPort, d.Nodes)
	case d.AdminPort <= d.BasePort+1 && d.BasePort <= d.AdminPort+d.Nodes-1:
		return fmt.Errorf("admin port %d: admin ports overlap the entry and app ports %d-%d", d.AdminPort, d.BasePort, d.BasePort+1)
	case d.UDPPort < 1 || d.UDPPort > 65535:
		return fmt.Errorf("UDP port %d: want 1-65535", d.UDPPort)
	case d.Key != "" && len(d.Key) < 16:
		return errors.New("key: at least 16 bytes")
	case d.Interval < 10*time.Millisecond:
		return fmt.Errorf("interval %v: at least 10ms", d.Interval)
	case d.Mode == "entry" && d.Policy == "":
		return errors.New("policy: empty")
	}
	return nil
}

// Configs returns the nodes' configurations, node1 first.
func (d Demo) Configs() []NodeConfig {
	peers := make([]string, d.Nodes)
	for i := range peers {
		peers[i] = net.JoinHostPort("127.0.0."+strconv.Itoa(i+1), strconv.Itoa(d.UDPPort))
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
