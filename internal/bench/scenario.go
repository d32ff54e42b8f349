package bench

import (
	"fmt"
	"strings"
	"time"
)

// Scenario is one cluster setup with its injected trouble.
type Scenario struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	Desc  string `json:"desc"`

	Speeds  []float64     `json:"speeds"`  // nominal speed of each node (the node count)
	Workers int           `json:"workers"` // per node
	Mean    time.Duration `json:"mean"`    // mean service time at speed 1
	Dist    Dist          `json:"dist"`
	// Entries is the number of entry points the clients spread over; for
	// the peers contender, node sites 1..Entries.
	Entries int `json:"entries"`

	// BypassNode (1-based; 0 = none) gets traffic that bypasses the entry
	// points, at BypassShare of its capacity, sent to its Caddy site.
	BypassNode  int     `json:"bypass_node,omitempty"`
	BypassShare float64 `json:"bypass_share,omitempty"`

	// HiddenNode (1-based; 0 = none) gets traffic at HiddenShare of its
	// capacity sent straight to its app server: it bypasses every
	// balancer and the node's own Caddy, so the node cannot count it and
	// announces nothing of it. Only the app's slower answers tell.
	HiddenNode  int     `json:"hidden_node,omitempty"`
	HiddenShare float64 `json:"hidden_share,omitempty"`

	// BusyStart keeps every CPU busy while the scenario's nodes start, so
	// that anything a node measures about itself at start-up measures a
	// busy machine, differently on each node.
	BusyStart bool `json:"busy_start,omitempty"`

	// HogNode (1-based; 0 = none) shares its CPU with a co-located hog for
	// the whole scenario: its service times are HogSlowdown times longer.
	// Nothing announces it; only the app's own timing can tell.
	HogNode     int     `json:"hog_node,omitempty"`
	HogSlowdown float64 `json:"hog_slowdown,omitempty"`

	// SlowNode (1-based; 0 = none) is SlowFactor times slower during the
	// middle third of each measurement.
	SlowNode   int     `json:"slow_node,omitempty"`
	SlowFactor float64 `json:"slow_factor,omitempty"`

	// DeathNode (1-based; 0 = none) dies (app server and Caddy node, kill
	// -9) at a third of each measurement and is restarted at two thirds.
	DeathNode int `json:"death_node,omitempty"`
}

// Nodes is the number of app nodes.
func (s Scenario) Nodes() int { return len(s.Speeds) }

// nodeRate is node i's (0-based) nominal service rate, requests per second.
func (s Scenario) nodeRate(i int) float64 {
	return float64(s.Workers) * s.Speeds[i] / s.Mean.Seconds()
}

// Capacity is the rate the proxied traffic can have at 100% load: the
// nodes' nominal service rates, less the bypass and hidden traffic and
// what the hog takes. Transient trouble (a slow period, a death) is not
// subtracted: it is the overload under test.
func (s Scenario) Capacity() float64 {
	c := 0.0
	for i := range s.Speeds {
		c += s.nodeRate(i)
	}
	return c - s.bypassRate() - s.hiddenRate() - s.hogLoss()
}

func (s Scenario) bypassRate() float64 {
	if s.BypassNode == 0 {
		return 0
	}
	return s.BypassShare * s.nodeRate(s.BypassNode-1)
}

func (s Scenario) hiddenRate() float64 {
	if s.HiddenNode == 0 {
		return 0
	}
	return s.HiddenShare * s.nodeRate(s.HiddenNode-1)
}

func (s Scenario) hogLoss() float64 {
	if s.HogNode == 0 || s.HogSlowdown <= 1 {
		return 0
	}
	return s.nodeRate(s.HogNode-1) * (1 - 1/s.HogSlowdown)
}

// Trouble describes the scenario's injected trouble in a few words.
func (s Scenario) Trouble() string {
	var t []string
	if s.SlowNode > 0 {
		t = append(t, fmt.Sprintf("node%d %gx slower in the middle third", s.SlowNode, s.SlowFactor))
	}
	if s.DeathNode > 0 {
		t = append(t, fmt.Sprintf("node%d killed (-9) at 1/3, restarted at 2/3", s.DeathNode))
	}
	if s.BypassNode > 0 {
		t = append(t, fmt.Sprintf("bypass traffic at %.0f%% of node%d's capacity", s.BypassShare*100, s.BypassNode))
	}
	if s.HiddenNode > 0 {
		t = append(t, fmt.Sprintf("hidden traffic at %.0f%% of node%d's capacity straight to its app (no balancer or Caddy counts it)", s.HiddenShare*100, s.HiddenNode))
	}
	if s.BusyStart {
		t = append(t, "every CPU kept busy while the nodes start")
	}
	if s.HogNode > 0 {
		t = append(t, fmt.Sprintf("CPU hog on node%d (service %.2gx longer)", s.HogNode, s.HogSlowdown))
	}
	if len(t) == 0 {
		return "none"
	}
	return strings.Join(t, "; ")
}

// The service time at speed 1; 8 workers per node.
const (
	defaultMean    = 40 * time.Millisecond
	defaultWorkers = 8
)

// DefaultScenarios are the scenarios of a full run.
func DefaultScenarios() []Scenario {
	homog := []float64{1, 1, 1, 1}
	return []Scenario{
		{Name: "homogeneous", Title: "Homogeneous", Desc: "four equal nodes, lognormal service times",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: LogNormal, Entries: 1},
		// The plugin once rated each node's speed with a CPU benchmark at
		// start-up: on a busy machine identical nodes rated themselves
		// 153, 1017 and 582. Noise of that kind shows here as uneven shares.
		{Name: "rating-noise", Title: "Identical nodes started on a busy machine",
			Desc:   "four equal nodes, lognormal service times, whose Caddy processes start at the same moment while every CPU is kept busy",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: LogNormal, Entries: 1, BusyStart: true},
		{Name: "heterogeneous", Title: "Heterogeneous speeds (1, 1, 2, 4)", Desc: "speeds 1, 1, 2, 4, exponential service times",
			Speeds: []float64{1, 1, 2, 4}, Workers: defaultWorkers, Mean: defaultMean, Dist: Exponential, Entries: 1},
		{Name: "hidden-load", Title: "Hidden load on the fastest node",
			Desc:   "speeds 1, 1, 2, 4, exponential service times; 60% of node4's capacity is taken by traffic sent straight to its app server, which neither the balancers nor node4's Caddy see",
			Speeds: []float64{1, 1, 2, 4}, Workers: defaultWorkers, Mean: defaultMean, Dist: Exponential, Entries: 1,
			HiddenNode: 4, HiddenShare: 0.6},
		{Name: "slowdown", Title: "Transient slowdown", Desc: "four equal nodes, exponential service times; node2 5x slower during the middle third",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: Exponential, Entries: 1, SlowNode: 2, SlowFactor: 5},
		// With the backhand directive, the clients' one entry is node1's
		// site: the node whose own app slows down is the one deciding. The
		// dedicated contenders see an ordinary slowdown.
		{Name: "entry-slowdown", Title: "Slowdown of the deciding node",
			Desc:   "four equal nodes, exponential service times, one entry point (node1's site for the backhand directive); node1's app 8x slower during the middle third",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: Exponential, Entries: 1, SlowNode: 1, SlowFactor: 8},
		{Name: "death", Title: "Node death and return", Desc: "four equal nodes, lognormal service times; node3 killed at 1/3 and restarted at 2/3",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: LogNormal, Entries: 1, DeathNode: 3},
		{Name: "multi-entry", Title: "Three entry points, bypass traffic, CPU hog",
			Desc:   "four equal nodes, exponential service times; clients spread over 3 entry points deciding independently (node sites 1-3 for the backhand directive); node1 also serves traffic that bypasses them (50% of its capacity); a CPU hog on node4 makes its service 1.43x longer",
			Speeds: homog, Workers: defaultWorkers, Mean: defaultMean, Dist: Exponential, Entries: 3,
			BypassNode: 1, BypassShare: 0.5, HogNode: 4, HogSlowdown: 1 / 0.7},
	}
}

// SelectScenarios returns the scenarios named (all if empty).
func SelectScenarios(all []Scenario, names []string) ([]Scenario, error) {
	if len(names) == 0 {
		return all, nil
	}
	var out []Scenario
	for _, n := range names {
		found := false
		for _, s := range all {
			if s.Name == n {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q", n)
		}
	}
	return out, nil
}
