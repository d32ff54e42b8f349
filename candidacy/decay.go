package candidacy

import (
	"math"
	"time"
)

// Decay is an exponential decay with time constant tau: how much of what
// was seen some time ago still counts. Every estimate that fades with time
// uses it: the typical response time and its forgetting, the others' share
// of a peer's load, peak-EWMA and the announced latency.
type Decay time.Duration

// remaining is the weight that a value seen elapsed ago keeps:
// exp(-elapsed/tau), 1 for elapsed <= 0, 0 beyond 40 tau. It runs for
// every candidate that a chain ranks, so it reads e^(-k/16) from a table
// and takes the rest, e^(-r) for r < 1/16, from its cubic Taylor
// polynomial: within 1e-6 of exp (relative), at a fraction of its cost.
func (d Decay) remaining(elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 1
	}
	x := float64(elapsed) / float64(max(time.Duration(d), time.Microsecond)) * expSteps
	if x >= float64(len(expTable)-1) {
		return 0
	}
	k := int(x)
	r := (x - float64(k)) / expSteps
	return expTable[k] * (1 - r*(1-r*(0.5-r/6)))
}

// expSteps is how many steps of expTable make one tau.
const expSteps = 16

// expTable holds e^(-k/expSteps) for k up to 40 tau.
var expTable = func() (t [40*expSteps + 1]float64) {
	for k := range t {
		t[k] = math.Exp(-float64(k) / expSteps)
	}
	return t
}()

// Remaining is the weight that a value seen elapsed ago keeps:
// exp(-elapsed/tau).
func (d Decay) Remaining(elapsed time.Duration) float64 { return d.remaining(elapsed) }

// Alpha is the weight of a new sample that comes elapsed after the
// previous one, in an average that decays with tau: 1 - remaining.
func (d Decay) Alpha(elapsed time.Duration) float64 { return 1 - d.remaining(elapsed) }

// ewma moves avg towards sample by weight w.
func ewma(avg, sample, w float64) float64 { return avg + w*(sample-avg) }
