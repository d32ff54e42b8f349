// Package cluster runs real Caddy processes built with caddy-backhand, for
// the integration tests and the local-cluster command: it builds cmd/caddy,
// writes each node's Caddyfile, starts and stops the processes, and talks to
// their admin API.
//
// Everything listens on loopback addresses (127.0.0.0/8), or inside a
// network namespace of its own (see Netns).
package cluster

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// NodeConfig describes one node. Its Caddyfile has a global options block
// with the admin address and the `backhand` option, an app site on
// Host():HTTPPort that counts its requests with backhand_track and responds
// "served by <name>" (or reverse-proxies to AppUpstream), and, for an entry
// point, a site on Host():EntryPort that reverse-proxies to `dynamic
// backhand`.
type NodeConfig struct {
	// Name is the backhand node name. Default: "node<Index>".
	Name string

	// Index picks the node's loopback address 127.0.0.<Index> (1-254).
	Index int

	// HTTPPort is the port of the app site.
	HTTPPort int

	// UDPPort is the port announcements are received on.
	UDPPort int

	// AdminPort is the port of the admin API. It listens on 127.0.0.1, as
	// Caddy accepts only "localhost", "127.0.0.1" and "::1" as Host of a
	// loopback admin endpoint.
	AdminPort int

	// Cluster is the backhand cluster name. Default: "test".
	Cluster string

	// Peers are the unicast peers (host:port). Ignored with Multicast.
	Peers []string

	// Key is the shared secret. Empty means insecure_no_key.
	Key string

	// Interval and MaxAge are the announcement interval and max_age;
	// zero leaves the plugin's defaults.
	Interval time.Duration
	MaxAge   time.Duration

	// Tags are the node's tags.
	Tags []string

	// Multicast, if set (group:port, e.g. "239.255.44.45:4446"), makes the
	// node listen on udp/:UDPPort and announce to the group with ttl 1
	// instead of to Peers. UDPPort must be the group's port.
	Multicast string

	// ExtraGlobal are lines added to the global options block.
	ExtraGlobal []string

	// ExtraBackhand are lines added to the `backhand` block.
	ExtraBackhand []string

	// AppDirectives are lines added to the app site before its respond
	// (or reverse_proxy), e.g. a `backhand { ... }` block that makes the
	// node an entry point.
	AppDirectives []string

	// AppUpstream, if set (host:port), is the application behind the app
	// site: the site ends with `reverse_proxy <AppUpstream>` instead of
	// responding itself, so that its requests take the application's time.
	// Something else must listen there (see App); CheckFree does not check
	// it, as it is running by the time the node starts.
	AppUpstream string

	// ExtraSites are site blocks appended to the Caddyfile.
	ExtraSites []string

	// Entry makes the node an entry point: a site on Host():EntryPort with
	// `reverse_proxy { dynamic backhand; lb_policy <LBPolicy> }`.
	Entry     bool
	EntryPort int

	// LBPolicy is the entry point's lb_policy. Default: round_robin.
	LBPolicy string

	// ProxyOptions are lines added inside the entry point's reverse_proxy
	// block, e.g. "lb_retries 2".
	ProxyOptions []string

	// EntryDirectives are lines added to the entry point's site block,
	// e.g. a handle_errors block.
	EntryDirectives []string

	// GracePeriod bounds Caddy's graceful shutdown (the grace_period
	// global option). Default: 2s.
	GracePeriod time.Duration

	// Advertise, if set (host:port), is the address the node advertises
	// instead of AppAddr: e.g. a relay in front of the app site, which a
	// fault-injection harness can cut.
	Advertise string

	// Wrap, if set, is a command that Caddy runs under: Start executes
	// Wrap[0] with Wrap[1:] followed by Caddy's own command line (e.g.
	// faketime -f +30s).
	Wrap []string
}

// Host is the node's loopback address, 127.0.0.<Index>.
func (c NodeConfig) Host() string { return "127.0.0." + strconv.Itoa(c.Index) }

// NodeName is Name or its default.
func (c NodeConfig) NodeName() string {
	if c.Name != "" {
		return c.Name
	}
	return "node" + strconv.Itoa(c.Index)
}

// AppAddr is host:port of the app site, which the node advertises.
func (c NodeConfig) AppAddr() string { return net.JoinHostPort(c.Host(), strconv.Itoa(c.HTTPPort)) }

// AdvertiseAddr is Advertise or, if unset, AppAddr.
func (c NodeConfig) AdvertiseAddr() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	return c.AppAddr()
}

// AppURL is the URL of the app site.
func (c NodeConfig) AppURL() string { return "http://" + c.AppAddr() + "/" }

// EntryURL is the URL of the entry point (empty unless Entry).
func (c NodeConfig) EntryURL() string {
	if !c.Entry {
		return ""
	}
	return "http://" + net.JoinHostPort(c.Host(), strconv.Itoa(c.EntryPort)) + "/"
}

// AdminAddr is host:port of the admin API.
func (c NodeConfig) AdminAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.AdminPort))
}

// AdminURL is the base URL of the admin API, without a trailing slash.
func (c NodeConfig) AdminURL() string { return "http://" + c.AdminAddr() }

// UDPAddr is host:port this node receives unicast announcements on.
func (c NodeConfig) UDPAddr() string { return net.JoinHostPort(c.Host(), strconv.Itoa(c.UDPPort)) }

// Validate checks what Caddyfile cannot: that the node stays on loopback
// and its ports are set.
func (c NodeConfig) Validate() error {
	if c.Index < 1 || c.Index > 254 {
		return fmt.Errorf("cluster: node index %d is not 1-254", c.Index)
	}
	for _, p := range []struct {
		name string
		port int
	}{{"HTTPPort", c.HTTPPort}, {"UDPPort", c.UDPPort}, {"AdminPort", c.AdminPort}} {
		if p.port < 1 || p.port > 65535 {
			return fmt.Errorf("cluster: %s %d is not 1-65535", p.name, p.port)
		}
	}
	if c.Entry && (c.EntryPort < 1 || c.EntryPort > 65535) {
		return fmt.Errorf("cluster: EntryPort %d is not 1-65535", c.EntryPort)
	}
	if c.AppUpstream != "" {
		host, _, err := net.SplitHostPort(c.AppUpstream)
		if err != nil {
			return fmt.Errorf("cluster: AppUpstream %q: %v", c.AppUpstream, err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("cluster: AppUpstream %q is not a loopback address", c.AppUpstream)
		}
	}
	if c.Multicast == "" {
		for _, p := range c.Peers {
			host, _, err := net.SplitHostPort(p)
			if err != nil {
				return fmt.Errorf("cluster: peer %q: %v", p, err)
			}
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("cluster: peer %q is not a loopback address", p)
			}
		}
	}
	return nil
}

// Caddyfile renders the node's Caddyfile.
func (c NodeConfig) Caddyfile() string {
	var b strings.Builder
	w := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("\t", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	cluster := c.Cluster
	if cluster == "" {
		cluster = "test"
	}
	grace := c.GracePeriod
	if grace == 0 {
		grace = 2 * time.Second
	}

	w(0, "{")
	w(1, "admin %s", c.AdminAddr())
	w(1, "auto_https off")
	w(1, "persist_config off")
	w(1, "grace_period %s", grace)
	for _, l := range c.ExtraGlobal {
		w(1, "%s", l)
	}
	w(1, "backhand {")
	w(2, "name %s", c.NodeName())
	w(2, "cluster %s", cluster)
	w(2, "advertise %s", c.AdvertiseAddr())
	if c.Multicast != "" {
		w(2, "listen udp/:%d", c.UDPPort)
		w(2, "multicast %s ttl 1", c.Multicast)
	} else {
		w(2, "listen udp/%s", c.UDPAddr())
		if len(c.Peers) > 0 {
			w(2, "peers %s", strings.Join(c.Peers, " "))
		}
	}
	if c.Key != "" {
		w(2, "key %s", c.Key)
	} else {
		w(2, "insecure_no_key")
	}
	if c.Interval > 0 {
		w(2, "interval %s", c.Interval)
	}
	if c.MaxAge > 0 {
		w(2, "max_age %s", c.MaxAge)
	}
	if len(c.Tags) > 0 {
		w(2, "tags %s", strings.Join(c.Tags, " "))
	}
	for _, l := range c.ExtraBackhand {
		w(2, "%s", l)
	}
	w(1, "}")
	w(0, "}")

	// Sites are `:port` plus bind: an address with a host would add a Host
	// matcher, which proxied requests (Host: the entry point) do not match.
	w(0, "")
	w(0, ":%d {", c.HTTPPort)
	w(1, "bind %s", c.Host())
	w(1, "backhand_track")
	for _, l := range c.AppDirectives {
		w(1, "%s", l)
	}
	if c.AppUpstream != "" {
		w(1, "reverse_proxy %s", c.AppUpstream)
	} else {
		w(1, "respond %q", "served by "+c.NodeName())
	}
	w(0, "}")
	if c.Entry {
		policy := c.LBPolicy
		if policy == "" {
			policy = "round_robin"
		}
		w(0, "")
		w(0, ":%d {", c.EntryPort)
		w(1, "bind %s", c.Host())
		w(1, "reverse_proxy {")
		w(2, "dynamic backhand")
		w(2, "lb_policy %s", policy)
		for _, l := range c.ProxyOptions {
			w(2, "%s", l)
		}
		w(1, "}")
		for _, l := range c.EntryDirectives {
			w(1, "%s", l)
		}
		w(0, "}")
	}
	for _, s := range c.ExtraSites {
		w(0, "")
		b.WriteString(strings.TrimRight(s, "\n"))
		b.WriteByte('\n')
	}
	return b.String()
}

// CheckFree binds and releases every address the node will listen on, and
// fails if one is in use. Caddy binds with SO_REUSEPORT, so without this
// check a second cluster on the same ports would start silently and share
// the sockets of the first; a bind without SO_REUSEPORT detects that.
func (c NodeConfig) CheckFree() error {
	tcp := []string{c.AppAddr(), c.AdminAddr()}
	if c.Entry {
		tcp = append(tcp, net.JoinHostPort(c.Host(), strconv.Itoa(c.EntryPort)))
	}
	for _, addr := range tcp {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("cluster: %s: TCP %s is in use: %w", c.NodeName(), addr, err)
		}
		ln.Close()
	}
	udp := c.UDPAddr()
	if c.Multicast != "" {
		udp = net.JoinHostPort("", strconv.Itoa(c.UDPPort))
	}
	pc, err := net.ListenPacket("udp", udp)
	if err != nil {
		return fmt.Errorf("cluster: %s: UDP %s is in use: %w", c.NodeName(), udp, err)
	}
	return pc.Close()
}
