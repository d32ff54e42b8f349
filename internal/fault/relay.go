package fault

import (
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// UDPRelay forwards the datagrams that arrive at its address to one node's
// announcement address: every node lists the relays of its peers instead of
// their addresses, so every announcement to that node passes through it.
// The harness sets a drop rate for all datagrams, drops or delays those
// from one source host (a node's loopback address), and so partitions a
// node's announcements or loses a share of them on every link.
type UDPRelay struct {
	pc   net.PacketConn
	out  net.Conn
	done chan struct{}

	mu      sync.Mutex
	drop    float64            // share of all datagrams dropped
	dropSrc map[string]float64 // share dropped by source host
	delay   map[string]time.Duration
	rng     *rand.Rand

	Forwarded, Dropped atomic.Int64
}

// NewUDPRelay listens on listen and forwards to target (host:port), from a
// socket on target's host.
func NewUDPRelay(listen, target string) (*UDPRelay, error) {
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return nil, err
	}
	taddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		pc.Close()
		return nil, err
	}
	out, err := net.DialUDP("udp", &net.UDPAddr{IP: taddr.IP}, taddr)
	if err != nil {
		pc.Close()
		return nil, err
	}
	r := &UDPRelay{pc: pc, out: out, done: make(chan struct{}), dropSrc: map[string]float64{},
		delay: map[string]time.Duration{}, rng: rand.New(rand.NewPCG(rand.Uint64(), 1))}
	go r.loop()
	return r, nil
}

// Addr is the relay's listening address.
func (r *UDPRelay) Addr() string { return r.pc.LocalAddr().String() }

// SetDrop sets the share (0-1) of all datagrams dropped.
func (r *UDPRelay) SetDrop(p float64) { r.mu.Lock(); r.drop = p; r.mu.Unlock() }

// SetDropFrom sets the share (0-1) of datagrams from host dropped.
func (r *UDPRelay) SetDropFrom(host string, p float64) {
	r.mu.Lock()
	r.dropSrc[host] = p
	r.mu.Unlock()
}

// SetDelayFrom delays the datagrams from host by d (0: none).
func (r *UDPRelay) SetDelayFrom(host string, d time.Duration) {
	r.mu.Lock()
	r.delay[host] = d
	r.mu.Unlock()
}

// Reset forwards everything again.
func (r *UDPRelay) Reset() {
	r.mu.Lock()
	r.drop = 0
	clear(r.dropSrc)
	clear(r.delay)
	r.mu.Unlock()
}

func (r *UDPRelay) loop() {
	defer close(r.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		host, _, _ := net.SplitHostPort(from.String())
		r.mu.Lock()
		p := r.drop + r.dropSrc[host]
		drop := p > 0 && r.rng.Float64() < p
		delay := r.delay[host]
		r.mu.Unlock()
		if drop {
			r.Dropped.Add(1)
			continue
		}
		r.Forwarded.Add(1)
		if delay > 0 {
			msg := append([]byte(nil), buf[:n]...)
			time.AfterFunc(delay, func() { _, _ = r.out.Write(msg) })
			continue
		}
		_, _ = r.out.Write(buf[:n])
	}
}

// Close stops the relay.
func (r *UDPRelay) Close() {
	r.pc.Close()
	<-r.done
	r.out.Close()
}

// TCPRelay listens in front of a node's app site, at the address the node
// advertises, and copies every connection through. Cut partitions it as a
// network would: new connections are refused (the listener closes) and
// the ones open carry nothing more in either direction (their bytes are
// read and discarded), so requests on them hang until a timeout ends them;
// Heal closes those and listens again.
type TCPRelay struct {
	listen, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	cut   atomic.Bool
	wg    sync.WaitGroup
}

// NewTCPRelay listens on listen and relays to target.
func NewTCPRelay(listen, target string) (*TCPRelay, error) {
	r := &TCPRelay{listen: listen, target: target, conns: map[net.Conn]struct{}{}}
	if err := r.serve(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *TCPRelay) serve() error {
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", r.listen); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.handle(c)
		}
	})
	return nil
}

func (r *TCPRelay) track(c net.Conn, add bool) {
	r.mu.Lock()
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	r.mu.Unlock()
}

func (r *TCPRelay) handle(c net.Conn) {
	up, err := net.DialTimeout("tcp", r.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	r.track(c, true)
	r.track(up, true)
	pump := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !r.cut.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok && !r.cut.Load() {
			_ = tc.CloseWrite()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { pump(up, c) })
	wg.Go(func() { pump(c, up) })
	wg.Wait()
	c.Close()
	up.Close()
	r.track(c, false)
	r.track(up, false)
}

// Cut partitions the relay (see TCPRelay).
func (r *TCPRelay) Cut() {
	r.cut.Store(true)
	r.mu.Lock()
	ln := r.ln
	r.ln = nil
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	r.wg.Wait()
}

// Heal closes the connections that were open across the cut and listens
// again.
func (r *TCPRelay) Heal() error {
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.cut.Store(false)
	return r.serve()
}

// Close stops the relay and closes every connection.
func (r *TCPRelay) Close() {
	r.mu.Lock()
	ln := r.ln
	r.ln = nil
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	r.wg.Wait()
}
