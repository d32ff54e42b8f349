package bench

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// The benchmark's addresses, all on loopback. App node i (1-based) has its
// app server, its HAProxy agent and its Caddy node on 127.0.0.(10+i); entry
// point j on 127.0.0.(20+j). Every contender's entry points listen on the
// same addresses (one contender runs at a time), so the load generator does
// not change, except for the peers contender, which has no entry points:
// its clients go to the node sites 1..Entries instead.
//
// These are the ports by default; Run moves them, and the admin APIs', into
// the block at Options.Ports when that is set.
var (
	appPort   = 18000
	agentPort = 18001
	sitePort  = 18080
	entryPort = 18090
	udpPort   = 14445
)

// hostBase and adminBase place a run's addresses: nodes on
// 127.0.0.(hostBase+i), entries on 127.0.0.(hostBase+10+j), admin APIs on
// 127.0.0.1:(adminBase+...). Run sets them from Options.Block (and
// adminBase from Options.Ports), so that the test and a benchmark can run
// at once.
var (
	hostBase  = 10
	adminBase = 12000
)

// portBlock is the number of consecutive ports from Options.Ports a run
// uses: admin APIs from the block's first port (nodes +1.., entries
// +21..), then the app, agent, site, entry and UDP ports at +30 to +34.
const portBlock = 35

// placePorts sets the addresses of a run in block (Options.Block) and, if
// ports is not 0, the ports in the block of portBlock ports from ports;
// otherwise the default ports.
func placePorts(block, ports int) {
	hostBase, adminBase = 10+100*block, 12000+100*block
	appPort, agentPort, sitePort, entryPort, udpPort = 18000, 18001, 18080, 18090, 14445
	if ports != 0 {
		adminBase = ports
		appPort, agentPort, sitePort, entryPort, udpPort = ports+30, ports+31, ports+32, ports+33, ports+34
	}
}

// runHosts returns the loopback addresses a run in block (Options.Block) with
// at most nodes nodes and entries entry points listens on, admin APIs'
// 127.0.0.1 first: what a free Options.Ports block must be free on.
func runHosts(block, nodes, entries int) []string {
	hosts := []string{"127.0.0.1"}
	for i := 1; i <= nodes; i++ {
		hosts = append(hosts, "127.0.0."+strconv.Itoa(10+100*block+i))
	}
	for j := 1; j <= entries; j++ {
		hosts = append(hosts, "127.0.0."+strconv.Itoa(10+100*block+10+j))
	}
	return hosts
}

func nodeHost(i int) string  { return "127.0.0." + strconv.Itoa(hostBase+i) }
func entryHost(j int) string { return "127.0.0." + strconv.Itoa(hostBase+10+j) }
func hostPort(h string, p int) string {
	return net.JoinHostPort(h, strconv.Itoa(p))
}
func nodeName(i int) string  { return "node" + strconv.Itoa(i) }
func entryName(j int) string { return "entry" + strconv.Itoa(j) }

// appAddr is the address of node i's app server, which only the node's
// own Caddy and the hidden load reach.
func appAddr(i int) string { return hostPort(nodeHost(i), appPort) }

// siteAddr is the address of node i's Caddy site, which every contender
// proxies to.
func siteAddr(i int) string { return hostPort(nodeHost(i), sitePort) }

// entryAddr is the address of entry point j.
func entryAddr(j int) string { return hostPort(entryHost(j), entryPort) }

// peerList is every node's and entry's UDP address: nodes announce to the
// entries, which listen on fixed addresses whichever contender runs.
func peerList(nodes, entries int) string {
	var p []string
	for i := 1; i <= nodes; i++ {
		p = append(p, hostPort(nodeHost(i), udpPort))
	}
	for j := 1; j <= entries; j++ {
		p = append(p, hostPort(entryHost(j), udpPort))
	}
	return strings.Join(p, " ")
}

// caddyGlobal is the global options block of a benchmark Caddy process;
// backhand is the body of its `backhand` option, or empty for none.
func caddyGlobal(adminPort int, backhand []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n", adminPort)
	if len(backhand) > 0 {
		b.WriteString("\tbackhand {\n")
		for _, l := range backhand {
			fmt.Fprintf(&b, "\t\t%s\n", l)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// transportBlock is the reverse_proxy transport of every Caddy hop: enough
// idle keep-alive connections that a burst does not open new ones.
const transportBlock = "\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host 256\n\t\t}\n"

// retryLines are the retry and passive health settings every Caddy entry
// gets; HAProxy's and nginx's equivalents are in their configs.
var retryLines = []string{"lb_retries 2", "fail_duration 5s"}

// nodeCaddyfile is the Caddyfile of app node i under profile p: the
// backhand app and a site in front of the local app server. bypass is set
// on the node that gets the scenario's bypass traffic (see nodeSite).
func nodeCaddyfile(i int, cfg AppConfig, key string, nodes, entries int, p Profile, bypass bool) string {
	return caddyGlobal(adminBase+i, nodeBackhand(i, cfg, key, nodes, entries, p)) + "\n" + nodeSite(i, cfg, p, bypass)
}

// nodeBackhand is the body of app node i's `backhand` option: the README's
// minimal one (name, cluster, where to reach it, the key, a tag that the
// dedicated balancers select on), plus, in the informed profile, the
// app's capacity, its true speed and its report, which a user would have
// to work out and configure.
func nodeBackhand(i int, cfg AppConfig, key string, nodes, entries int, p Profile) []string {
	lines := []string{
		"name " + nodeName(i),
		"cluster bench",
		"advertise " + siteAddr(i),
		"listen udp/" + hostPort(nodeHost(i), udpPort),
		"peers " + peerList(nodes, entries),
		"key " + key,
		"tags app",
	}
	if p == ProfileInformed {
		lines = append(lines,
			"capacity "+strconv.Itoa(cfg.Workers),
			"speed "+strconv.Itoa(int(cfg.Speed*1000+0.5)),
			"app_report url http://"+cfg.Addr+"/__report")
	}
	return lines
}

// nodeSite is app node i's site. It counts its requests (backhand_track)
// and proxies them to the local app server; in the peers profile the
// `backhand` directive takes backhand_track's place and may send a request
// to a peer's site instead.
//
// Bypass traffic (bypass set: this node gets it) is served here whatever
// the profile, as traffic that no balancer sees: in the peers profile it
// skips the directive by its header, and backhand_track counts it, as the
// site of the other profiles does.
func nodeSite(i int, cfg AppConfig, p Profile, bypass bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, ":%d {\n\tbind %s\n", sitePort, nodeHost(i))
	switch {
	case p != ProfilePeers:
		b.WriteString("\tbackhand_track\n")
	case bypass:
		fmt.Fprintf(&b, "\t@bypass header %s *\n\tbackhand_track @bypass\n", bypassHeader)
		fmt.Fprintf(&b, "\t@balanced not header %s *\n\tbackhand @balanced\n", bypassHeader)
	default:
		b.WriteString("\tbackhand\n")
	}
	fmt.Fprintf(&b, "\treverse_proxy %s {\n%s\t}\n}\n", cfg.Addr, transportBlock)
	return b.String()
}

// backhandEntryCaddyfile is entry point j of a backhand contender: the
// backhand app (tagged entry, so that entries never pick each other: `tags
// app` leaves them out, this entry included, so exclude_self would add
// nothing), and a site proxying to the live app nodes with the contender's
// chain, behind backhand_track if the contender asks for it.
func backhandEntryCaddyfile(j int, c Contender, key string, nodes, entries int) string {
	var b strings.Builder
	b.WriteString(caddyGlobal(adminBase+20+j, []string{
		"name " + entryName(j),
		"cluster bench",
		"advertise " + entryAddr(j),
		"listen udp/" + hostPort(entryHost(j), udpPort),
		"peers " + peerList(nodes, entries),
		"key " + key,
		"tags entry",
	}))
	fmt.Fprintf(&b, "\n:%d {\n\tbind %s\n", entryPort, entryHost(j))
	if c.Track {
		b.WriteString("\tbackhand_track\n")
	}
	b.WriteString("\treverse_proxy {\n\t\tdynamic backhand {\n\t\t\ttags app\n\t\t}\n")
	if len(c.Chain) == 0 {
		b.WriteString("\t\tlb_policy backhand\n")
	} else {
		b.WriteString("\t\tlb_policy backhand {\n")
		for _, l := range c.Chain {
			fmt.Fprintf(&b, "\t\t\t%s\n", l)
		}
		b.WriteString("\t\t}\n")
	}
	for _, l := range retryLines {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	b.WriteString(transportBlock)
	b.WriteString("\t}\n}\n")
	return b.String()
}

// caddyEntryCaddyfile is entry point j of a Caddy built-in policy: static
// upstreams, the node sites.
func caddyEntryCaddyfile(j int, c Contender, nodes int) string {
	var b strings.Builder
	b.WriteString(caddyGlobal(adminBase+20+j, nil))
	var ups []string
	for i := 1; i <= nodes; i++ {
		ups = append(ups, siteAddr(i))
	}
	fmt.Fprintf(&b, "\n:%d {\n\tbind %s\n\treverse_proxy %s {\n\t\tlb_policy %s\n", entryPort, entryHost(j), strings.Join(ups, " "), c.Policy)
	for _, l := range retryLines {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	b.WriteString(transportBlock)
	b.WriteString("\t}\n}\n")
	return b.String()
}

// haproxyConfig is entry point j of an HAProxy contender. Retries: 2 more
// tries, on another server (redispatch); health: layer-4 checks every
// second, so a dead node is out after one failed check. With Agent, each
// server's weight is its nominal capacity (workers x speed) and the app's
// agent scales it.
func haproxyConfig(j int, c Contender, apps []AppConfig) string {
	var b strings.Builder
	b.WriteString("global\n\tmaxconn 8000\n\n")
	b.WriteString("defaults\n\tmode http\n\ttimeout connect 2s\n\ttimeout client 60s\n\ttimeout server 60s\n")
	b.WriteString("\tretries 2\n\toption redispatch 1\n\thttp-reuse always\n\n")
	fmt.Fprintf(&b, "frontend fe\n\tbind %s\n\tdefault_backend be\n\n", entryAddr(j))
	fmt.Fprintf(&b, "backend be\n\tbalance %s\n", c.Balance)
	for i, a := range apps {
		n := i + 1
		fmt.Fprintf(&b, "\tserver %s %s check inter 1s fall 1 rise 2", nodeName(n), siteAddr(n))
		if c.Agent {
			w := int(float64(a.Workers)*a.Speed*4 + 0.5)
			fmt.Fprintf(&b, " weight %d agent-check agent-addr %s agent-port %d agent-inter 1s", min(max(w, 1), 256), nodeHost(n), agentPort)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// nginxConfig is entry point j of an nginx contender, in prefix dir. Two
// workers sharing the upstream's state (zone); retries: the next server on
// errors and timeouts, 3 tries; passive health: one failure takes a server
// out for 5s.
func nginxConfig(j int, c Contender, nodes int, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "worker_processes 2;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n", dir, dir)
	b.WriteString("events {\n\tworker_connections 8192;\n}\n")
	b.WriteString("http {\n\taccess_log off;\n")
	for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "\t%s_temp_path %s/%s_temp;\n", t, dir, t)
	}
	fmt.Fprintf(&b, "\tupstream nodes {\n\t\tzone nodes 64k;\n\t\t%s;\n", c.Method)
	for i := 1; i <= nodes; i++ {
		fmt.Fprintf(&b, "\t\tserver %s max_fails=1 fail_timeout=5s;\n", siteAddr(i))
	}
	b.WriteString("\t\tkeepalive 256;\n\t}\n")
	fmt.Fprintf(&b, "\tserver {\n\t\tlisten %s;\n\t\tlocation / {\n", entryAddr(j))
	b.WriteString("\t\t\tproxy_pass http://nodes;\n\t\t\tproxy_http_version 1.1;\n\t\t\tproxy_set_header Connection \"\";\n")
	b.WriteString("\t\t\tproxy_next_upstream error timeout;\n\t\t\tproxy_next_upstream_tries 3;\n\t\t}\n\t}\n}\n")
	return b.String()
}
