package backhand

import (
	"math"
	"time"
)

// decay is an exponential decay with time constant tau: how much of what
// was seen some time ago still counts. Every estimate that fades with time
// uses it: the typical response time and its forgetting, the others' share
// of a peer's load, peak-EWMA and the announced latency.
type decay time.Duration

// remaining is the weight that a value seen elapsed ago keeps:
// exp(-elapsed/tau), 1 for elapsed <= 0.
func (d decay) remaining(elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 1
	}
	return math.Exp(-float64(elapsed) / float64(max(time.Duration(d), time.Microsecond)))
}

// alpha is the weight of a new sample that comes elapsed after the
// previous one, in an average that decays with tau: 1 - remaining.
func (d decay) alpha(elapsed time.Duration) float64 { return 1 - d.remaining(elapsed) }

// ewma moves avg towards sample by weight w.
func ewma(avg, sample, w float64) float64 { return avg + w*(sample-avg) }
