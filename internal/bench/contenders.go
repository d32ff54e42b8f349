package bench

import (
	"fmt"
	"strings"
)

// Kind is how a contender's entry points are run.
type Kind string

const (
	KindBackhand Kind = "backhand" // Caddy with `dynamic backhand` and `lb_policy backhand`
	KindCaddy    Kind = "caddy"    // Caddy with static upstreams and a built-in policy
	KindHAProxy  Kind = "haproxy"
	KindNginx    Kind = "nginx"
	KindOracle   Kind = "oracle" // the in-harness proxy that sees every true queue
)

// Contender is one balancer under test.
type Contender struct {
	Name string
	Kind Kind
	Desc string

	Chain   []string // backhand: the lines of `lb_policy backhand { }`; empty = the default chain
	Policy  string   // caddy: the lb_policy line's arguments
	Balance string   // haproxy: the balance algorithm
	Agent   bool     // haproxy: weights = nominal capacity, scaled by agent-check
	Method  string   // nginx: the upstream's balancing directive
}

// DefaultContenders are the contenders of a full run, in run order.
func DefaultContenders() []Contender {
	return []Contender{
		{Name: "backhand-default", Kind: KindBackhand, Desc: "the recommended default (an empty chain: DefaultChain with predict decay)"},
		{Name: "backhand-classic", Kind: KindBackhand, Desc: "mod_backhand's classic chain, announced figures only",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "byLoad", "predict off"}},
		{Name: "backhand-classic-pred", Kind: KindBackhand, Desc: "the classic chain with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byLoad", "predict off"}},
		{Name: "backhand-cost-pred", Kind: KindBackhand, Desc: "byCost with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byCost", "predict off"}},
		{Name: "backhand-busy-pred", Kind: KindBackhand, Desc: "byBusyChildren with addPrediction",
			Chain: []string{"byAge", "byRandom", "byLogWindow", "addPrediction", "byBusyChildren", "predict off"}},
		{Name: "backhand-latency", Kind: KindBackhand, Desc: "byLatency (peak EWMA x (own in flight + 1)) of two random",
			Chain: []string{"byAge", "byRandom", "byWindow 2", "byLatency"}},
		{Name: "backhand-power", Kind: KindBackhand, Desc: "variant of the default: the three candidates drawn in proportion to power (byPower) instead of uniformly",
			Chain: []string{"byAge", "byPower", "byWindow 3", "byWait"}},
		{Name: "backhand-fullscan", Kind: KindBackhand, Desc: "variant of the default: every live peer is a candidate (random order breaks ties)",
			Chain: []string{"byAge", "byRandom", "byWait"}},
		{Name: "caddy-least_conn", Kind: KindCaddy, Policy: "least_conn", Desc: "Caddy's least_conn"},
		{Name: "caddy-random_choose2", Kind: KindCaddy, Policy: "random_choose 2", Desc: "Caddy's random_choose 2"},
		{Name: "caddy-round_robin", Kind: KindCaddy, Policy: "round_robin", Desc: "Caddy's round_robin"},
		{Name: "haproxy-leastconn", Kind: KindHAProxy, Balance: "leastconn", Desc: "HAProxy leastconn"},
		{Name: "haproxy-random2", Kind: KindHAProxy, Balance: "random(2)", Desc: "HAProxy random(2)"},
		{Name: "haproxy-agent", Kind: KindHAProxy, Balance: "leastconn", Agent: true,
			Desc: "HAProxy leastconn, weights = workers x speed, scaled by agent-check from the app's report"},
		{Name: "nginx-least_conn", Kind: KindNginx, Method: "least_conn", Desc: "nginx least_conn"},
		{Name: "nginx-random2", Kind: KindNginx, Method: "random two least_conn", Desc: "nginx random two least_conn"},
		{Name: "oracle", Kind: KindOracle, Desc: "not deployable: least (in flight + 1) / (workers x true speed), reading every app's true queue"},
	}
}

// QuickContenders are the quick mode's: the default chain, one Caddy
// built-in, the oracle, and one HAProxy and one nginx contender (skipped
// when not installed).
func QuickContenders() []Contender {
	var out []Contender
	for _, c := range DefaultContenders() {
		switch c.Name {
		case "backhand-default", "caddy-least_conn", "haproxy-leastconn", "nginx-least_conn", "oracle":
			out = append(out, c)
		}
	}
	return out
}

// ParseChainContender reads `name=line;line;...` into a backhand contender,
// for trying chain variants from the command line.
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
	return Contender{Name: name, Kind: KindBackhand, Chain: lines, Desc: "chain: " + strings.Join(lines, "; ")}, nil
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
