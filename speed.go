package backhand

import (
	"slices"
	"sync/atomic"
	"time"
)

// The speed benchmark is one "round" repeated: sort 1024 pseudo-random
// integers (branchy), then hash 4 KiB with FNV-1a (a chain of multiplies).
// Both are plain Go that no instruction-set extension speeds up. SHA-256 was
// rejected: on the same core it ran 3.6x faster with the SHA extensions than
// without them, and 8x faster than with AVX2 off too, which says nothing
// about how fast a node serves requests.
const (
	speedSortLen  = 1024
	speedHashLen  = 4096
	speedBatch    = 4 // rounds between clock reads, ~60µs on the reference core
	speedWindows  = 5 // the budget is split in windows; the fastest counts
	speedMinScore = 1 // a rating is never 0, which would read as "unknown"
	// speedRefRate is the rounds per second of the reference core (rating
	// 1000): the fastest window of an AMD EPYC vCPU at 2.6 GHz (Zen, in a
	// VM), about 15µs a round.
	speedRefRate = 65000
)

// The benchmark's fixed inputs, filled by a xorshift generator with a fixed
// seed so that every node runs the same work.
var (
	speedSortInput [speedSortLen]uint32
	speedHashInput [speedHashLen]byte
	// speedSink keeps the compiler from discarding the work.
	speedSink atomic.Uint64
)

func init() {
	x := uint32(2463534242)
	next := func() uint32 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		return x
	}
	for i := range speedSortInput {
		speedSortInput[i] = next()
	}
	for i := range speedHashInput {
		speedHashInput[i] = byte(next())
	}
}

// measureSpeed runs a CPU benchmark for about budget on the calling goroutine
// and returns a rating where 1000 means a reference core (see speedRefRate),
// proportional to rounds per second, at least 1.
//
// The budget is split into windows and the fastest window counts, so that
// the rating is not dragged down by a moment of preemption, start-up work or
// frequency ramp-up. Each window ends at the first batch of rounds (~60µs on
// the reference core) past its share of budget, so the whole runs at most
// budget plus five batches; a budget <= 0 runs five batches.
func measureSpeed(budget time.Duration) uint32 {
	window := max(budget/speedWindows, 1)
	var scratch [speedSortLen]uint32
	var sum uint64
	best := 0.0
	for range speedWindows {
		best = max(best, speedWindow(window, &scratch, &sum))
	}
	speedSink.Add(sum)
	return speedRating(best)
}

// speedWindow runs batches of rounds for at least d (at least one batch) and
// returns the rounds per second.
func speedWindow(d time.Duration, scratch *[speedSortLen]uint32, sum *uint64) float64 {
	start := time.Now()
	rounds := 0
	for {
		for range speedBatch {
			*sum += speedRound(scratch)
		}
		rounds += speedBatch
		if elapsed := time.Since(start); elapsed >= d {
			return float64(rounds) / elapsed.Seconds()
		}
	}
}

// speedRound does one round of work and returns a value depending on all of
// it.
func speedRound(scratch *[speedSortLen]uint32) uint64 {
	*scratch = speedSortInput
	slices.Sort(scratch[:])
	h := uint64(14695981039346656037) // FNV-1a offset basis
	for _, b := range speedHashInput {
		h ^= uint64(b)
		h *= 1099511628211 // FNV-1a prime
	}
	return h + uint64(scratch[speedSortLen/2])
}

// speedRating converts rounds per second into the rating, clamped to
// [speedMinScore, MaxUint32].
func speedRating(roundsPerSec float64) uint32 {
	return max(milli32(roundsPerSec/speedRefRate), speedMinScore)
}
