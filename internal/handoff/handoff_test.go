//go:build linux

package handoff

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reuseListen listens on addr with SO_REUSEPORT, as Caddy does on Linux,
// so that a second server can listen beside the first during a reload.
func reuseListen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// server serves body on ln and signals on accepted each new connection.
func server(ln net.Listener, body string, accepted chan<- struct{}) *http.Server {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew && accepted != nil {
				accepted <- struct{}{}
			}
		},
	}
	go srv.Serve(ln)
	return srv
}

// reload replays a Caddy reload around a client connection that the old
// server accepted before the new server started and that sends its first
// request only after the old server began shutting down. wrap wraps each
// server's listener; closed reports when the old one is closed. It returns
// what the client read.
func reload(t *testing.T, wrap func(net.Listener) net.Listener, closed func(net.Listener) bool) (string, error) {
	t.Helper()
	accepted := make(chan struct{}, 1)
	ln1 := wrap(reuseListen(t, "127.0.0.1:0"))
	old := server(ln1, "old", accepted)
	conn, err := net.Dial("tcp", ln1.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the old server did not accept the connection")
	}
	ln2 := wrap(reuseListen(t, ln1.Addr().String()))
	current := server(ln2, "new", nil)
	defer current.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go old.Shutdown(ctx)
	for deadline := time.Now().Add(5 * time.Second); !closed(ln1); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old server's listener was not closed by Shutdown")
		}
	}
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Without the wrapper, Go's server drops the request unanswered: this is
// what the wrapper exists for (if Go ever answers it, the wrapper is moot).
func TestWithoutHandoffTheRequestIsDropped(t *testing.T) {
	wrap := func(ln net.Listener) net.Listener { return &closeNoting{Listener: ln} }
	body, err := reload(t, wrap, func(ln net.Listener) bool { return ln.(*closeNoting).closed.Load() })
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("plain listeners: read %q, %v; want EOF (Go's server dropping the request)", body, err)
	}
}

func TestHandoffAnswersFromTheNewServer(t *testing.T) {
	wrap := func(ln net.Listener) net.Listener { return Wrap(ln) }
	body, err := reload(t, wrap, func(ln net.Listener) bool { return ln.(*Listener).closed.Load() })
	if err != nil || body != "new" {
		t.Fatalf("with the handoff: read %q, %v; want the new server's answer", body, err)
	}
}

// A connection that was answered closes as before when its server shuts
// down: keep-alive connections are not moved.
func TestAnsweredConnectionCloses(t *testing.T) {
	ln1 := Wrap(reuseListen(t, "127.0.0.1:0"))
	old := server(ln1, "old", nil)
	ln2 := Wrap(reuseListen(t, ln1.Addr().String()))
	current := server(ln2, "new", nil)
	defer current.Close()
	conn, err := net.Dial("tcp", ln1.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func() (string, error) {
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	// The kernel may give the connection to either socket: it is answered
	// by one of them, and then it is a kept-alive, answered connection.
	first, err := get()
	if err != nil {
		t.Fatal(err)
	}
	srv := old
	if first == "new" {
		srv = current
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the shutdown of the server that answered it, the connection read %v; want EOF", err)
	}
}

// A TLS connection passes through untouched, so that Go's server sees the
// *tls.Conn.
func TestTLSConnectionsPassThrough(t *testing.T) {
	l := &Listener{}
	c := tls.Server(nopConn{}, &tls.Config{})
	if got := l.wrap(c); got != net.Conn(c) {
		t.Fatalf("wrap(*tls.Conn) = %T, want the *tls.Conn itself", got)
	}
	if _, ok := l.wrap(nopConn{}).(*Conn); !ok {
		t.Fatal("a plain connection is not wrapped")
	}
}

// A connection that read more than maxReplay before answering is not kept.
func TestRecordingStopsAtTheBound(t *testing.T) {
	c := &Conn{keeping: true}
	c.keep([]byte(strings.Repeat("x", maxReplay)))
	if !c.keeping || len(c.kept) != maxReplay {
		t.Fatalf("at the bound: keeping %v, kept %d", c.keeping, len(c.kept))
	}
	c.keep([]byte("y"))
	if c.keeping || c.kept != nil {
		t.Fatalf("past the bound: keeping %v, kept %d bytes; want neither", c.keeping, len(c.kept))
	}
}

// closeNoting is a plain listener that notes when it is closed.
type closeNoting struct {
	net.Listener
	closed atomic.Bool
}

func (c *closeNoting) Close() error {
	c.closed.Store(true)
	return c.Listener.Close()
}

type nopConn struct{ net.Conn }

// shutDown returns a closed Listener (its server shutting down) and the
// newest one on the same address, whose handed connections the test reads.
func shutDown(t *testing.T) (from, to *Listener) {
	from = &Listener{key: t.Name(), done: make(chan struct{})}
	from.closed.Store(true)
	to = &Listener{key: t.Name(), handed: make(chan net.Conn), done: make(chan struct{})}
	mu.Lock()
	newest[to.key] = to
	mu.Unlock()
	t.Cleanup(func() { mu.Lock(); delete(newest, to.key); mu.Unlock() })
	return from, to
}

// A connection that has answered before is closed, not moved, when its
// shutting-down server closes it with a request half read (a kept-alive
// connection closed as idle while the request arrives): moving it from
// under the old server's Read served requests whose clients then saw the
// connection close (the fault harness, branch handoff-idle).
func TestAnsweredConnectionIsNotMoved(t *testing.T) {
	from, to := shutDown(t)

	client, srv := net.Pipe()
	c := newConn(srv, from, nil)
	go io.ReadAll(client) // takes the first answer
	if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.keep([]byte("GET /second HTTP/1.1\r\n"))
	c.mu.Unlock()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case nc := <-to.handed:
		t.Fatalf("an answered connection moved: %v", nc)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := c.Conn.Write([]byte("x")); err == nil {
		t.Fatal("the connection is still open")
	}
}

// An idle connection with nothing arriving closes when its server shuts
// down, as without the wrapper.
func TestIdleCloseWithNothingArriving(t *testing.T) {
	from, _ := shutDown(t)

	client, srv := net.Pipe()
	c := newConn(srv, from, nil)
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 16)); done <- err }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		r := c.reading
		c.mu.Unlock()
		if r > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader never started")
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client read %v; want EOF (closed)", err)
	}
}

func TestIsRequestStart(t *testing.T) {
	for in, want := range map[string]bool{
		"GET / HTTP/1.1\r\n": true, "POST /x": true, "PRI * HTTP/2.0": true,
		"": false, "GET": false, " GET /": false, "{\"a\":1} x": false, "get / HTTP/1.1": false,
	} {
		if got := isRequestStart([]byte(in)); got != want {
			t.Errorf("isRequestStart(%q) = %v, want %v", in, got, want)
		}
	}
}
