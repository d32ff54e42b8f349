package backhand

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// TestAnnouncementCPU measures what receiving 1000 announcements a second
// costs a real Caddy node: 100 peers, each announcing 10 times a second,
// signed, for a few seconds, against the same node idle for as long. It
// prints figures and asserts none (a shared machine's timings are noise):
//
//	BACKHAND_MEASURE=1 go test -run TestAnnouncementCPU -v .
func TestAnnouncementCPU(t *testing.T) {
	if os.Getenv("BACKHAND_MEASURE") == "" {
		t.Skip("a measurement, not a test: set BACKHAND_MEASURE=1")
	}
	const (
		rate    = 1000
		peers   = 100
		seconds = 10
		key     = "measure-key-0123456789abcdef"
	)
	defer cluster.LockForTest(t)() // no other real-process test beside it
	dir := t.TempDir()
	bin, err := cluster.Build(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	base, err := cluster.FreeBlock(32, "127.0.0.1", "127.0.0.61")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.NodeConfig{Index: 61, HTTPPort: base + 1, UDPPort: base + 20, AdminPort: base + 31, Cluster: "measure", Key: key,
		ExtraBackhand: []string{"max_peers 2048"}}
	node, err := cluster.Start(bin, dir, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Stop(5 * time.Second)
	if err := node.WaitReady(t.Context(), 30*time.Second); err != nil {
		t.Fatal(err)
	}

	idle := cpuDuring(t, node.Pid(), seconds*time.Second, func(context.Context) {})
	conn, err := net.Dial("udp", cfg.UDPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := wire.NewSigner(wire.AnnounceKey([]byte(key)))
	sent := 0
	busy := cpuDuring(t, node.Pid(), seconds*time.Second, func(ctx context.Context) {
		// Ten datagrams every 10ms: a 1ms ticker cannot keep time on a
		// busy machine.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		seqs := make([]uint64, peers)
		var buf []byte
		for i := 0; ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for range rate / 100 {
				p := i % peers
				i++
				seqs[p]++
				a := sampleAnnouncement()
				a.Cluster, a.Node, a.Seq, a.Incarnation, a.SentAt = "measure", fmt.Sprintf("peer-%03d", p), seqs[p], uint64(p), time.Now().UnixNano()
				buf, _ = a.Encode(buf[:0], s)
				if _, err := conn.Write(buf); err == nil {
					sent++
				}
			}
		}
	})
	v, err := node.Peers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("datagram %d bytes; sent %d in %ds (%.0f/s); node accepted %d, rejected %v",
		len(mustEncode(t, s)), sent, seconds, float64(sent)/seconds, v.Accepted, v.Rejected)
	t.Logf("node CPU: idle %.2f%% of one core, receiving %.2f%%; %.1f µs of CPU per announcement",
		100*idle.Seconds()/seconds, 100*busy.Seconds()/seconds, float64((busy-idle).Microseconds())/float64(max(sent, 1)))
}

func mustEncode(t *testing.T, s *wire.Signer) []byte {
	a := sampleAnnouncement()
	b, err := a.Encode(nil, s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cpuDuring returns the CPU time (user+system) process pid used while f ran
// for d.
func cpuDuring(t *testing.T, pid int, d time.Duration, f func(context.Context)) time.Duration {
	t.Helper()
	before := cpuTime(t, pid)
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	f(ctx)
	<-ctx.Done()
	return cpuTime(t, pid) - before
}

// cpuTime reads utime+stime of pid from /proc (clock ticks of 10ms).
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}
