// Command bhsim runs the discrete-event simulator over a grid of
// announcement periods and entry-proxy counts and prints the mean time in
// system of each chain as Markdown.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/caddy-backhand/backhand/internal/sim"
)

func main() {
	n := flag.Int("n", 100, "servers")
	load := flag.Float64("load", 0.9, "utilisation")
	arrivals := flag.Int("arrivals", 300000, "arrivals per point")
	periods := flag.String("T", "0.1,0.5,1,2,5,10,20,50", "announcement periods, in mean service times")
	proxies := flag.String("K", "1,2,10", "entry proxy counts")
	seed := flag.Uint64("seed", 42, "random seed")
	flag.Parse()
	ts, err := floats(*periods)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ks, err := ints(*proxies)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pts := sim.Sweep(sim.Contenders, ks, ts, *n, *load, *arrivals, *seed)
	fmt.Printf("n=%d, load %.2f, %d arrivals per point, seed %d: mean time in system (mean service time = 1)\n", *n, *load, *arrivals, *seed)
	fmt.Print(sim.Table(pts, sim.Contenders, ks, ts))
}

func floats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", f, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: %v", f, err)
		}
		out = append(out, v)
	}
	return out, nil
}
