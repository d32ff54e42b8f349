package bench

import (
	"fmt"
	"strings"
)

// Kind is how a contender's entry points are run.
type Kind string

const (
	KindBackhand Kind = "backhand" // Caddy with `dynamic backhand` and `lb_policy backhand`
	KindPeers    Kind = "peers"    // no entry points: the `backhand` directive on every node
	KindCaddy    Kind = "caddy"    // Caddy with static upstreams and a built-in policy
	KindHAProxy  Kind = "haproxy"
	KindNginx    Kind = "nginx"
	KindOracle   Kind = "oracle" // the in-harness proxy that sees every true queue
)

// Profile is how the app nodes' Caddy is configured while a contender
// runs. Only the informed profile tells the nodes what the harness knows
// (capacity, true speed, the app's report); a user who copies the README
// gets the minimal one, so the headline rows run on it.
type Profile string

const (
	// ProfileMinimal: the README's minimal `backhand` option (no capacity,
	// no speed, no app_report) and a site that counts its requests
	// (backhand_track) and proxies to the app.
	ProfileMinimal Profile = "minimal"
	// ProfileInformed: the minimal option plus capacity = workers, speed =
	// true speed x 1000 and the app's report, which no other balancer gets.
	ProfileInformed Profile = "informed"
	// ProfilePeers: the minimal option, and the `backhand` directive in
	// front of the site's reverse_proxy, so that every node balances.
	ProfilePeers Profile = "peers"
)

// Contender is one balancer under test.
type Contender struct {
	Name string
	Kind Kind
	Desc string

	// Nodes is the app nodes' profile while this contender runs.
	Nodes Profile

	Chain   []string // backhand: the lines of `lb_policy backhand { }`; empty = the default chain
	Track   bool     // backhand: backhand_track first in the entry site, so the entry announces what it forwards
	Policy  string   // caddy: the lb_policy line's arguments
	Balance string   // haproxy: the balance algorithm
	Agent   bool     // haproxy: weights = nominal capacity, scaled by agent-check
	Method  string   // nginx: the upstream's balancing directive
}

// headlineName is the headline contender: the README's minimal dedicated
// balancer on minimal nodes, what a user who follows the README runs.
const headlineName = "backhand-minimal"

// DefaultContenders are the contenders of a full run, in run order.
func DefaultContenders() []Contender {
	return []Contender{
		{Name: headlineName, Kind: KindBackhand, Nodes: ProfileMinimal,
			Desc: "the README's minimal dedicated balancer: `reverse_proxy { dynamic backhand { tags app }; lb_policy backhand }` (the default chain), no backhand_track"},
		{Name: "backhand-minimal-track", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true,
			Desc: "backhand-minimal with backhand_track in the entry site"},
		{Name: "backhand-peers", Kind: KindPeers, Nodes: ProfilePeers,
			Desc: "the `backhand` directive (no block: the default chain) on every node and no dedicated entry point: clients go to node sites, and a node forwards to the peer its chain picks"},
		{Name: "backhand-informed", Kind: KindBackhand, Nodes: ProfileInformed, Track: true,
			Desc: "the default chain behind backhand_track, on informed nodes: each node announces its true speed, its capacity (workers) and an app report, knowledge that no other contender gets (compare haproxy-agent)"},
		{Name: "backhand-classic", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "mod_backhand's classic chain, announced figures only",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "byLoad", "predict off"}},
		{Name: "backhand-classic-pred", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "the classic chain with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byLoad", "predict off"}},
		{Name: "backhand-cost-pred", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "byCost with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byCost", "predict off"}},
		{Name: "backhand-busy-pred", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "byBusyChildren with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byBusyChildren", "predict off"}},
		{Name: "backhand-latency", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "byLatency (peak EWMA x (own in flight + 1)) of two random",
			Chain: []string{"byAge", "byRandom", "byWindow 2", "byLatency"}},
		{Name: "backhand-power", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "variant of the default chain: the three candidates drawn in proportion to power (byPower) instead of uniformly",
			Chain: []string{"byAge", "byPower", "byWindow 3", "byWait"}},
		{Name: "backhand-fullscan", Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Desc: "variant of the default chain: every live peer is a candidate (random order breaks ties)",
			Chain: []string{"byAge", "byRandom", "byWait"}},
		{Name: "caddy-least_conn", Kind: KindCaddy, Nodes: ProfileMinimal, Policy: "least_conn", Desc: "Caddy's least_conn"},
		{Name: "caddy-random_choose2", Kind: KindCaddy, Nodes: ProfileMinimal, Policy: "random_choose 2", Desc: "Caddy's random_choose 2"},
		{Name: "caddy-round_robin", Kind: KindCaddy, Nodes: ProfileMinimal, Policy: "round_robin", Desc: "Caddy's round_robin"},
		{Name: "haproxy-leastconn", Kind: KindHAProxy, Nodes: ProfileMinimal, Balance: "leastconn", Desc: "HAProxy leastconn"},
		{Name: "haproxy-random2", Kind: KindHAProxy, Nodes: ProfileMinimal, Balance: "random(2)", Desc: "HAProxy random(2)"},
		{Name: "haproxy-agent", Kind: KindHAProxy, Nodes: ProfileMinimal, Balance: "leastconn", Agent: true,
			Desc: "HAProxy leastconn, weights = workers x speed, scaled by agent-check from the app's report (knowledge that the other HAProxy and Caddy rows lack)"},
		{Name: "nginx-least_conn", Kind: KindNginx, Nodes: ProfileMinimal, Method: "least_conn", Desc: "nginx least_conn"},
		{Name: "nginx-random2", Kind: KindNginx, Nodes: ProfileMinimal, Method: "random two least_conn", Desc: "nginx random two least_conn"},
		{Name: oracleName, Kind: KindOracle, Nodes: ProfileMinimal, Desc: "not deployable: least (in flight + 1) / (workers x true speed), reading every app's true queue"},
	}
}

// QuickContenders are the quick mode's: the three README configurations,
// one Caddy built-in, the oracle, and one HAProxy and one nginx contender
// (skipped when not installed).
func QuickContenders() []Contender {
	var out []Contender
	for _, c := range DefaultContenders() {
		switch c.Name {
		case headlineName, "backhand-minimal-track", "backhand-peers", "caddy-least_conn", "haproxy-leastconn", "nginx-least_conn", oracleName:
			out = append(out, c)
		}
	}
	return out
}

// ParseChainContender reads `name=line;line;...` into a backhand contender
// like the chain variants (backhand_track in the entry, minimal nodes), for
// trying chains from the command line.
func ParseChainContender(s string) (Contender, error) {
	name, chain, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return Contender{}, fmt.Errorf("chain %q: want name=fn;fn;...", s)
	}
	var lines []string
	for l := range strings.SplitSeq(chain, ";") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return Contender{Name: name, Kind: KindBackhand, Nodes: ProfileMinimal, Track: true, Chain: lines,
		Desc: "chain: " + strings.Join(lines, "; ")}, nil
}

// SelectContenders returns the contenders named in names (all if empty),
// in the order of all.
func SelectContenders(all []Contender, names []string) ([]Contender, error) {
	if len(names) == 0 {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []Contender
	for _, c := range all {
		if want[c.Name] {
			out = append(out, c)
			delete(want, c.Name)
		}
	}
	if len(want) > 0 {
		var missing []string
		for n := range want {
			missing = append(missing, n)
		}
		return nil, fmt.Errorf("unknown contenders: %s", strings.Join(missing, ", "))
	}
	return out, nil
}
