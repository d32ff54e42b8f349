package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ResultsDir is where the plots and the results JSON go, relative to the
// repository root.
const ResultsDir = "bench/results"

// The markers between which WriteReport replaces BENCHMARKS.md; the rest of
// the file is left alone.
const (
	beginMarker = "<!-- bhbench:begin -->"
	endMarker   = "<!-- bhbench:end -->"
)

// headlineLoad is the load of the targets and the summary table.
const headlineLoad = 0.7

// The limit: the oracle contender's name.
const oracleName = "oracle"

// RunID names a run on the page and in every plot.
func (r *Results) RunID() string {
	id := r.Started.UTC().Format("2006-01-02T15:04Z")
	if r.Machine.Commit != "" {
		id += " @" + r.Machine.Commit
		if r.Machine.Dirty {
			id += "+dirty"
		}
	}
	return id
}

// Command is the command line that produced the run.
func (r *Results) Command() string {
	if c, ok := r.Meta["command"].(string); ok {
		return c
	}
	return "go run ./cmd/bhbench"
}

// WriteReport writes the results JSON, the plots and the BENCHMARKS.md
// section under root.
func WriteReport(res *Results, root string) error {
	dir := filepath.Join(root, ResultsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := range res.Cells {
		res.Cells[i].CDF = compactCDF(res.Cells[i].CDF)
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	plots, err := writePlots(res, dir)
	if err != nil {
		return err
	}
	section := markdown(res, plots)
	return replaceSection(filepath.Join(root, "BENCHMARKS.md"), section)
}

// plotName is the file name of a scenario's plot at load.
func plotName(scenario string, load float64) string {
	return fmt.Sprintf("cdf-%s-%02.0f.svg", scenario, load*100)
}

// alwaysPlotted are drawn whenever they ran: the README's configurations,
// the informed one beside them, and the limit.
var alwaysPlotted = []string{headlineName, "backhand-peers", "backhand-informed", oracleName}

// plotted picks the contenders drawn: alwaysPlotted, every extra chain,
// and each family's best of the rest at that load.
func plotted(res *Results, scenario string, load float64) []string {
	var names []string
	bestOf := map[Kind]string{}
	bestP99 := map[Kind]float64{}
	for _, c := range res.Contenders {
		cell, ok := res.Cell(scenario, c.Name, load)
		if !ok {
			continue
		}
		switch {
		case slices.Contains(alwaysPlotted, c.Name), strings.HasPrefix(c.Desc, "chain: "):
			names = append(names, c.Name)
		default:
			if p, seen := bestP99[c.Kind]; !seen || cell.P99 < p {
				bestOf[c.Kind], bestP99[c.Kind] = c.Name, cell.P99
			}
		}
	}
	for _, k := range []Kind{KindBackhand, KindCaddy, KindHAProxy, KindNginx} {
		if n, ok := bestOf[k]; ok {
			names = append(names, n)
		}
	}
	// Keep the run order.
	var out []string
	for _, c := range res.Contenders {
		if slices.Contains(names, c.Name) {
			out = append(out, c.Name)
		}
	}
	return out
}

func writePlots(res *Results, dir string) (map[string]string, error) {
	plots := map[string]string{}
	for _, sc := range res.Scenarios {
		for _, load := range res.Loads {
			var lines []PlotLine
			for _, name := range plotted(res, sc.Name, load) {
				cell, _ := res.Cell(sc.Name, name, load)
				lines = append(lines, PlotLine{Name: name, Points: cell.CDF, Bold: name == headlineName, Dashed: name == oracleName})
			}
			if len(lines) == 0 {
				continue
			}
			title := fmt.Sprintf("%s, %.0f%% load: latency CDF", sc.Title, load*100)
			footer := fmt.Sprintf("bhbench run %s: %s", res.RunID(), res.Command())
			name := plotName(sc.Name, load)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(CDFPlot(title, footer, lines)), 0o644); err != nil {
				return nil, err
			}
			plots[sc.Name+"/"+fmt.Sprint(load)] = name
		}
	}
	return plots, nil
}

// replaceSection puts section between the markers of path, creating the
// file (with the markers) if it does not exist.
func replaceSection(path, section string) error {
	old, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		old = []byte("# Benchmarks\n\n" + beginMarker + "\n" + endMarker + "\n")
	} else if err != nil {
		return err
	}
	i := bytes.Index(old, []byte(beginMarker))
	j := bytes.Index(old, []byte(endMarker))
	if i < 0 || j < i {
		old = append(old, []byte("\n"+beginMarker+"\n"+endMarker+"\n")...)
		i = bytes.Index(old, []byte(beginMarker))
		j = bytes.Index(old, []byte(endMarker))
	}
	var out bytes.Buffer
	out.Write(old[:i+len(beginMarker)])
	out.WriteString("\n")
	out.WriteString(section)
	out.Write(old[j:])
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// cellAt is the cell of scenario and contender at the headline load (zero
// if it did not run).
func (r *Results) cellAt(scenario, contender string) Cell {
	c, _ := r.Cell(scenario, contender, headlineLoad)
	return c
}

// reaches reports whether a cell's p99 interval reaches down to mark.
func reaches(c Cell, mark float64) bool {
	lo, _ := c.P99Interval()
	return lo <= mark
}

// interval is " [lo-hi]", a cell's p99 interval at the headline load, or
// "" without samples.
func (r *Results) interval(scenario, contender string) string {
	lo, hi := r.cellAt(scenario, contender).P99Interval()
	if math.IsNaN(lo) {
		return ""
	}
	return fmt.Sprintf(" [%s-%s]", ms(lo), ms(hi))
}

// spread is " (a-b)", the range of the single rounds' p99 of a cell at the
// headline load, or "" for a one-round run.
func (r *Results) spread(scenario, contender string) string {
	return roundsRange(r.cellAt(scenario, contender))
}

// roundsRange is " (a-b)", the range of a cell's single rounds' p99, or ""
// for a one-round cell.
func roundsRange(c Cell) string {
	if len(c.P99Rounds) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%s-%s)", ms(slices.Min(c.P99Rounds)), ms(slices.Max(c.P99Rounds)))
}

func ms(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	if x >= 100 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

func yesNo(b bool) string {
	if b {
		return "**met**"
	}
	return "**missed**"
}

// markdown renders the BENCHMARKS.md section.
func markdown(r *Results, plots map[string]string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	quick, _ := r.Meta["quick"].(bool)

	p("## Real-process benchmark (bhbench)\n\n")
	p("<!-- Generated by cmd/bhbench: edit the program, not this section. -->\n\n")
	if quick {
		p("**Quick mode: a check that the harness works; the figures below are too short to trust.**\n\n")
	}
	p("Run **%s**, produced by\n\n```sh\n%s\n```\n\n", r.RunID(), r.Command())
	p("Started %s, took %s. Machine: %d CPUs (%s), Linux %s, %s (GOMAXPROCS %d), Caddy %s",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Duration.Round(time.Second), m.CPUs, m.CPUModel, m.Kernel, m.Go, m.GoMaxProc, m.Caddy)
	if m.HAProxy != "" {
		p(", HAProxy %s", m.HAProxy)
	}
	if m.Nginx != "" {
		p(", nginx %s", m.Nginx)
	}
	p(", commit `%s`", m.Commit)
	if m.Dirty {
		p(" with uncommitted changes")
	}
	p(". Every figure and plot in this section comes from this run.\n\n")

	p("**Setup.** Each app node is a simulated application server inside the harness (sleep-based: K workers, ")
	p("a FIFO queue, service times scaled by its speed) behind its own real Caddy node built from this checkout, on ")
	p("127.0.0.11-14. The Caddy node runs the backhand app (1 s interval) and a site in front of its app, in one of ")
	p("three profiles, the contender's (column *nodes* below), switched through Caddy's admin API (`POST /load`) ")
	p("between contenders: **minimal**, the README's minimal `backhand` option (name, cluster, advertise, listen, peers, ")
	p("key, `tags app`: no capacity, no speed, no app report) and a site that `backhand_track`s and proxies to the app; ")
	p("**informed**, the same plus what only the harness knows: capacity = workers, speed = true app speed x 1000 and ")
	p("`app_report` from its app (`load=<in system per worker> weight=<1000 unless its requests take more than 1.25x ")
	p("their usual time, then less in proportion>`), which no other balancer is told (haproxy-agent gets the same ")
	p("weights through its own agent); **peers**, the minimal option and the `backhand` directive in front of the ")
	p("site's `reverse_proxy`, so that every node balances. Every contender but backhand-peers runs its own entry ")
	p("points on 127.0.0.21-23, started fresh for each cell, that proxy to the node sites (the same two hops for ")
	p("all): backhand as `reverse_proxy { dynamic backhand { tags app }; lb_policy backhand [{ <chain> }] }`, ")
	p("behind `backhand_track` where the contender says so, Caddy's built-ins with static upstreams, HAProxy ")
	p("and nginx with their own processes, and the oracle, a proxy inside the harness that reads every app's true ")
	p("queue and true speed. backhand-peers has no entry points: its clients go to the node sites 1..entries, and a ")
	p("node forwards a request to the peer that its chain picks (one hop more) or serves it itself. Retries alike ")
	p("for all: two more tries on another node after a connection failure ")
	p("(Caddy `lb_retries 2`, `fail_duration 5s`; the directive as configured by the README keeps its default, ")
	p("three more tries, then serves the request itself; HAProxy `retries 2`, `option redispatch`, layer-4 `check inter 1s`; ")
	p("nginx `proxy_next_upstream error timeout`, 3 tries, `max_fails=1 fail_timeout=5s`). The load generator is ")
	p("open-loop: Poisson arrivals at the target rate, at most 2000 outstanding (more count as errors), 10 s timeout, ")
	p("latency measured from the moment a request was due; clients pick an entry point at random per request. ")
	p("Load is a share of the capacity left for proxied traffic (the nodes' nominal rates less bypass and hidden ")
	p("traffic and what a CPU hog takes; transient trouble is not subtracted). Each cell: %s warm-up (discarded; %s more "+
		"in the first cell after the nodes switch profile, since a deciding node's memory of the traffic other entry points "+
		"sent its peers fades over a few announcements, and in a scenario's first cell, whose nodes have just started), then %s measured",
		r.Warmup, profileSettle, r.Measure)
	if r.MeasureMid > 0 && r.MeasureMid != r.Measure {
		p(" (%s at 70%%)", r.MeasureMid)
	}
	if r.Rounds > 1 {
		p(", %d rounds per cell in rotating contender order, pooled (the p99 ranges below are the single rounds' p99s)", r.Rounds)
	}
	p(". Mean service time at speed 1: %s; %d workers per node.\n\n", r.scenarioMean(), r.scenarioWorkers())
	p("Caveats: the nodes share one machine, so every node's load average, CPU and memory figures are the same ")
	p("machine-wide numbers; `byLoad` and `byCost` therefore cannot tell the nodes apart here, except through ")
	p("prediction (the requests this entry sent since the last announcement). The percentiles of a single run ")
	p("move by several percent from run to run; p99.9 rests on few samples.\n\n")

	// Targets.
	p("### Targets (70%% load; %s is the headline)\n\n", headlineName)
	p("| scenario | contender | target | measured | reference | oracle | result | verdict |\n|---|---|---|---|---|---|---|---|\n")
	for _, t := range r.Targets() {
		name := boldHeadline(t.Contender)
		if t.Missing != "" {
			p("| %s | %s | %s | | | | %s | |\n", t.Scenario, name, t.goal(), t.Missing)
			continue
		}
		verdict := yesNo(t.Met)
		if t.Unresolved {
			verdict += " (within the contender's interval)"
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Scenario, name, t.goal(), r.measured(t), r.reference(t), r.oracleFigure(t), t.result(), verdict)
	}
	p("\nIn brackets: a 95%% interval for the cell's p99 from the binomial spread of its rank among the cell's ")
	p("requests (distribution-free, but it takes the requests as independent, and queueing correlates them, so ")
	p("the real interval is wider). A missed p99 target whose mark lies inside the contender's interval is marked as ")
	p("such: that cell cannot tell. In parentheses, with `-rounds`: the single rounds' p99 range. The p50 targets ")
	p("and the share targets have no interval.\n\n")

	// Summary matrix at the headline load.
	if slices.Contains(r.Loads, headlineLoad) {
		p("### p99 latency at 70%% load (ms)\n\n| contender |")
		for _, sc := range r.Scenarios {
			p(" %s |", sc.Name)
		}
		p("\n|---|")
		for range r.Scenarios {
			p("---|")
		}
		p("\n")
		for _, c := range r.Contenders {
			p("| %s |", boldHeadline(c.Name))
			for _, sc := range r.Scenarios {
				if cell, ok := r.Cell(sc.Name, c.Name, headlineLoad); ok {
					p(" %s |", ms(cell.P99))
				} else {
					p(" - |")
				}
			}
			p("\n")
		}
		p("\n")
	}

	// Contenders.
	p("### Contenders\n\n| contender | nodes | what |\n|---|---|---|\n")
	for _, c := range r.Contenders {
		desc := c.Desc
		if c.Kind == KindBackhand && len(c.Chain) > 0 {
			desc += ": `" + strings.Join(c.Chain, "; ") + "`"
		}
		p("| %s | %s | %s |\n", boldHeadline(c.Name), nodesOf(c), desc)
	}
	p("\n")
	var skipped []string
	for _, cell := range r.Cells {
		if cell.Skipped != "" && !slices.Contains(skipped, cell.Contender+": "+cell.Skipped) {
			skipped = append(skipped, cell.Contender+": "+cell.Skipped)
		}
	}
	if len(skipped) > 0 {
		p("Skipped: %s.\n\n", strings.Join(skipped, "; "))
	}

	// Per scenario.
	for _, sc := range r.Scenarios {
		p("### %s\n\n", sc.Title)
		p("%s. Nodes: speeds %s, %d workers, mean service %s at speed 1 (%s). Entry points: %d. Trouble: %s. ",
			capitalize(sc.Desc), fmtSpeeds(sc.Speeds), sc.Workers, sc.Mean, sc.Dist, sc.Entries, sc.Trouble())
		p("Capacity for proxied traffic: %.0f req/s.\n\n", sc.Capacity())
		for _, load := range r.Loads {
			if name, ok := plots[sc.Name+"/"+fmt.Sprint(load)]; ok {
				if load == headlineLoad {
					p("![%s at 70%% load: latency CDFs](%s/%s)\n\n", sc.Title, ResultsDir, name)
				}
			}
		}
		var links []string
		for _, load := range r.Loads {
			if name, ok := plots[sc.Name+"/"+fmt.Sprint(load)]; ok {
				links = append(links, fmt.Sprintf("[%.0f%%](%s/%s)", load*100, ResultsDir, name))
			}
		}
		if len(links) > 0 {
			p("CDF plots: %s.\n\n", strings.Join(links, ", "))
		}
		for _, load := range r.Loads {
			p("**%.0f%% load** (%.0f req/s offered)\n\n", load*100, load*sc.Capacity())
			p("| contender | p50 | p90 | p99 | p99.9 | req/s | errors | share per node (%%) |\n|---|---|---|---|---|---|---|---|\n")
			for _, c := range r.Contenders {
				cell, ok := r.Cell(sc.Name, c.Name, load)
				if !ok {
					continue
				}
				name := boldHeadline(c.Name)
				p("| %s | %s | %s | %s%s | %s | %.0f | %d | %s |\n", name, ms(cell.P50), ms(cell.P90), ms(cell.P99), roundsRange(cell), ms(cell.P999),
					cell.Throughput, cell.Errors, fmtShare(cell.Share))
			}
			p("\n")
		}
	}
	return b.String()
}

// measured is a target's figure for the contender: its percentile (with
// the p99's interval and rounds), or its shares.
func (r *Results) measured(t Target) string {
	c := r.cellAt(t.Scenario, t.Contender)
	switch t.Stat {
	case "p99":
		return ms(t.Own) + " ms" + r.interval(t.Scenario, t.Contender) + r.spread(t.Scenario, t.Contender)
	case "p50":
		return ms(t.Own) + " ms"
	}
	return "shares " + fmtShare(c.Share) + " %"
}

// reference is a target's reference figure and who set it.
func (r *Results) reference(t Target) string {
	switch t.Stat {
	case "p99":
		return ms(t.Ref) + " ms (" + t.RefName + ")" + r.interval(t.Scenario, t.RefName) + r.spread(t.Scenario, t.RefName)
	case "p50":
		return ms(t.Ref) + " ms (" + t.RefName + ")"
	}
	return t.RefDesc
}

// oracleFigure is the oracle's figure for a percentile target.
func (r *Results) oracleFigure(t Target) string {
	if t.Stat == "" || math.IsNaN(t.Oracle) {
		return "-"
	}
	s := ms(t.Oracle) + " ms"
	if t.Stat == "p99" {
		s += r.spread(t.Scenario, oracleName)
	}
	return s
}

// boldHeadline marks the headline contender's name.
func boldHeadline(name string) string {
	if name == headlineName {
		return "**" + name + "**"
	}
	return name
}

// nodesOf is contender c's node profile; results written before there
// were profiles have none, and every contender of those runs ran on
// informed nodes.
func nodesOf(c Contender) Profile {
	if c.Nodes == "" {
		return ProfileInformed
	}
	return c.Nodes
}

func (r *Results) scenarioMean() time.Duration {
	if len(r.Scenarios) == 0 {
		return 0
	}
	return r.Scenarios[0].Mean
}

func (r *Results) scenarioWorkers() int {
	if len(r.Scenarios) == 0 {
		return 0
	}
	return r.Scenarios[0].Workers
}

func fmtSpeeds(s []float64) string {
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = trimFloat(x)
	}
	return strings.Join(parts, ", ")
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// compactCDF keeps the points at least 0.05 apart on the tail scale, and
// the last, rounded to 0.01 ms, so that the committed JSON stays small.
func compactCDF(pts []CDFPoint) []CDFPoint {
	var out []CDFPoint
	last := -1.0
	for i, p := range pts {
		y := tailY(p.P)
		if i == len(pts)-1 || y-last >= 0.05-1e-9 {
			out = append(out, CDFPoint{P: math.Round(p.P*1e6) / 1e6, Ms: math.Round(p.Ms*100) / 100})
			last = y
		}
	}
	return out
}
