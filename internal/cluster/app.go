package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// AppConcurrency bounds the requests one App works on at once; more wait
// for a slot. It is far above what the demo's load reaches, so that the
// time a balancer sees is the app's work, not a queue of ours.
const AppConcurrency = 256

// App is the application behind one demo node's app site: a net/http
// server that takes a while per request, as a real application does, and
// answers "served by <name>" (no newline, as Caddy's respond did). Without
// it every request would take microseconds, nothing would ever be in
// flight, and every balancer would see only ties.
type App struct {
	body  string
	work  time.Duration
	slots chan struct{}
	srv   *http.Server
	addr  string
	ended chan error // Serve's result

	mu  sync.Mutex // guards rng, which is not safe for concurrent use
	rng *rand.Rand
}

// StartApp listens on addr (host:port) and serves every request after a
// wait drawn from an exponential distribution with mean work, so that
// requests differ as they do in a real application; the draws come from
// rand.NewPCG(seed, 0), so a seed gives the same sequence every run. With
// work 0 it answers at once. A request whose client goes away stops
// waiting.
func StartApp(addr, name string, work time.Duration, seed uint64) (*App, error) {
	if work < 0 {
		return nil, fmt.Errorf("cluster: app %s: negative work %v", name, work)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: app %s: %w", name, err)
	}
	a := &App{
		body:  "served by " + name,
		work:  work,
		slots: make(chan struct{}, AppConcurrency),
		addr:  ln.Addr().String(),
		ended: make(chan error, 1),
		rng:   rand.New(rand.NewPCG(seed, 0)),
	}
	a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { a.ended <- a.srv.Serve(ln) }()
	return a, nil
}

// Addr is host:port the app listens on.
func (a *App) Addr() string { return a.addr }

// ServeHTTP waits for a slot and the drawn work, then answers.
func (a *App) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-r.Context().Done():
		return
	}
	if d := a.draw(); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, a.body)
}

// draw returns the next request's work.
func (a *App) draw() time.Duration {
	if a.work == 0 {
		return 0
	}
	a.mu.Lock()
	x := a.rng.ExpFloat64()
	a.mu.Unlock()
	return time.Duration(x * float64(a.work))
}

// Close stops accepting requests, lets those in flight finish (for up to
// grace), then closes every connection.
func (a *App) Close(grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := a.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, a.srv.Close())
	}
	if serr := <-a.ended; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("cluster: closing app on %s: %w", a.addr, err)
	}
	return nil
}

// Apps are the demo's applications, node1 first (see Demo.StartApps).
type Apps []*App

// Close closes the apps in parallel (see App.Close) and joins the errors.
func (as Apps) Close(grace time.Duration) error {
	errs := make([]error, len(as))
	var wg sync.WaitGroup
	for i, a := range as {
		wg.Go(func() { errs[i] = a.Close(grace) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
