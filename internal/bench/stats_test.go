package bench

import (
	"testing"
	"time"
)

// Pooling rounds keeps every measured sample of every round, drops the
// warm-up, divides throughput by the whole measured time, and reports each
// round's own p99 and the p99 of each third of the measurement.
func TestSummarizeRounds(t *testing.T) {
	measure := 3 * time.Second
	round := func(slowThird int, ms time.Duration) []Sample {
		out := []Sample{{At: -time.Second, Latency: time.Hour, OK: true}} // warm-up: ignored
		for i := range 300 {
			at := time.Duration(i) * 10 * time.Millisecond
			lat := ms * time.Millisecond
			if int(at/time.Second) == slowThird {
				lat *= 10
			}
			out = append(out, Sample{At: at, Latency: lat, Node: i % 2, OK: true})
		}
		return out
	}
	c := summarizeRounds([][]Sample{round(1, 10), round(1, 20)}, 2, measure)
	if c.Requests != 600 || c.Errors != 0 {
		t.Fatalf("requests %d errors %d, want 600 and 0", c.Requests, c.Errors)
	}
	if c.Throughput != 100 {
		t.Errorf("throughput %v, want 600 requests / 6 s = 100", c.Throughput)
	}
	if len(c.P99Rounds) != 2 || c.P99Rounds[0] != 100 || c.P99Rounds[1] != 200 {
		t.Errorf("p99 per round %v, want [100 200]", c.P99Rounds)
	}
	if len(c.ThirdsP99) != 3 || c.ThirdsP99[0] != 20 || c.ThirdsP99[1] != 200 || c.ThirdsP99[2] != 20 {
		t.Errorf("p99 by third %v, want [20 200 20]", c.ThirdsP99)
	}
	if c.Share[0] != 0.5 || c.Share[1] != 0.5 {
		t.Errorf("share %v, want half each", c.Share)
	}
	if one := summarizeRounds([][]Sample{round(0, 10)}, 2, measure); one.P99Rounds != nil {
		t.Errorf("one round: p99 per round %v, want none", one.P99Rounds)
	}
}
