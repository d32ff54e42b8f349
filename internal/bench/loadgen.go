package bench

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Sample is one request of the load generator.
type Sample struct {
	// At is when the request was due, relative to the start of the
	// measurement (negative during the warm-up).
	At time.Duration
	// Latency runs from when the request was due (not when it was sent),
	// so that a generator falling behind cannot hide queueing.
	Latency time.Duration
	// Node is the index (0-based) of the app node that answered, -1 if
	// none did.
	Node int
	OK   bool
	// Dropped is set when the request was not sent because MaxOutstanding
	// requests were already waiting; it counts as an error.
	Dropped bool
}

// LoadSpec is one open-loop run: Poisson arrivals at Rate per second, for
// Warmup + Measure, each to a random one of URLs (clients spread over the
// entry points as with round-robin DNS).
type LoadSpec struct {
	URLs           []string
	Rate           float64
	Warmup         time.Duration
	Measure        time.Duration
	MaxOutstanding int           // requests in flight at most; beyond, arrivals are dropped
	Timeout        time.Duration // per request
	Header         http.Header   // added to every request
	Seed           uint64
	// Record, if false, discards the samples (bypass traffic).
	Record bool
}

// nodeIndex maps the node header's value to an index.
type nodeIndex map[string]int

// Generate runs spec and returns its samples, in completion order. It
// returns after the last arrival and once every request has ended (each is
// bounded by Timeout), or when ctx ends.
func Generate(ctx context.Context, spec LoadSpec, nodes nodeIndex, start time.Time) []Sample {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		Timeout:       spec.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	rnd := rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x9e3779b97f4a7c15))
	measureStart := start.Add(spec.Warmup)
	end := measureStart.Add(spec.Measure)

	var (
		mu          sync.Mutex
		samples     = make([]Sample, 0, int(spec.Rate*(spec.Warmup+spec.Measure).Seconds()*1.1)+16)
		outstanding atomic.Int64
		wg          sync.WaitGroup
	)
	record := func(s Sample) {
		if !spec.Record {
			return
		}
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}
	due := start
	for ctx.Err() == nil {
		due = due.Add(time.Duration(rnd.ExpFloat64() / spec.Rate * float64(time.Second)))
		if !due.Before(end) {
			break
		}
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
		at := due.Sub(measureStart)
		if outstanding.Load() >= int64(spec.MaxOutstanding) {
			record(Sample{At: at, Node: -1, Dropped: true})
			continue
		}
		url := spec.URLs[rnd.IntN(len(spec.URLs))]
		outstanding.Add(1)
		wg.Add(1)
		go func(due time.Time, url string) {
			defer wg.Done()
			defer outstanding.Add(-1)
			node, ok := doRequest(ctx, client, url, spec.Header, nodes)
			record(Sample{At: due.Sub(measureStart), Latency: time.Since(due), Node: node, OK: ok})
		}(due, url)
	}
	wg.Wait()
	return samples
}

// doRequest makes one GET and reports which node answered and whether it
// succeeded (2xx, body read).
func doRequest(ctx context.Context, client *http.Client, url string, h http.Header, nodes nodeIndex) (int, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return -1, false
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return -1, false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	node, known := nodes[resp.Header.Get(nodeHeader)]
	if !known {
		node = -1
	}
	return node, err == nil && resp.StatusCode/100 == 2 && known
}
