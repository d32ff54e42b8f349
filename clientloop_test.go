package backhand_test

import (
	"context"
	"sync"
	"sync/atomic"
)

// clientLoop is the integration tests' bounded load: workers that each
// call once, again and again, until halted, max calls were made in all, or
// ctx is done.
type clientLoop struct {
	total atomic.Int64 // calls started
	stop  chan struct{}
	wg    sync.WaitGroup
}

func (l *clientLoop) start(ctx context.Context, workers int, max int64, once func()) {
	l.stop = make(chan struct{})
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil && l.total.Add(1) <= max {
				select {
				case <-l.stop:
					return
				default:
				}
				once()
			}
		})
	}
}

// halt stops the workers and waits for them.
func (l *clientLoop) halt() {
	close(l.stop)
	l.wg.Wait()
}
