package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Dist is a service-time distribution with mean 1.
type Dist string

const (
	// Exponential service times (coefficient of variation 1).
	Exponential Dist = "exponential"
	// LogNormal service times with sigma 1 (coefficient of variation 1.31).
	LogNormal Dist = "lognormal"
)

// sample draws one service time in units of the mean.
func (d Dist) sample(r *rand.Rand) float64 {
	switch d {
	case LogNormal:
		const sigma = 1.0
		return math.Exp(sigma*r.NormFloat64() - sigma*sigma/2)
	default:
		return r.ExpFloat64()
	}
}

// AppConfig describes one simulated application server.
type AppConfig struct {
	Name      string
	Addr      string        // host:port of its HTTP server
	AgentAddr string        // host:port of its HAProxy agent-check server
	Workers   int           // requests served at once; the rest wait in FIFO order
	Speed     float64       // nominal speed; service time is Mean/Speed
	Mean      time.Duration // mean service time at speed 1
	Dist      Dist
}

// Header names the app server that answered (it passes every proxy).
const nodeHeader = "X-Bench-Node"

// bypassHeader marks requests that bypass the entry points.
const bypassHeader = "X-Bench-Bypass"

// App is a sleep-based application server: Workers slots, a FIFO queue in
// front of them, and service times drawn from Dist, scaled by the nominal
// speed and by an injected slowdown factor (a slow period, a co-located CPU
// hog). It can be killed and restarted. It also answers its Caddy node's
// app_report with what a real application can know about itself, and
// HAProxy's agent-check with the same figure.
type App struct {
	cfg AppConfig

	mu    sync.Mutex
	life  *appLife // nil while dead
	slow  float64  // service time multiplier, 1 = normal
	srv   *http.Server
	agent net.Listener
	wg    sync.WaitGroup // the serve goroutines

	// The app's own measure of its service times relative to the nominal
	// ones, for its reports: ratio sum and count since the last report, and
	// the smoothed ratio.
	repMu    sync.Mutex
	repSum   float64
	repN     int
	repRatio float64
	repAt    time.Time
}

// appLife is the state of one run of the app, replaced on restart so that
// requests of a killed run finish against their own state.
type appLife struct {
	mu      sync.Mutex
	busy    int
	waiting []chan struct{}
	rnd     *rand.Rand

	inSystem atomic.Int64 // queued + in service
	bypass   atomic.Int64 // of which bypass traffic
}

// NewApp returns a stopped app server.
func NewApp(cfg AppConfig) *App {
	return &App{cfg: cfg, slow: 1, repRatio: 1}
}

// Config returns the app's configuration.
func (a *App) Config() AppConfig { return a.cfg }

// Start starts serving (again, after Kill).
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.life != nil {
		return nil
	}
	ln, err := listenRetry("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("app %s: %w", a.cfg.Name, err)
	}
	var agent net.Listener
	if a.cfg.AgentAddr != "" {
		agent, err = listenRetry("tcp", a.cfg.AgentAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("app %s agent: %w", a.cfg.Name, err)
		}
	}
	life := &appLife{rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	mux := http.NewServeMux()
	mux.HandleFunc("/__report", a.serveReport)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { a.serve(life, w, r) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second}
	a.life, a.srv, a.agent = life, srv, agent
	a.wg.Go(func() { _ = srv.Serve(ln) })
	if agent != nil {
		a.wg.Go(func() { a.serveAgent(agent) })
	}
	return nil
}

// listenRetry listens, retrying briefly: a port just released by a killed
// process or a closed server can take a moment to be free.
func listenRetry(network, addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen(network, addr); err == nil {
			return ln, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// Kill stops serving at once: listeners and connections close, requests in
// progress are lost.
func (a *App) Kill() {
	a.mu.Lock()
	srv, agent := a.srv, a.agent
	a.life, a.srv, a.agent = nil, nil, nil
	a.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	if agent != nil {
		_ = agent.Close()
	}
	a.wg.Wait()
}

// Alive reports whether the app is serving.
func (a *App) Alive() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.life != nil
}

// SetSlowdown sets the service time multiplier (1 = normal, 5 = five
// times slower).
func (a *App) SetSlowdown(f float64) {
	a.mu.Lock()
	a.slow = f
	a.mu.Unlock()
}

// Snapshot is what the oracle reads: the true queue and the true speed.
type Snapshot struct {
	Alive    bool
	InSystem int64   // queued + in service
	Bypass   int64   // of which bypass traffic
	Capacity float64 // workers x true current speed
}

// Snapshot reads the app's true state.
func (a *App) Snapshot() Snapshot {
	a.mu.Lock()
	life, slow := a.life, a.slow
	a.mu.Unlock()
	if life == nil {
		return Snapshot{}
	}
	return Snapshot{
		Alive:    true,
		InSystem: life.inSystem.Load(),
		Bypass:   life.bypass.Load(),
		Capacity: float64(a.cfg.Workers) * a.cfg.Speed / slow,
	}
}

func (a *App) slowdown() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.slow
}

// serve queues the request for a worker, sleeps its service time and
// answers with the app's name.
func (a *App) serve(life *appLife, w http.ResponseWriter, r *http.Request) {
	bypass := r.Header.Get(bypassHeader) != ""
	life.inSystem.Add(1)
	if bypass {
		life.bypass.Add(1)
	}
	defer func() {
		life.inSystem.Add(-1)
		if bypass {
			life.bypass.Add(-1)
		}
	}()
	life.acquire(a.cfg.Workers)
	life.mu.Lock()
	x := a.cfg.Dist.sample(life.rnd)
	life.mu.Unlock()
	nominal := float64(a.cfg.Mean) / a.cfg.Speed
	d := time.Duration(x * nominal * a.slowdown())
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	life.release()
	a.observe(float64(d) / nominal)
	w.Header().Set(nodeHeader, a.cfg.Name)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(a.cfg.Name + "\n"))
}

// acquire waits for a free worker, first come first served.
func (l *appLife) acquire(workers int) {
	l.mu.Lock()
	if l.busy < workers {
		l.busy++
		l.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	l.waiting = append(l.waiting, ch)
	l.mu.Unlock()
	<-ch // the releasing worker hands its slot over
}

// release hands the slot to the first waiter, or frees it.
func (l *appLife) release() {
	l.mu.Lock()
	if len(l.waiting) > 0 {
		ch := l.waiting[0]
		l.waiting[0] = nil
		l.waiting = l.waiting[1:]
		l.mu.Unlock()
		close(ch)
		return
	}
	l.busy--
	l.mu.Unlock()
}

// observe records one request's service time relative to the node's usual
// mean service time, which a real application can measure (it times its own
// handlers). It is noisy: the requests' sizes vary.
func (a *App) observe(ratio float64) {
	a.repMu.Lock()
	a.repSum += ratio
	a.repN++
	a.repMu.Unlock()
}

// weight is the app's report: full weight (1000) while its requests take
// about their usual time, less in proportion when they take longer. The
// ratio is the mean over the last half second or more, smoothed (half
// weight to each new window); a window with too few samples keeps the
// previous figure. Within 25% of the usual time counts as usual, since the
// measure is noisy.
func (a *App) weight() (int, float64) {
	a.repMu.Lock()
	now := time.Now()
	if a.repN >= 10 && now.Sub(a.repAt) >= 500*time.Millisecond {
		a.repRatio = 0.5*a.repRatio + 0.5*(a.repSum/float64(a.repN))
		a.repSum, a.repN, a.repAt = 0, 0, now
	}
	ratio := a.repRatio
	a.repMu.Unlock()
	w := 1000
	if ratio > 1.25 {
		w = max(int(math.Round(1000/ratio)), 1)
	}
	life := a.currentLife()
	load := 0.0
	if life != nil {
		load = float64(life.inSystem.Load()) / float64(a.cfg.Workers)
	}
	return w, load
}

func (a *App) currentLife() *appLife {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.life
}

// serveReport answers the Caddy node's app_report: `load=<in system per
// worker> weight=<0-1000>`.
func (a *App) serveReport(w http.ResponseWriter, _ *http.Request) {
	wt, load := a.weight()
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "load=%.3f weight=%d\n", load, wt)
}

// serveAgent answers HAProxy's agent-check: one line with the weight as a
// percentage of the configured one, then close.
func (a *App) serveAgent(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			// HAProxy may send agent-send text; the answer does not depend on it.
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			_, _ = bufio.NewReader(c).Peek(1)
			wt, _ := a.weight()
			_, _ = c.Write([]byte(strconv.Itoa(max(wt/10, 1)) + "%\n"))
		}()
	}
}

// WaitIdle waits until the app has nothing in its system, or ctx ends.
func (a *App) WaitIdle(ctx context.Context) {
	for ctx.Err() == nil {
		life := a.currentLife()
		if life == nil || life.inSystem.Load() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
