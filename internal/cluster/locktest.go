package cluster

import (
	"context"
	"testing"
	"time"
)

// LockForTest takes the cluster lock (Exclusive) for a test that starts
// real processes, waiting at most 20 minutes, logs how long it waited, and
// fails the test when it cannot; call the returned function to release it.
func LockForTest(tb testing.TB) (release func()) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	release, waited, err := Exclusive(ctx)
	if err != nil {
		tb.Fatalf("cluster lock: %v", err)
	}
	tb.Logf("waited %v for the cluster lock", waited.Round(time.Millisecond))
	return release
}
