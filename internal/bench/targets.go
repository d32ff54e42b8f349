package bench

import (
	"fmt"
	"math"
	"slices"
)

// Target is one of the benchmark's targets at the headline load, with its
// verdict.
type Target struct {
	Scenario  string
	Contender string
	// Kind is "ratio" (Stat at most Mark x the reference's), "gap" (close
	// at least Mark of the p99 gap between the reference and the oracle) or
	// "share" (no node's share of the requests further than Mark, relative,
	// from the mean share).
	Kind    string
	Stat    string  // ratio: "p99" or "p50"; gap: "p99"; share: ""
	Mark    float64 // see Kind
	RefDesc string  // the reference in words

	Own     float64 // the contender's Stat
	Ref     float64 // the reference's Stat
	RefName string
	Oracle  float64 // the oracle's Stat (NaN without an oracle cell)
	// Value is the ratio, the share of the gap closed (NaN: no gap that
	// the best cell's interval tells from noise, and the contender is held
	// to 1.05x the reference instead), or the largest relative deviation
	// of a node's share.
	Value float64
	Met   bool
	// Unresolved is set on a missed p99 target when the contender's p99
	// interval (Cell.P99Interval) still reaches the mark: a run with more
	// requests could come out either way.
	Unresolved bool
	Missing    string
}

// targetSpec is one target, for some contenders in some scenarios.
type targetSpec struct {
	scenarios  []string
	contenders []string
	kind       string
	stat       string
	mark       float64
	refDesc    string
	// ref says which contenders may be the reference of contender self:
	// the best of them at Stat is.
	ref func(self string, c Contender) bool
}

// deployable is every contender but the oracle and the one measured.
func deployable(self string, c Contender) bool { return c.Kind != KindOracle && c.Name != self }

// named is the one contender called name.
func named(name string) func(string, Contender) bool {
	return func(_ string, c Contender) bool { return c.Name == name }
}

// otherBalancer is Caddy, HAProxy or nginx. The backhand rows are no
// reference for each other here: two of them held to at most each
// other's figure could only both meet it on a tie.
func otherBalancer(_ string, c Contender) bool {
	return c.Kind == KindCaddy || c.Kind == KindHAProxy || c.Kind == KindNginx
}

// uninformedBalancer is Caddy, HAProxy or nginx without the agent's
// weights, which know the nodes' capacities as the minimal profile does
// not.
func uninformedBalancer(self string, c Contender) bool { return otherBalancer(self, c) && !c.Agent }

const (
	bestOther      = "the best of Caddy/HAProxy/nginx"
	bestUninformed = "the best of Caddy/HAProxy/nginx without agent weights"
)

// targetSpecs are the targets, in the order of the table.
var targetSpecs = []targetSpec{
	{scenarios: []string{"heterogeneous"}, contenders: []string{headlineName},
		kind: "ratio", stat: "p99", mark: 1, refDesc: "caddy-least_conn", ref: named("caddy-least_conn")},
	{scenarios: []string{"heterogeneous"}, contenders: []string{headlineName},
		kind: "gap", stat: "p99", mark: 0.5, refDesc: bestUninformed, ref: uninformedBalancer},
	{scenarios: []string{"heterogeneous"}, contenders: []string{"backhand-informed"},
		kind: "gap", stat: "p99", mark: 0.7, refDesc: bestUninformed, ref: uninformedBalancer},
	{scenarios: []string{"homogeneous", "rating-noise", "death", "multi-entry"}, contenders: []string{headlineName},
		kind: "ratio", stat: "p99", mark: 1.05, refDesc: "the best contender", ref: deployable},
	{scenarios: []string{"homogeneous", "rating-noise"}, contenders: []string{headlineName, "backhand-minimal-track", "backhand-peers"},
		kind: "share", mark: 0.10, refDesc: "the mean share"},
	{scenarios: []string{"hidden-load"}, contenders: []string{headlineName},
		kind: "ratio", stat: "p99", mark: 1, refDesc: bestOther, ref: otherBalancer},
	{scenarios: []string{"hidden-load"}, contenders: []string{headlineName},
		kind: "ratio", stat: "p50", mark: 1, refDesc: bestOther, ref: otherBalancer},
	{scenarios: []string{"entry-slowdown"}, contenders: []string{headlineName, "backhand-peers"},
		kind: "ratio", stat: "p99", mark: 1, refDesc: bestOther, ref: otherBalancer},
	{scenarios: []string{"entry-slowdown"}, contenders: []string{headlineName, "backhand-peers"},
		kind: "ratio", stat: "p50", mark: 1, refDesc: bestOther, ref: otherBalancer},
	{scenarios: []string{"heterogeneous", "homogeneous"}, contenders: []string{headlineName},
		kind: "ratio", stat: "p99", mark: 1.05, refDesc: "backhand-minimal-track", ref: named("backhand-minimal-track")},
}

// Targets evaluates the targets at the headline load, for the scenarios
// and contenders of the run, scenario by scenario.
func (r *Results) Targets() []Target {
	var out []Target
	for _, sc := range r.Scenarios {
		for _, spec := range targetSpecs {
			if !slices.Contains(spec.scenarios, sc.Name) {
				continue
			}
			for _, name := range spec.contenders {
				if slices.ContainsFunc(r.Contenders, func(c Contender) bool { return c.Name == name }) {
					out = append(out, r.evaluate(spec, sc.Name, name))
				}
			}
		}
	}
	return out
}

// evaluate is one target's verdict.
func (r *Results) evaluate(spec targetSpec, scenario, name string) Target {
	t := Target{Scenario: scenario, Contender: name, Kind: spec.kind, Stat: spec.stat, Mark: spec.mark, RefDesc: spec.refDesc, Oracle: math.NaN()}
	own, ok := r.Cell(scenario, name, headlineLoad)
	if !ok {
		t.Missing = "no " + name + " cell at 70%"
		return t
	}
	if spec.kind == "share" {
		t.Value = shareDeviation(own.Share)
		t.Met = t.Value <= spec.mark
		return t
	}
	t.Own = stat(own, spec.stat)
	t.Ref = math.Inf(1)
	for _, c := range r.Contenders {
		cell, ok := r.Cell(scenario, c.Name, headlineLoad)
		if ok && spec.ref(name, c) && stat(cell, spec.stat) < t.Ref {
			t.Ref, t.RefName = stat(cell, spec.stat), c.Name
		}
	}
	if o, ok := r.Cell(scenario, oracleName, headlineLoad); ok {
		t.Oracle = stat(o, spec.stat)
	}
	p99 := spec.stat == "p99"
	switch {
	case math.IsInf(t.Ref, 1):
		t.Missing = "no cell at 70% for " + spec.refDesc
	case spec.kind == "ratio":
		t.Value = t.Own / t.Ref
		t.Met = t.Value <= spec.mark
		t.Unresolved = p99 && !t.Met && reaches(own, spec.mark*t.Ref)
	case math.IsNaN(t.Oracle):
		t.Missing = "no oracle cell at 70%"
	case t.Ref <= t.Oracle || reaches(r.cellAt(scenario, t.RefName), t.Oracle):
		// No gap to close, or none that the reference cell's p99 interval
		// can tell from noise: the reference is at the limit, so the
		// contender is held to 1.05x it, as in the ratio targets.
		t.Value = math.NaN()
		t.Met = t.Own <= t.Ref*1.05
		t.Unresolved = !t.Met && reaches(own, 1.05*t.Ref)
	default:
		t.Value = (t.Ref - t.Own) / (t.Ref - t.Oracle)
		t.Met = t.Value >= spec.mark
		t.Unresolved = !t.Met && reaches(own, t.Ref-spec.mark*(t.Ref-t.Oracle))
	}
	return t
}

// stat is a cell's percentile called name ("p99" or "p50").
func stat(c Cell, name string) float64 {
	if name == "p50" {
		return c.P50
	}
	return c.P99
}

// shareDeviation is the largest |share/mean - 1| over the nodes: 0 when
// every node served as many requests as the others.
func shareDeviation(share []float64) float64 {
	if len(share) == 0 {
		return math.NaN()
	}
	mean := 0.0
	for _, s := range share {
		mean += s
	}
	mean /= float64(len(share))
	if mean == 0 {
		return math.NaN()
	}
	worst := 0.0
	for _, s := range share {
		worst = max(worst, math.Abs(s/mean-1))
	}
	return worst
}

// goal is the target in words.
func (t Target) goal() string {
	switch t.Kind {
	case "gap":
		return fmt.Sprintf("close >= %.0f%% of the p99 gap between %s and the oracle", t.Mark*100, t.RefDesc)
	case "share":
		return fmt.Sprintf("every node's share within +-%.0f%% of the mean share", t.Mark*100)
	}
	if t.Mark == 1 {
		return fmt.Sprintf("%s <= %s", t.Stat, t.RefDesc)
	}
	return fmt.Sprintf("%s <= %gx %s", t.Stat, t.Mark, t.RefDesc)
}

// result is the measured outcome in words.
func (t Target) result() string {
	switch {
	case t.Kind == "share":
		return fmt.Sprintf("largest deviation %.0f%%", t.Value*100)
	case t.Kind == "gap" && math.IsNaN(t.Value):
		return fmt.Sprintf("no measurable gap (the oracle is inside the reference's interval); %.2fx the reference, target <= 1.05x", t.Own/t.Ref)
	case t.Kind == "gap":
		return fmt.Sprintf("closes %.0f%% of the gap", t.Value*100)
	}
	return fmt.Sprintf("%.2fx", t.Value)
}
