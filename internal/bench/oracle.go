package bench

import (
	"context"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Oracle is the limit contender: a proxy inside the harness that, for every
// request, reads each app server's true queue and true current speed and
// sends the request to the node site with the least expected wait,
// (in flight + 1) / (workers x speed). In flight is the requests the oracle
// has sent there and not yet seen answered (so requests still on their way
// count) plus the bypass traffic in the app's system. It is not deployable:
// no real balancer sees every queue instantly. It listens on the entry
// addresses, so the load generator treats it like any other contender.
type Oracle struct {
	apps     []*App
	inflight []atomic.Int64
	client   *http.Client
	servers  []*http.Server
	wg       sync.WaitGroup
}

// StartOracle listens on the first entries entry addresses.
func StartOracle(apps []*App, entries int) (*Oracle, error) {
	o := &Oracle{
		apps:     apps,
		inflight: make([]atomic.Int64, len(apps)),
		client: &http.Client{
			Timeout: 60 * time.Second,
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 256,
				IdleConnTimeout:     30 * time.Second,
				DisableCompression:  true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	for j := 1; j <= entries; j++ {
		ln, err := listenRetry("tcp", entryAddr(j))
		if err != nil {
			o.Stop()
			return nil, err
		}
		srv := &http.Server{Handler: o, ReadHeaderTimeout: 10 * time.Second}
		o.servers = append(o.servers, srv)
		o.wg.Go(func() { _ = srv.Serve(ln) })
	}
	return o, nil
}

// Stop closes the listeners and connections.
func (o *Oracle) Stop() {
	for _, s := range o.servers {
		_ = s.Close()
	}
	o.wg.Wait()
	o.client.CloseIdleConnections()
}

// pick returns the node with the least expected wait among those not in
// tried (a bit mask), ties broken at random; -1 if none is alive.
func (o *Oracle) pick(tried uint64) int {
	best, bestScore := -1, math.Inf(1)
	n := len(o.apps)
	start := rand.IntN(n)
	for k := range n {
		i := (start + k) % n
		if tried&(1<<i) != 0 {
			continue
		}
		s := o.apps[i].Snapshot()
		if !s.Alive || s.Capacity <= 0 {
			continue
		}
		score := (float64(o.inflight[i].Load()+s.Bypass) + 1) / s.Capacity
		if score < bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// ServeHTTP forwards the request, trying up to two other nodes when one
// fails before answering, as every contender's retries do.
func (o *Oracle) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var tried uint64
	for range 3 {
		i := o.pick(tried)
		if i < 0 {
			break
		}
		tried |= 1 << i
		status, hdr, body, err := o.forward(r.Context(), i, r)
		if err != nil {
			continue
		}
		for k, v := range hdr {
			if k == nodeHeader || k == "Content-Type" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	http.Error(w, "no node answered", http.StatusBadGateway)
}

func (o *Oracle) forward(ctx context.Context, i int, r *http.Request) (int, http.Header, []byte, error) {
	o.inflight[i].Add(1)
	defer o.inflight[i].Add(-1)
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+siteAddr(i+1)+r.URL.RequestURI(), nil)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, body, nil
}
