package backhand

import (
	"testing"
	"time"
)

func TestSpeedBounded(t *testing.T) {
	for _, budget := range []time.Duration{0, 20 * time.Millisecond, 100 * time.Millisecond} {
		start := time.Now()
		r := measureSpeed(budget)
		d := time.Since(start)
		if r == 0 {
			t.Errorf("measureSpeed(%v) = 0", budget)
		}
		// A generous bound for a noisy machine, and the race detector.
		if limit := max(5*budget, 50*time.Millisecond); d > limit {
			t.Errorf("measureSpeed(%v) took %v, want at most %v", budget, d, limit)
		}
		t.Logf("measureSpeed(%v) = %d in %v", budget, r, d)
	}
}

func TestSpeedRating(t *testing.T) {
	tests := []struct {
		roundsPerSec float64
		want         uint32
	}{
		{0, 1}, {1, 1}, {65000, 1000}, {130000, 2000}, {32500, 500}, {1e30, 1<<32 - 1},
	}
	for _, tt := range tests {
		if got := speedRating(tt.roundsPerSec); got != tt.want {
			t.Errorf("speedRating(%v) = %d, want %d", tt.roundsPerSec, got, tt.want)
		}
	}
}

func TestSpeedRoundDeterministic(t *testing.T) {
	var a, b [speedSortLen]uint32
	if x, y := speedRound(&a), speedRound(&b); x != y {
		t.Errorf("speedRound differs between runs: %d, %d", x, y)
	}
}
