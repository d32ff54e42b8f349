// Package fault is a fault-injection harness over real processes: it runs
// Caddy nodes built from the checkout (internal/cluster), each fronting an
// application of its own that counts what it serves by request id, drives
// open-loop load through them, injects one fault at a time (a killed node,
// a frozen one, a partition, announcement loss, a reload storm, a restart,
// a drain, a skewed clock) and reports what the clients saw, how fast the
// cluster stopped sending to the faulty node and gave a recovered one its
// share back, and whether any request was lost or served twice.
//
// cmd/bhfault is its command line; FAULTS.md has the results.
package fault

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Headers the load generator and the applications exchange (they pass
// every Caddy hop unchanged).
const (
	idHeader   = "X-Fault-Id"   // request id, unique in a run
	nodeHeader = "X-Fault-Node" // the application that served it
)

// bucket is the resolution of the applications' arrival timelines.
const bucket = 100 * time.Millisecond

// App is one node's application: Workers requests served at once, the rest
// waiting first come first served, each taking an exponentially distributed
// time of mean Mean. It counts every request it serves to the end by id
// (X-Fault-Id) and method, and keeps a timeline of arrivals, so that the
// harness can tell a request served twice from one served once, and when a
// node stopped getting requests. Kill stops it as kill -9 would: the
// listener and every connection close and requests in progress are neither
// answered nor counted. It can be started again.
type App struct {
	name    string
	addr    string
	workers int
	mean    time.Duration
	start   atomic.Int64 // origin of the timeline, Unix ns

	mu     sync.Mutex
	srv    *http.Server
	served map[string]int // id -> times served to the end
	posts  map[string]int // of those, POSTs
	arr    []atomic.Int64 // arrivals per bucket since start
	rng    *rand.Rand
	slots  chan struct{}
	wg     sync.WaitGroup
	inSys  atomic.Int64
	killed atomic.Int64 // requests cut off by Kill
}

// NewApp returns a stopped application; its timeline starts at start and
// is horizon long (later arrivals go in the last bucket).
func NewApp(name, addr string, workers int, mean time.Duration, start time.Time, horizon time.Duration, seed uint64) *App {
	a := &App{
		name: name, addr: addr, workers: workers, mean: mean,
		served: map[string]int{}, posts: map[string]int{},
		arr: make([]atomic.Int64, int(horizon/bucket)+1),
		rng: rand.New(rand.NewPCG(seed, 7)),
	}
	a.SetStart(start)
	return a
}

// SetStart moves the origin of the arrivals timeline.
func (a *App) SetStart(t time.Time) { a.start.Store(t.UnixNano()) }

// Start listens and serves (again, after Kill).
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for range 50 { // a port just released can take a moment
		if ln, err = net.Listen("tcp", a.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("fault: app %s: %w", a.name, err)
	}
	slots := make(chan struct{}, a.workers)
	a.slots = slots
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.serve(slots, w, r) }),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
	a.srv = srv
	a.wg.Go(func() { _ = srv.Serve(ln) })
	return nil
}

// Kill closes the listener and every connection at once; requests in
// progress are lost, not counted.
func (a *App) Kill() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	a.wg.Wait()
}

// Close is Kill; it exists for symmetry with the processes.
func (a *App) Close() { a.Kill() }

func (a *App) alive(srv *http.Server) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.srv == srv && srv != nil
}

func (a *App) serve(slots chan struct{}, w http.ResponseWriter, r *http.Request) {
	if i := int(time.Since(time.Unix(0, a.start.Load())) / bucket); i >= 0 {
		a.arr[min(i, len(a.arr)-1)].Add(1)
	}
	a.inSys.Add(1)
	defer a.inSys.Add(-1)
	select {
	case slots <- struct{}{}:
	case <-r.Context().Done():
		a.killed.Add(1)
		return
	}
	a.mu.Lock()
	d := time.Duration(a.rng.ExpFloat64() * float64(a.mean))
	srv := a.srv
	a.mu.Unlock()
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
		<-slots
		a.killed.Add(1)
		return
	}
	<-slots
	if srv == nil || !a.alive(srv) {
		a.killed.Add(1)
		return // killed while working: never answered
	}
	id := r.Header.Get(idHeader)
	a.mu.Lock()
	if id != "" {
		a.served[id]++
		if r.Method == http.MethodPost {
			a.posts[id]++
		}
	}
	a.mu.Unlock()
	w.Header().Set(nodeHeader, a.name)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("served by " + a.name + "\n"))
}

// InSystem is the number of requests queued or in service.
func (a *App) InSystem() int64 { return a.inSys.Load() }

// Served returns a copy of the served counts by id, and of the POSTs.
func (a *App) Served() (all, posts map[string]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	all = make(map[string]int, len(a.served))
	for k, v := range a.served {
		all[k] = v
	}
	posts = make(map[string]int, len(a.posts))
	for k, v := range a.posts {
		posts[k] = v
	}
	return all, posts
}

// Arrivals is the arrivals timeline: counts per 100 ms since start.
func (a *App) Arrivals() []int64 {
	out := make([]int64, len(a.arr))
	for i := range a.arr {
		out[i] = a.arr[i].Load()
	}
	return out
}
