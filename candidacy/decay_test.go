package candidacy

import (
	"math"
	"testing"
	"time"
)

// The table-and-polynomial decay stays within 1e-6 (relative) of exp over
// the range it covers, and is exact at its ends.
func TestDecayMatchesExp(t *testing.T) {
	d := Decay(100 * time.Millisecond)
	for _, e := range []time.Duration{0, -time.Second, time.Microsecond, 6250 * time.Microsecond, 37 * time.Millisecond, 100 * time.Millisecond, 999 * time.Millisecond, 3999 * time.Millisecond} {
		want := math.Exp(-max(float64(e), 0) / float64(100*time.Millisecond))
		got := d.remaining(e)
		if math.Abs(got-want) > 1e-6*want {
			t.Errorf("remaining(%v) = %.9g, want %.9g", e, got, want)
		}
		if a := d.Alpha(e); math.Abs(a-(1-want)) > 1e-6 {
			t.Errorf("alpha(%v) = %.9g, want %.9g", e, a, 1-want)
		}
	}
	for e := time.Duration(0); e < 4*time.Second; e += 1234567 * time.Nanosecond {
		want := math.Exp(-float64(e) / float64(100*time.Millisecond))
		if got := d.remaining(e); math.Abs(got-want) > 1e-6*want {
			t.Fatalf("remaining(%v) = %.12g, want %.12g", e, got, want)
		}
	}
	if got := d.remaining(5 * time.Second); got != 0 {
		t.Errorf("remaining(50 tau) = %g, want 0", got)
	}
}

func BenchmarkDecay(b *testing.B) {
	d := Decay(100 * time.Millisecond)
	var sum float64
	for i := 0; b.Loop(); i++ {
		sum += d.remaining(time.Duration(i%1000) * time.Millisecond)
	}
	_ = sum
}
