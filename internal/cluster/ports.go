package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ports FreeBlock picks from: above the well-known and registered ports
// the demo and the benchmark use by default (8080, 2019, 4445, 12000-18090),
// and below Linux's ephemeral ports (32768 on), so that a block is never
// taken by the local end of an outgoing connection.
const (
	freeBlockLow   = 20000
	freeBlockHigh  = 32768 // exclusive
	freeBlockTries = 50
)

// FreeBlock returns the first of n consecutive ports (first, first+1, ...,
// first+n-1) that are free for TCP and for UDP on every one of hosts, so
// that a test can lay its nodes' ports out from one base as the demo does
// (entry on the base, app sites on base+1, applications on base+2, ...)
// without meeting another run of the tests on the same machine. Blocks are
// picked at random and checked by binding every address at once, without
// SO_REUSEPORT, so a port Caddy already holds counts as taken; the sockets
// are closed before FreeBlock returns. Two runs can still pick the same
// block in the moment between the check and their processes binding it, but
// with blocks picked at random among thousands of ports that is unlikely,
// and Start's own check (NodeConfig.CheckFree) reports it rather than
// sharing sockets.
func FreeBlock(n int, hosts ...string) (int, error) {
	if n < 1 || n > freeBlockHigh-freeBlockLow {
		return 0, fmt.Errorf("cluster: a block of %d ports: want 1-%d", n, freeBlockHigh-freeBlockLow)
	}
	if len(hosts) == 0 {
		return 0, errors.New("cluster: a block of ports needs at least one host")
	}
	var last error
	for range freeBlockTries {
		first := freeBlockLow + rand.IntN(freeBlockHigh-freeBlockLow-n+1)
		if last = checkBlock(first, n, hosts); last == nil {
			return first, nil
		}
	}
	return 0, fmt.Errorf("cluster: no %d free consecutive ports on %v in %d tries; last: %w", n, hosts, freeBlockTries, last)
}

// checkBlock binds TCP and UDP on every host at ports first to first+n-1,
// and closes them all; it returns the first error.
func checkBlock(first, n int, hosts []string) error {
	var closers []interface{ Close() error }
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for p := first; p < first+n; p++ {
		for _, h := range hosts {
			addr := net.JoinHostPort(h, strconv.Itoa(p))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			closers = append(closers, ln)
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			closers = append(closers, pc)
		}
	}
	return nil
}
