package sim

import (
	"fmt"
	"runtime"
	"sync"
)

// Contender is a chain under test, and whether its proxies see only their
// own requests (no board).
type Contender struct {
	Name      string
	Chain     string
	LocalOnly bool
}

// Contenders are the chains the sweep compares: the policies of the
// anchors (random, announced-only and local-only power of two), the
// prediction modes, mod_backhand's classic chain, the default chain, and
// the default's two limits: always a sample of three (the default until
// bySample) and always every peer.
var Contenders = []Contender{
	{"random", "byRandom; predict off", false},
	{"board P2C", "byRandom; byWindow 2; byBusyChildren; predict off", false},
	{"local P2C", "byRandom; byWindow 2; byBusyChildren; predict blend", true},
	{"blend P2C", "byRandom; byWindow 2; byBusyChildren; predict blend", false},
	{"decay P2C", "byRandom; byWindow 2; byBusyChildren; predict decay", false},
	{"classic (log2 n)", "byRandom; byLogWindow; byBusyChildren; predict off", false},
	{"default", "", false},
	{"sample of 3", "byAge; byRandom; byWindow 3; byWait", false},
	{"all", "byAge; byRandom; byWait", false},
}

// Point is one cell of a sweep.
type Point struct {
	Contender Contender
	Proxies   int
	Period    float64
	Result    Result
	Err       error
}

// Sweep runs every contender at every (proxies, period) on n servers at
// load, with arrivals each, on up to GOMAXPROCS goroutines.
func Sweep(contenders []Contender, proxies []int, periods []float64, n int, load float64, arrivals int, seed uint64) []Point {
	var points []Point
	for _, k := range proxies {
		for _, t := range periods {
			for _, c := range contenders {
				points = append(points, Point{Contender: c, Proxies: k, Period: t})
			}
		}
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range work {
				p := &points[i]
				p.Result, p.Err = Run(Config{
					Servers: n, Load: load, Proxies: p.Proxies, Period: p.Period,
					LocalOnly: p.Contender.LocalOnly, Chain: p.Contender.Chain,
					Arrivals: arrivals, Warmup: 0.1, Seed: seed,
				})
			}
		})
	}
	for i := range points {
		work <- i
	}
	close(work)
	wg.Wait()
	return points
}

// Table formats a sweep as a Markdown table per proxy count: one row per
// period, one column per contender, mean time in system.
func Table(points []Point, contenders []Contender, proxies []int, periods []float64) string {
	cell := map[string]Point{}
	for _, p := range points {
		cell[fmt.Sprint(p.Proxies, p.Period, p.Contender.Name)] = p
	}
	out := ""
	for _, k := range proxies {
		out += fmt.Sprintf("\nK = %d entry proxies:\n\n| T |", k)
		for _, c := range contenders {
			out += " " + c.Name + " |"
		}
		out += "\n|---|"
		for range contenders {
			out += "---|"
		}
		out += "\n"
		for _, t := range periods {
			out += fmt.Sprintf("| %g |", t)
			for _, c := range contenders {
				p := cell[fmt.Sprint(k, t, c.Name)]
				if p.Err != nil {
					out += " error |"
					continue
				}
				out += fmt.Sprintf(" %.2f |", p.Result.MeanTime)
			}
			out += "\n"
		}
	}
	return out
}
