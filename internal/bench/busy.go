package bench

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// burnSink keeps the compiler from discarding the burners' work.
var burnSink atomic.Uint64

// burnCPUs keeps every CPU busy, twice over so that the scheduler finds a
// spinning goroutine wherever a Caddy process would run, until stop is
// called. It stands for a machine busy with other work.
func burnCPUs() (stop func()) {
	var done atomic.Bool
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Go(func() {
			x := uint64(1)
			for !done.Load() {
				for range 1 << 12 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
			burnSink.Add(x)
		})
	}
	return func() {
		done.Store(true)
		wg.Wait()
	}
}
