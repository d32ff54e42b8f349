// Package handoff keeps a server reload from dropping requests on
// connections that the old server had accepted but not yet answered.
//
// Caddy's reload starts the new config's servers on new listening sockets
// (SO_REUSEPORT) and then shuts the old ones down. Go's net/http server,
// once shutting down, closes a connection without an answer when it reads
// its next request, even the first on a new connection (server.go: the
// shuttingDown check after readRequest). No client resends a request on a
// connection it had just opened, so each such request failed: 1-6 GETs in
// three minutes of the fault harness's reload storm.
//
// A Listener wraps a server's listener and its connections. A connection
// that its server closes after reading a request and before writing
// anything, once the Listener itself is closed (its server is shutting
// down), is not closed: it goes, with the bytes read replayed first, to
// the newest open Listener for the same address, whose server reads the
// request afresh and answers it. Connections that wrote anything (a
// response, a TLS handshake) close as before.
package handoff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxReplay bounds the bytes a connection keeps for a replay: a request's
// headers and a small body. A connection that read more before answering
// is not handed off.
const maxReplay = 64 << 10

// handTimeout bounds how long a closing connection waits for the newest
// Listener's server to accept it.
const handTimeout = 2 * time.Second

var (
	mu     sync.Mutex
	newest = map[string]*Listener{} // by network and address
)

// Listener is a listener whose connections can move to a newer Listener
// on the same address when its server shuts down.
type Listener struct {
	net.Listener
	key      string
	accepted chan acceptResult
	handed   chan net.Conn
	done     chan struct{}
	closed   atomic.Bool
	once     sync.Once
}

type acceptResult struct {
	c   net.Conn
	err error
}

// Wrap wraps ln and makes it the newest Listener for its address.
func Wrap(ln net.Listener) *Listener {
	l := &Listener{
		Listener: ln,
		key:      ln.Addr().Network() + " " + ln.Addr().String(),
		accepted: make(chan acceptResult),
		handed:   make(chan net.Conn),
		done:     make(chan struct{}),
	}
	mu.Lock()
	newest[l.key] = l
	mu.Unlock()
	go l.acceptLoop()
	return l
}

// acceptLoop accepts from the wrapped listener, so that Accept can wait
// for a handed-off connection at the same time. A connection accepted as
// the Listener closes is handed on, not dropped.
func (l *Listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.accepted <- acceptResult{err: err}:
			case <-l.done:
			}
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // temporary: the server backs off before it calls Accept again
		}
		select {
		case l.accepted <- acceptResult{c: c}:
		case <-l.done:
			if to := next(l); to != nil && to.take(to.wrap(c)) {
				continue
			}
			c.Close()
		}
	}
}

// Accept returns the next connection: one accepted here, or one handed
// off by an older Listener on the same address.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case r := <-l.accepted:
		if r.err != nil {
			return nil, r.err
		}
		return l.wrap(r.c), nil
	case c := <-l.handed:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// wrap wraps a connection accepted here. A TLS connection (this wrapper
// placed after `tls`) is returned as it is: its handshake is written
// below the wrapper, so it can never be replayed, and Go's server must
// see the *tls.Conn itself to know the request came over TLS.
func (l *Listener) wrap(c net.Conn) net.Conn {
	if _, ok := c.(*tls.Conn); ok {
		return c
	}
	return newConn(c, l, nil)
}

// Close closes the wrapped listener; from now on, connections that its
// server closes unanswered move to the newest Listener on the address.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.closed.Store(true)
		mu.Lock()
		if newest[l.key] == l {
			delete(newest, l.key)
		}
		mu.Unlock()
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

// take offers c to this Listener's server, and reports whether it took it.
func (l *Listener) take(c net.Conn) bool {
	t := time.NewTimer(handTimeout)
	defer t.Stop()
	select {
	case l.handed <- c:
		return true
	case <-l.done:
	case <-t.C:
	}
	return false
}

// next is the Listener that a connection of closed Listener from moves
// to: the newest open one on its address, or nil.
func next(from *Listener) *Listener {
	mu.Lock()
	defer mu.Unlock()
	if to := newest[from.key]; to != nil && to != from && !to.closed.Load() {
		return to
	}
	return nil
}

// Conn is a connection that keeps what it reads until it first writes, so
// that a first request its server will not answer can be read again by
// another.
type Conn struct {
	net.Conn
	from *Listener

	mu      sync.Mutex
	reading int    // Reads in progress
	keeping bool   // kept holds everything read so far: nothing written, under maxReplay
	kept    []byte // read before the first write
	replay  []byte // read again first, after a handoff
	moved   bool   // handed to another Listener: this value is done
}

func newConn(c net.Conn, from *Listener, replay []byte) *Conn {
	return &Conn{Conn: c, from: from, keeping: true, replay: replay}
}

// Read reads the replayed bytes first, then the connection.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.moved {
		c.mu.Unlock()
		return 0, io.EOF
	}
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		c.keep(p[:n])
		c.mu.Unlock()
		return n, nil
	}
	c.reading++
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.keep(p[:n])
	c.reading--
	c.mu.Unlock()
	return n, err
}

// keep records b as read before the first write; past maxReplay it gives
// up. Called with mu held.
func (c *Conn) keep(b []byte) {
	if !c.keeping || len(b) == 0 {
		return
	}
	if len(c.kept)+len(b) > maxReplay {
		c.keeping, c.kept = false, nil
		return
	}
	c.kept = append(c.kept, b...)
}

// Write answers what was read: the connection will never move, and the
// record ends.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.moved {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.keeping, c.kept = false, nil
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// SetDeadline, SetReadDeadline and SetWriteDeadline do nothing once the
// connection has moved: the old server must not time the new one's reads.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.unlessMoved(func() error { return c.Conn.SetDeadline(t) })
}

// SetReadDeadline: see SetDeadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.unlessMoved(func() error { return c.Conn.SetReadDeadline(t) })
}

// SetWriteDeadline: see SetDeadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.unlessMoved(func() error { return c.Conn.SetWriteDeadline(t) })
}

func (c *Conn) unlessMoved(f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.moved {
		return nil
	}
	return f()
}

// Close closes the connection, unless its server is shutting down and
// drops a request unanswered on it: the connection, and what was read of
// the request, then go to the newest server on the same address. Only a
// connection that has never written is moved, and only when no Read is in
// progress (its own server closes it after reading: Go's server, once
// shutting down, answers no new request). A kept-alive connection that
// the old server closes as idle while a request arrives is not: moving it
// from under a Read in progress let a request be served by the new server
// while its client saw the connection close (2 and 7 POSTs in two
// minutes of the fault harness's reload storm, branch handoff-idle).
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.moved {
		c.mu.Unlock()
		return nil
	}
	var to *Listener
	if c.from.closed.Load() && c.reading == 0 && c.keeping && isRequestStart(c.kept) {
		to = next(c.from)
	}
	if to == nil {
		c.mu.Unlock()
		return c.Conn.Close()
	}
	c.moved = true
	kept := c.kept
	c.kept = nil
	c.mu.Unlock()
	// Deadlines set by the old server must not cut the new one short.
	_ = c.Conn.SetDeadline(time.Time{})
	if to.take(newConn(c.Conn, to, kept)) {
		return nil
	}
	return c.Conn.Close()
}

// isRequestStart reports whether b begins an HTTP/1 request: bytes read
// after an interim response (100 Continue) are a body, which no server
// could read as a request.
func isRequestStart(b []byte) bool {
	sp := bytes.IndexByte(b, ' ')
	if sp < 1 {
		return false
	}
	for _, ch := range b[:sp] {
		if ch < 'A' || ch > 'Z' {
			return false
		}
	}
	return true
}
