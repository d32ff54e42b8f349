package fault

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Kinds of outcome a client sees.
const (
	KindOK      = "ok"
	KindConn    = "conn"    // connection refused, reset, closed before an answer
	KindTimeout = "timeout" // no answer within the client's timeout
	KindDropped = "dropped" // not sent: too many requests outstanding
)

// Result is one request of the load generator.
type Result struct {
	ID     string
	Post   bool
	Due    time.Duration // when it was due, since the run's start
	Lat    time.Duration // from due (not sent) to the end of the answer
	Kind   string        // KindOK, KindConn, KindTimeout, KindDropped, or "status"
	Status int           // the HTTP status, if one came
	Node   string        // the application that served it (X-Fault-Node)
	Entry  string        // the URL it was sent to
	Err    string        // the client's error, if any
	// Reused says the (last) attempt went out on a kept-alive connection;
	// Resent that it was sent again, as a browser does, after such a
	// connection broke before any response header (BrowserResend).
	Reused, Resent bool
}

// Failed reports whether the client saw a failure.
func (r Result) Failed() bool { return r.Kind != KindOK }

// KindLabel is the outcome as a label: "ok", "502", "conn", "timeout".
func (r Result) KindLabel() string {
	if r.Kind == "status" {
		return strconv.Itoa(r.Status)
	}
	return r.Kind
}

// Load is an open-loop load: Poisson arrivals at Rate per second from
// From to To (since the run's start), each to a random one of URLs, a
// share PostShare of them POSTs with a small body. The number of requests
// is bounded by Rate x (To-From) x 1.5 and MaxOutstanding requests at
// once; each one is bounded by Timeout.
type Load struct {
	URLs           []string
	Rate           float64
	From, To       time.Duration
	PostShare      float64
	Timeout        time.Duration
	MaxOutstanding int
	Seed           uint64
	Prefix         string // of the request ids
	// Stop, when closed, ends the arrivals early.
	Stop <-chan struct{}
	// BrowserResend sends a request once more, whatever its method, when
	// the kept-alive connection it went out on broke before any response
	// header, as Chromium, Firefox and curl do (Chromium's
	// HttpNetworkTransaction::ShouldResendRequest: a reused connection
	// and no response headers). Go's client resends only idempotent
	// requests.
	BrowserResend bool
}

// Run runs the load; start is the run's start. It returns every request's
// result once the last has ended, or ctx ends.
func (l Load) Run(ctx context.Context, start time.Time) []Result {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: l.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	rnd := rand.New(rand.NewPCG(l.Seed, 99))
	limit := int(l.Rate*(l.To-l.From).Seconds()*1.5) + 16
	var (
		mu          sync.Mutex
		out         = make([]Result, 0, limit)
		outstanding atomic.Int64
		wg          sync.WaitGroup
	)
	due := l.From
	for n := 0; n < limit && ctx.Err() == nil; n++ {
		due += time.Duration(rnd.ExpFloat64() / l.Rate * float64(time.Second))
		if due >= l.To {
			break
		}
		if d := time.Until(start.Add(due)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
			case <-l.Stop:
			case <-t.C:
			}
			t.Stop()
		}
		if stopped(l.Stop) {
			break
		}
		res := Result{ID: l.Prefix + strconv.Itoa(n), Post: rnd.Float64() < l.PostShare, Due: due}
		if outstanding.Load() >= int64(l.MaxOutstanding) {
			res.Kind = KindDropped
			mu.Lock()
			out = append(out, res)
			mu.Unlock()
			continue
		}
		url := l.URLs[rnd.IntN(len(l.URLs))]
		res.Entry = url
		outstanding.Add(1)
		wg.Go(func() {
			defer outstanding.Add(-1)
			do(ctx, client, url, &res)
			if l.BrowserResend && res.Reused && res.Kind == KindConn && res.Status == 0 && ctx.Err() == nil {
				res.Resent = true
				do(ctx, client, url, &res)
			}
			res.Lat = time.Since(start.Add(res.Due))
			mu.Lock()
			out = append(out, res)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func stopped(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// do makes the request and fills in its outcome.
func do(ctx context.Context, client *http.Client, url string, res *Result) {
	method, body := http.MethodGet, io.Reader(nil)
	if res.Post {
		method, body = http.MethodPost, strings.NewReader("id="+res.ID)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		res.Kind = KindConn
		return
	}
	req.Header.Set(idHeader, res.ID)
	res.Reused, res.Err = false, ""
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { res.Reused = i.Reused },
	}))
	resp, err := client.Do(req)
	if err != nil {
		res.Kind, res.Err = errKind(err), err.Error()
		return
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	res.Status = resp.StatusCode
	res.Node = resp.Header.Get(nodeHeader)
	switch {
	case err != nil:
		res.Kind, res.Err = errKind(err), err.Error()
	case resp.StatusCode/100 != 2:
		res.Kind = "status"
	default:
		res.Kind = KindOK
	}
}

func errKind(err error) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return KindTimeout
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) {
		return KindConn
	}
	return KindConn
}
