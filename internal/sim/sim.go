// Package sim is a discrete-event simulator of a backhand cluster without
// sockets: n single-server FIFO queues with exponential service (mean 1,
// the time unit), Poisson arrivals at rate load*n spread uniformly over K
// entry proxies, and a board of announced queue lengths that is refreshed
// every Period time units. Each proxy decides with the project's real
// candidacy chains (candidacytest.ParseChain over a candidacytest.Board
// of its own), so what is measured here is the code that runs in Caddy.
//
// It is the supermarket model of Mitzenmacher ("The Power of Two Choices in
// Randomized Load Balancing", 2001) and, with Period > 0, his periodic
// update model ("How Useful Is Old Information?", 2000), so it can be
// validated against their results before it is trusted.
package sim

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/candidacy/candidacytest"
)

// Config is one simulation run.
type Config struct {
	Servers int     // n
	Load    float64 // arrival rate per server, service rate 1 (so utilisation)
	Proxies int     // K entry proxies deciding independently; default 1
	// Period is how often the board is refreshed, in mean service times;
	// 0 means every change of a queue is announced at once (fresh
	// information).
	Period float64
	// LocalOnly never refreshes the board: a proxy knows only what it sent
	// itself (what Caddy's least_conn and Envoy's least_request see).
	LocalOnly bool
	Chain     string // a backhand chain, e.g. "byRandom; byWindow 2; byBusyChildren"
	Arrivals  int    // arrivals simulated, warm-up included
	Warmup    float64
	Seed      uint64
}

// Result is what a run measured over the arrivals after the warm-up.
type Result struct {
	MeanTime float64 // mean time in system (sojourn), in mean service times
	P99      float64
	Jobs     int
}

// unit is the wall-clock length of one mean service time for the chains'
// clocks (ages are compared in real durations).
const unit = time.Millisecond

func at(t float64) time.Time { return time.Unix(0, int64(t*float64(unit))) }

// job is one request in a queue.
type job struct {
	arrived float64
	proxy   int32
	counted bool
}

// server is a FIFO queue with one worker.
type server struct {
	name  string
	queue []job // queue[0] is in service
	head  int
	// served is the mean time in system of the jobs it served, in units,
	// an average over the last few hundred: what a real node announces as
	// its latency (the time it counts each request as busy).
	served float64
}

// servedWeight is one departure's weight in server.served: about the
// share of one request in the five seconds a real node averages over, at
// a hundred or so requests per second.
const servedWeight = 1.0 / 512

// latency is the server's announced time per request.
func (s *server) latency() time.Duration { return time.Duration(s.served * float64(unit)) }

func (s *server) len() int { return len(s.queue) - s.head }

// departures is a min-heap of (time, server).
type departures []departure

type departure struct {
	t float64
	s int
}

func (d departures) Len() int           { return len(d) }
func (d departures) Less(i, j int) bool { return d[i].t < d[j].t }
func (d departures) Swap(i, j int)      { d[i], d[j] = d[j], d[i] }
func (d *departures) Push(x any)        { *d = append(*d, x.(departure)) }
func (d *departures) Pop() any {
	old := *d
	x := old[len(old)-1]
	*d = old[:len(old)-1]
	return x
}

// Run simulates one configuration.
func Run(cfg Config) (Result, error) {
	if cfg.Proxies <= 0 {
		cfg.Proxies = 1
	}
	if cfg.Servers <= 0 || cfg.Load <= 0 || cfg.Arrivals <= 0 {
		return Result{}, fmt.Errorf("sim: servers, load and arrivals must be positive")
	}
	chain, err := candidacytest.ParseChain(cfg.Chain)
	if err != nil {
		return Result{}, fmt.Errorf("sim: chain %q: %v", cfg.Chain, err)
	}
	s := newState(cfg)
	return s.run(chain), nil
}

type state struct {
	cfg     Config
	rng     *rand.Rand
	servers []server
	boards  []*candidacytest.Board
	deps    departures
	now     float64
	times   []float64
	// nextReference is when fresh boards next recompute their reference.
	nextReference float64
}

func newState(cfg Config) *state {
	s := &state{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	s.servers = make([]server, cfg.Servers)
	for i := range s.servers {
		// Start from an M/M/1 queue's mean time in system at this load.
		s.servers[i].name, s.servers[i].served = "s"+strconv.Itoa(i), 1/max(1-cfg.Load, 0.05)
	}
	for k := range cfg.Proxies {
		b := candidacytest.NewBoard("proxy-" + strconv.Itoa(k))
		for i := range s.servers {
			_ = b.Announce(candidacy.Peer{
				Name: s.servers[i].name, Advertise: "sim:" + strconv.Itoa(i), ReceivedAt: at(0), FirstSeen: at(-1e6),
				Figures: candidacy.Figures{Capacity: 1, Speed: 1000, CPUMilli: 1000, LatencyMicros: uint32(s.servers[i].latency().Microseconds())},
			})
		}
		s.boards = append(s.boards, b)
	}
	return s
}

func (s *state) run(chain *candidacytest.Chain) Result {
	cfg := s.cfg
	rate := cfg.Load * float64(cfg.Servers)
	nextArrival := s.rng.ExpFloat64() / rate
	nextRefresh := math.Inf(1)
	if cfg.Period > 0 && !cfg.LocalOnly {
		nextRefresh = cfg.Period
	}
	warm := int(cfg.Warmup * float64(cfg.Arrivals))
	rnd := s.rng.IntN
	s.prefill()
	for arrivals := 0; arrivals < cfg.Arrivals || len(s.deps) > 0; {
		nextDep := math.Inf(1)
		if len(s.deps) > 0 {
			nextDep = s.deps[0].t
		}
		switch {
		case nextRefresh <= nextArrival && nextRefresh <= nextDep:
			s.now = nextRefresh
			s.refreshAll()
			nextRefresh += cfg.Period
		case nextDep <= nextArrival || arrivals >= cfg.Arrivals:
			s.now = nextDep
			s.depart(heap.Pop(&s.deps).(departure).s)
		default:
			s.now = nextArrival
			s.arrive(chain, rnd, arrivals >= warm)
			arrivals++
			if arrivals < cfg.Arrivals {
				nextArrival += s.rng.ExpFloat64() / rate
			} else {
				nextArrival = math.Inf(1)
			}
		}
	}
	return summarize(s.times)
}

// prefill starts every queue from the stationary distribution of an M/M/1
// queue at the configured load (geometric), instead of empty, so that the
// warm-up need not last the hundreds of service times that a queue at 0.9
// takes to fill. These jobs belong to no proxy.
func (s *state) prefill() {
	rho := s.cfg.Load
	if rho >= 1 {
		return
	}
	for i := range s.servers {
		n := int(math.Floor(math.Log(1-s.rng.Float64()) / math.Log(rho)))
		for range n {
			s.servers[i].queue = append(s.servers[i].queue, job{arrived: 0, proxy: -1})
		}
		if n > 0 {
			heap.Push(&s.deps, departure{t: s.rng.ExpFloat64(), s: i})
		}
		s.announceChange(i)
	}
	if s.cfg.Period > 0 && !s.cfg.LocalOnly {
		s.refreshAll()
	}
}

// arrive sends one arrival through a random proxy's chain.
func (s *state) arrive(chain *candidacytest.Chain, rnd func(int) int, counted bool) {
	if s.cfg.Period == 0 && !s.cfg.LocalOnly && s.now >= s.nextReference {
		// Fresh boards: the reference time once per time unit.
		for _, b := range s.boards {
			b.UpdateReference(at(s.now))
		}
		s.nextReference = s.now + 1
	}
	k := s.rng.IntN(len(s.boards))
	name := chain.Choose(s.boards[k], nil, at(s.now), rnd)
	i := s.index(name, rnd)
	s.boards[k].Begin(s.servers[i].name)
	srv := &s.servers[i]
	srv.queue = append(srv.queue, job{arrived: s.now, proxy: int32(k), counted: counted})
	if srv.len() == 1 {
		heap.Push(&s.deps, departure{t: s.now + s.rng.ExpFloat64(), s: i})
	}
	s.announceChange(i)
}

// index maps a winner's name to its server; no winner (the chain left
// nothing) goes to a random server.
func (s *state) index(name string, rnd func(int) int) int {
	if len(name) > 1 && name[0] == 's' {
		if i, err := strconv.Atoi(name[1:]); err == nil && i < len(s.servers) {
			return i
		}
	}
	return rnd(len(s.servers))
}

func (s *state) depart(i int) {
	srv := &s.servers[i]
	j := srv.queue[srv.head]
	srv.head++
	if srv.head > 64 && srv.head*2 > len(srv.queue) {
		srv.queue = append(srv.queue[:0], srv.queue[srv.head:]...)
		srv.head = 0
	}
	d := s.now - j.arrived
	srv.served += servedWeight * (d - srv.served)
	if j.proxy >= 0 {
		s.boards[j.proxy].End(srv.name, time.Duration(d*float64(unit)), at(s.now))
	}
	if j.counted {
		s.times = append(s.times, d)
	}
	if srv.len() > 0 {
		heap.Push(&s.deps, departure{t: s.now + s.rng.ExpFloat64(), s: i})
	}
	s.announceChange(i)
}

// announceChange publishes server i's queue at once in fresh mode.
func (s *state) announceChange(i int) {
	if s.cfg.Period != 0 || s.cfg.LocalOnly {
		return
	}
	for _, b := range s.boards {
		b.Refresh(s.servers[i].name, uint32(s.servers[i].len()), s.servers[i].latency(), at(s.now))
	}
}

// refreshAll is a periodic update: every server's queue reaches every
// board, which then recomputes its reference time as a node does once per
// interval.
func (s *state) refreshAll() {
	for _, b := range s.boards {
		for i := range s.servers {
			b.Refresh(s.servers[i].name, uint32(s.servers[i].len()), s.servers[i].latency(), at(s.now))
		}
		b.UpdateReference(at(s.now))
	}
}

func summarize(times []float64) Result {
	if len(times) == 0 {
		return Result{}
	}
	sum := 0.0
	for _, t := range times {
		sum += t
	}
	return Result{MeanTime: sum / float64(len(times)), P99: quantile(times, 0.99), Jobs: len(times)}
}

// quantile is the q-quantile by selection on a copy.
func quantile(xs []float64, q float64) float64 {
	c := append([]float64(nil), xs...)
	k := int(q * float64(len(c)-1))
	return quickselect(c, k)
}

func quickselect(a []float64, k int) float64 {
	lo, hi := 0, len(a)-1
	for lo < hi {
		p := a[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for a[i] < p {
				i++
			}
			for a[j] > p {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return a[k]
		}
	}
	return a[k]
}
