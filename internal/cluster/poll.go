package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// permanentError stops Poll at once.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that Poll gives up at once instead of retrying.
func Permanent(err error) error { return permanentError{err} }

// Poll calls cond every `every` until it returns nil, the timeout passes or
// ctx is done. It returns nil once cond succeeds, else an error wrapping
// cond's last error; a Permanent error from cond ends it early.
func Poll(ctx context.Context, timeout, every time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		last := cond()
		if last == nil {
			return nil
		}
		var perm permanentError
		if errors.As(last, &perm) {
			return perm.err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not within %v: %w", timeout, last)
			}
			return fmt.Errorf("%w: %w", ctx.Err(), last)
		case <-t.C:
		}
	}
}
