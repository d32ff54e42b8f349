package bench

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// PlotLine is one contender's CDF in a plot.
type PlotLine struct {
	Name   string
	Points []CDFPoint
	Bold   bool
	Dashed bool
}

// palette is a set of colours that stay distinct for up to ten lines.
var palette = []string{"#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"}

// tailY is the tail scale of a cumulative fraction: 0 at 0, 1 at 90%, 2 at
// 99%, 3 at 99.9%.
func tailY(p float64) float64 { return -math.Log10(max(1-p, 1e-9)) }

// CDFPlot draws latency CDFs as an SVG: latency in ms across, cumulative
// fraction up on the tail scale, so that p90, p99 and p99.9 are equally
// far apart. footer names the run.
func CDFPlot(title, footer string, lines []PlotLine) string {
	const (
		w, h                  = 870, 460
		left, right, top, bot = 64, 250, 44, 64
	)
	pw, ph := float64(w-left-right), float64(h-top-bot)
	// Axes: x up to the largest p99.9 (or max) of the lines, y to 99.9%.
	// Lines far to the right of the others (a policy that failed) would
	// squash the rest: the axis stops at 2.5 times the median line's
	// p99.9 and those lines run off it, marked in the legend.
	ymax := 3.0
	var tails []float64
	for _, l := range lines {
		t := 0.0
		for _, p := range l.Points {
			if tailY(p.P) <= ymax+1e-9 {
				t = max(t, p.Ms)
			}
		}
		tails = append(tails, t)
	}
	sorted := slices.Clone(tails)
	slices.Sort(sorted)
	xmax := 1.0
	if len(sorted) > 0 {
		xmax = max(min(sorted[len(sorted)-1], 2.5*sorted[len(sorted)/2]), 1)
	}
	step := niceStep(xmax / 6)
	xmax = math.Ceil(xmax/step) * step
	xs := func(ms float64) float64 { return float64(left) + min(ms/xmax, 1.05)*pw }
	ys := func(p float64) float64 { return float64(top) + ph - min(tailY(p)/ymax, 1)*ph }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	// Grid and y labels.
	for _, t := range []struct {
		p     float64
		label string
	}{{0, "0"}, {0.5, "50%"}, {0.9, "90%"}, {0.99, "99%"}, {0.999, "99.9%"}} {
		y := ys(t.p)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, float64(left)+pw, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, t.label)
	}
	for x := 0.0; x <= xmax+1e-9; x += step {
		px := xs(x)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", px, top, px, float64(top)+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px, float64(top)+ph+16, trimFloat(x))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#444"/>`+"\n", left, top, pw, ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">latency (ms)</text>`+"\n", float64(left)+pw/2, float64(top)+ph+34)
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">requests answered within (tail scale)</text>`+"\n", float64(top)+ph/2, float64(top)+ph/2)
	// Lines, clipped to the plot.
	fmt.Fprintf(&b, `<clipPath id="plot"><rect x="%d" y="%d" width="%.0f" height="%.0f"/></clipPath>`+"\n", left, top-2, pw+2, ph+4)
	for i, l := range lines {
		if len(l.Points) == 0 {
			continue
		}
		color := palette[i%len(palette)]
		if l.Dashed {
			color = "#000"
		}
		width, dash := 1.5, ""
		if l.Bold {
			width = 3
		}
		if l.Dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		var pts []string
		for _, p := range l.Points {
			if tailY(p.P) > ymax+0.05 {
				break
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xs(p.Ms), ys(p.P)))
		}
		fmt.Fprintf(&b, `<polyline clip-path="url(#plot)" fill="none" stroke="%s" stroke-width="%.1f"%s points="%s"/>`+"\n", color, width, dash, strings.Join(pts, " "))
		// Legend.
		ly := float64(top) + 10 + float64(i)*20
		lx := float64(left) + pw + 14
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"%s/>`+"\n", lx, ly, lx+26, ly, color, width, dash)
		name := l.Name
		if tails[i] > xmax {
			name += " (off scale)"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+32, ly+4, html.EscapeString(name))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" fill="#555">%s</text>`+"\n", left, h-8, html.EscapeString(footer))
	b.WriteString("</svg>\n")
	return b.String()
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(x float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", x), "0"), ".")
}
