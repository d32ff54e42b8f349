package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// TestQuick runs the quick mode end to end (real Caddy processes, HAProxy
// and nginx when installed) and checks the structure of what it produced:
// every contender that can run here has a result with samples, the plot
// and the marked BENCHMARKS.md section are written. Its one assertion on
// timings is a coarse guard against a herd (every request to one node):
// the headline's p99 more than twice caddy-least_conn's.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real Caddy processes for about a minute; skipped with -short")
	}
	for _, c := range QuickContenders() {
		if why := available(c); why != "" {
			t.Logf("contender %s will be skipped: %s", c.Name, why)
		}
	}
	defer cluster.LockForTest(t)()
	root := t.TempDir()
	// Text outside the markers must survive.
	md := filepath.Join(root, "BENCHMARKS.md")
	if err := os.WriteFile(md, []byte("# Benchmarks\n\nlead's section\n\n"+beginMarker+"\nold\n"+endMarker+"\n\ntrailer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scenarios, err := SelectScenarios(DefaultScenarios(), []string{"heterogeneous"})
	if err != nil {
		t.Fatal(err)
	}
	ports, err := cluster.FreeBlock(portBlock, runHosts(1, scenarios[0].Nodes(), maxEntries)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("address block 1, ports %d-%d", ports, ports+portBlock-1)
	o := Options{
		Scenarios:  scenarios,
		Contenders: QuickContenders(),
		Loads:      []float64{0.4},
		Warmup:     time.Second,
		Measure:    3 * time.Second,
		WorkDir:    t.TempDir(),
		Block:      1,
		Ports:      ports,
		Log:        testLog{t},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	res.Meta = map[string]any{"command": "go test ./internal/bench", "quick": true}
	if err := WriteReport(res, root); err != nil {
		t.Fatal(err)
	}

	if len(res.Cells) != len(o.Contenders) {
		t.Fatalf("%d cells, want one per contender (%d)", len(res.Cells), len(o.Contenders))
	}
	ran := 0
	for _, c := range res.Cells {
		if c.Skipped != "" {
			if !strings.Contains(c.Skipped, "not installed") {
				t.Errorf("%s skipped for an unexpected reason: %s", c.Contender, c.Skipped)
			}
			t.Logf("%s skipped: %s", c.Contender, c.Skipped)
			continue
		}
		ran++
		if c.Requests == 0 || c.Throughput <= 0 || len(c.CDF) == 0 || math.IsNaN(c.P99) {
			t.Errorf("%s: empty result %+v", c.Contender, c)
		}
		if c.Errors > 0 {
			// No assertion: under the race detector the harness itself is
			// slow enough for timeouts. The count is reported.
			t.Logf("%s: %d errors of %d requests", c.Contender, c.Errors, c.Requests)
		}
		sum := 0.0
		for _, s := range c.Share {
			sum += s
		}
		if math.Abs(sum-1) > 0.01 {
			t.Errorf("%s: node shares sum to %v", c.Contender, sum)
		}
	}
	for _, name := range []string{headlineName, "backhand-minimal-track", "backhand-peers", oracleName, "caddy-least_conn"} {
		if _, ok := res.Cell("heterogeneous", name, 0.4); !ok {
			t.Errorf("no result for %s", name)
		}
	}
	// The herd guard, measured again side by side once when it trips: a
	// herd repeats, a burst of load from elsewhere on the machine does not.
	noteOverload(t, res, scenarios[0])
	if why := herdSuspect(res, scenarios[0]); why != "" {
		t.Logf("herd guard tripped (%s); measuring the two again", why)
		again := o
		again.Contenders = nil
		for _, c := range o.Contenders {
			if c.Name == headlineName || c.Name == "caddy-least_conn" {
				again.Contenders = append(again.Contenders, c)
			}
		}
		again.WorkDir = t.TempDir()
		res2, err := Run(ctx, again)
		if err != nil {
			t.Fatal(err)
		}
		noteOverload(t, res2, scenarios[0])
		if why := herdSuspect(res2, scenarios[0]); why != "" {
			t.Errorf("twice: %s", why)
		}
	}
	if ran < 3 {
		t.Errorf("only %d contenders ran", ran)
	}
	if _, err := os.Stat(filepath.Join(root, ResultsDir, plotName("heterogeneous", 0.4))); err != nil {
		t.Errorf("plot: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, ResultsDir, "results.json")); err != nil {
		t.Errorf("results: %v", err)
	}
	page, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"lead's section", "trailer", beginMarker, endMarker, "### Targets (70% load", "| nodes |", plotName("heterogeneous", 0.4), "go test ./internal/bench"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}
	if strings.Contains(string(page), "\nold\n") {
		t.Error("BENCHMARKS.md still has the old section")
	}
}

// herdSuspect returns why the headline's cell looks like a herd (every
// request to one node, in turns), or "" when it does not: its p99 more than
// twice caddy-least_conn's. It judges only when least_conn kept up, its
// p50 under twice the slowest node's mean service time; beyond that the
// machine, not a balancer, set the times (a CI run with other processes
// beside it had every contender's p50 above a second), and it says so.
func herdSuspect(res *Results, sc Scenario) string {
	head, okHead := res.Cell(sc.Name, headlineName, 0.4)
	least, okLeast := res.Cell(sc.Name, "caddy-least_conn", 0.4)
	if !okHead || !okLeast {
		return ""
	}
	if least.P50 > keptUpBound(sc) {
		return "" // logged by noteOverload
	}
	if head.P99 > 2*least.P99 {
		return fmt.Sprintf("%s p99 %.1f ms is more than twice caddy-least_conn's %.1f ms: a herd? shares %s vs %s",
			headlineName, head.P99, least.P99, fmtShare(head.Share), fmtShare(least.Share))
	}
	return ""
}

// keptUpBound is the p50 in ms under which caddy-least_conn kept up:
// twice the slowest node's mean service time.
func keptUpBound(sc Scenario) float64 {
	return 2 * float64(sc.Mean.Milliseconds()) / slices.Min(sc.Speeds)
}

// noteOverload logs that herdSuspect did not judge, when it did not.
func noteOverload(t *testing.T, res *Results, sc Scenario) {
	least, ok := res.Cell(sc.Name, "caddy-least_conn", 0.4)
	if bound := keptUpBound(sc); ok && least.P50 > bound {
		t.Logf("herd guard not judged: caddy-least_conn's p50 %.1f ms is above %.0f ms, the machine did not keep up", least.P50, bound)
	}
}

// TestReplaceSectionCreates checks that a missing BENCHMARKS.md is created
// with the markers.
func TestReplaceSectionCreates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := replaceSection(path, "one\n"); err != nil {
		t.Fatal(err)
	}
	if err := replaceSection(path, "two\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if got := string(b); !strings.Contains(got, beginMarker+"\ntwo\n"+endMarker) || strings.Contains(got, "one") {
		t.Errorf("got %q", got)
	}
}

// TestAppQueue checks the app server's FIFO worker slots and its report.
func TestAppQueue(t *testing.T) {
	a := NewApp(AppConfig{Name: "t", Addr: "127.0.0.1:0", Workers: 2, Speed: 1, Mean: 10 * time.Millisecond, Dist: Exponential})
	life := &appLife{}
	done := make(chan int, 3)
	life.acquire(2)
	life.acquire(2)
	go func() { life.acquire(2); done <- 1 }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("a third request got one of two workers")
	default:
	}
	life.release()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the waiting request did not get the freed worker")
	}
	for range 20 {
		a.observe(5)
	}
	a.repAt = time.Time{}
	if w, _ := a.weight(); w >= 1000 || w < 200 {
		t.Errorf("weight after 5x slow requests = %d, want below 1000", w)
	}
}

// TestQuantile checks the nearest-rank quantile.
func TestQuantile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for q, want := range map[float64]float64{0.5: 5, 0.9: 9, 0.99: 10, 0: 1} {
		if got := quantile(xs, q); got != want {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
