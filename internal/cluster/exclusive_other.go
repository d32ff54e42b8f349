//go:build !unix

package cluster

import (
	"context"
	"time"
)

// Exclusive is a no-op where flock(2) is missing: tests then run their
// clusters side by side.
func Exclusive(context.Context) (release func(), waited time.Duration, err error) {
	return func() {}, 0, nil
}
