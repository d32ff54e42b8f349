package backhand

import (
	"sync/atomic"
	"time"
)

// outcome is how a balancing decision ended, for metrics and the status
// page.
type outcome uint8

const (
	outcomeLocal      outcome = iota // served by this node (it won, the list was empty, or the request was marked)
	outcomeForwarded                 // proxied to a peer
	outcomeRedirected                // answered with a redirect to a peer
	outcomeFallback                  // the chain left no available candidate; the fallback policy chose
	outcomeFailedOver                // every peer tried failed; served by this node
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"local", "forwarded", "redirected", "fallback", "failed_over"}

func (o outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// chainBuckets are the upper bounds of the chain-duration histogram.
var chainBuckets = [...]time.Duration{
	250 * time.Nanosecond, 500 * time.Nanosecond, time.Microsecond, 2500 * time.Nanosecond,
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond, 100 * time.Microsecond, time.Millisecond,
}

// decisions counts outcomes and times the candidacy chain, lock-free: the
// metrics collector reads it at scrape time, so the request path touches no
// Prometheus code.
type decisions struct {
	outcomes [numOutcomes]atomic.Uint64
	buckets  [len(chainBuckets) + 1]atomic.Uint64 // the last is +Inf
	sumNanos atomic.Uint64
}

func (d *decisions) record(o outcome) { d.outcomes[o].Add(1) }

// timeChain records how long one run of the chain took.
func (d *decisions) timeChain(took time.Duration) {
	i := 0
	for i < len(chainBuckets) && took > chainBuckets[i] {
		i++
	}
	d.buckets[i].Add(1)
	d.sumNanos.Add(uint64(max(took, 0)))
}
