package bench

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Cell is the result of one contender at one load in one scenario.
type Cell struct {
	Scenario  string  `json:"scenario"`
	Contender string  `json:"contender"`
	Load      float64 `json:"load"` // fraction of the capacity left for proxied traffic
	Rate      float64 `json:"rate"` // offered requests per second

	Requests   int     `json:"requests"` // due during the measurement
	Errors     int     `json:"errors"`   // failed, timed out or dropped
	Throughput float64 `json:"throughput"`

	// Latency percentiles of the successful requests, in milliseconds.
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`

	// P99Rounds is each round's own p99 when the cell pools several
	// rounds (Options.Rounds), to show the run-to-run spread.
	P99Rounds []float64 `json:"p99_rounds_ms,omitempty"`

	// ThirdsP99 is the p99 of the requests due in each third of the
	// measurement (before, during and after the trouble of the slowdown
	// and death scenarios), to show where a tail comes from.
	ThirdsP99 []float64 `json:"thirds_p99_ms,omitempty"`

	// Share is the fraction of successful requests each node served.
	Share []float64 `json:"share"`

	// NodeP50 is the median latency of the requests each node served, in
	// milliseconds: where a cell's median comes from; 0 for a node that
	// served none (JSON has no NaN).
	NodeP50 []float64 `json:"node_p50_ms,omitempty"`

	// CDF is the latency distribution at tail-spaced points, for plots.
	CDF []CDFPoint `json:"cdf"`

	Skipped string `json:"skipped,omitempty"` // why the cell did not run
}

// CDFPoint is one point of a latency CDF.
type CDFPoint struct {
	P  float64 `json:"p"`  // cumulative fraction
	Ms float64 `json:"ms"` // latency at that fraction
}

// summarize turns the samples due during the measurement into a Cell.
func summarize(samples []Sample, nodes int, measure time.Duration) Cell {
	var c Cell
	lat := make([]float64, 0, len(samples))
	count := make([]int, nodes)
	byNode := make([][]float64, nodes)
	for _, s := range samples {
		if s.At < 0 || s.At >= measure {
			continue
		}
		c.Requests++
		if !s.OK {
			c.Errors++
			continue
		}
		lat = append(lat, float64(s.Latency)/float64(time.Millisecond))
		if s.Node >= 0 && s.Node < nodes {
			count[s.Node]++
			byNode[s.Node] = append(byNode[s.Node], lat[len(lat)-1])
		}
	}
	slices.Sort(lat)
	c.NodeP50 = make([]float64, nodes)
	for i, l := range byNode {
		if len(l) > 0 {
			slices.Sort(l)
			c.NodeP50[i] = quantile(l, 0.5)
		}
	}
	c.Throughput = float64(len(lat)) / measure.Seconds()
	c.P50, c.P90, c.P99, c.P999 = quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99), quantile(lat, 0.999)
	if len(lat) > 0 {
		c.Max = lat[len(lat)-1]
	}
	c.Share = make([]float64, nodes)
	for i, n := range count {
		if len(lat) > 0 {
			c.Share[i] = float64(n) / float64(len(lat))
		}
	}
	c.CDF = cdfPoints(lat)
	return c
}

// summarizeRounds pools the samples of several runs of one cell (each run's
// At relative to its own measurement) into one Cell, with each run's own
// p99 alongside.
func summarizeRounds(rounds [][]Sample, nodes int, measure time.Duration) Cell {
	var pooled []Sample
	var p99s []float64
	for _, r := range rounds {
		for _, s := range r {
			if s.At >= 0 && s.At < measure {
				pooled = append(pooled, s)
			}
		}
		p99s = append(p99s, summarize(r, nodes, measure).P99)
	}
	c := summarize(pooled, nodes, measure*time.Duration(max(len(rounds), 1)))
	if len(rounds) > 1 {
		c.P99Rounds = p99s
	}
	c.ThirdsP99 = thirdsP99(pooled, measure)
	return c
}

// thirdsP99 is the p99 of the successful requests due in each third of
// the measurement.
func thirdsP99(samples []Sample, measure time.Duration) []float64 {
	lat := make([][]float64, 3)
	for _, s := range samples {
		if s.OK && s.At >= 0 && s.At < measure {
			i := min(int(3*s.At/measure), 2)
			lat[i] = append(lat[i], float64(s.Latency)/float64(time.Millisecond))
		}
	}
	out := make([]float64, 3)
	for i, l := range lat {
		slices.Sort(l)
		out[i] = quantile(l, 0.99)
	}
	return out
}

// quantile is the nearest-rank quantile of sorted xs (NaN if empty).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// cdfPoints samples the distribution evenly on the tail scale
// -log10(1-p), from the minimum to the largest p the sample size supports.
func cdfPoints(sorted []float64) []CDFPoint {
	n := len(sorted)
	if n == 0 {
		return nil
	}
	top := math.Log10(float64(n))
	var out []CDFPoint
	out = append(out, CDFPoint{P: 0, Ms: sorted[0]})
	for y := 0.025; y <= top+1e-9; y += 0.025 {
		p := 1 - math.Pow(10, -y)
		out = append(out, CDFPoint{P: p, Ms: quantile(sorted, p)})
	}
	return out
}

// P99Interval is a distribution-free 95% confidence interval for the
// cell's p99, read off its CDF: the p99 of n requests is the order
// statistic of rank about 0.99n, and that rank's spread is binomial, so the
// interval runs between the quantiles at 0.99 -+ 1.96 sqrt(0.99 x 0.01 / n).
// It assumes independent requests; queueing correlates neighbours, so the
// true interval is wider. NaN without samples.
func (c Cell) P99Interval() (lo, hi float64) {
	n := float64(c.Requests - c.Errors)
	if n <= 0 || len(c.CDF) == 0 {
		return math.NaN(), math.NaN()
	}
	const p = 0.99
	d := 1.96 * math.Sqrt(p*(1-p)/n)
	return cdfAt(c.CDF, p-d), cdfAt(c.CDF, p+d)
}

// cdfAt interpolates the latency at cumulative fraction p, clamped to the
// points' range.
func cdfAt(cdf []CDFPoint, p float64) float64 {
	i, _ := slices.BinarySearchFunc(cdf, p, func(pt CDFPoint, p float64) int { return cmp.Compare(pt.P, p) })
	switch {
	case i == 0:
		return cdf[0].Ms
	case i == len(cdf):
		return cdf[len(cdf)-1].Ms
	}
	a, b := cdf[i-1], cdf[i]
	if b.P == a.P {
		return b.Ms
	}
	return a.Ms + (b.Ms-a.Ms)*(p-a.P)/(b.P-a.P)
}
