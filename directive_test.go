package backhand

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// A first choice that cannot be reached: reverse_proxy retries, the next
// attempt goes to the next candidate, the peer that answers gets a valid
// hop marker, every count in flight goes up and down once per attempt,
// and the request counts once, as forwarded. The failed peer is no
// candidate for the next request until it announces again.
func TestDirectiveFailsOverToNextPeer(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	b, bAddr := peerSite(t, "b")
	a := u.peer("a", deadAddr(t))
	u.peer("b", bAddr)
	h := u.directive("", byNames{"a", "b"})
	local := &site{name: "local"}
	var during map[string]int64
	var busyDuring int64
	b.during = func(*http.Request) { during, busyDuring = inFlight(u.n), u.n.stats.busy.Load() }

	r, w, cancel := caddyRequest("GET", "/x?y=1")
	defer cancel()
	if err := h.ServeHTTP(w, r, local); err != nil {
		t.Fatal(err)
	}
	if w.Body.String() != "b" || local.count() != 0 {
		t.Fatalf("served by %q, local site %d times: want b, and 0", w.Body.String(), local.count())
	}
	if during["a"] != 0 || during["b"] != 1 || busyDuring != 0 {
		t.Errorf("while b serves: in flight %v, busy %d; want a 0, b 1, busy 0", during, busyDuring)
	}
	keys := u.n.keys.Load()
	if hop, ok := keys.hop.Check(b.hop(0), "b", "GET", "/x?y=1", time.Now(), keys.hopWindow); !ok || hop.From != "me" || hop.Client != "127.0.0.1" || hop.Scheme != "http" {
		t.Errorf("b got hop marker %q: %+v valid %v; want from me to b for 127.0.0.1 over http", b.hop(0), hop, ok)
	}
	if r.Header.Get(wire.HopHeader) != "" {
		t.Error("the hop marker stays on the request after the forward")
	}
	if got := totalInFlight(u.n); got != 0 {
		t.Errorf("in flight after the request: %v", inFlight(u.n))
	}
	if a.Sent() != 1 || u.slot("b").Sent() != 1 {
		t.Errorf("sent a %d, b %d; want one attempt each", a.Sent(), u.slot("b").Sent())
	}
	if !failed(a) || failed(u.slot("b")) {
		t.Errorf("failed: a %v, b %v; want only a", failed(a), failed(u.slot("b")))
	}
	if sampled(a) || !sampled(u.slot("b")) {
		t.Errorf("response time learnt: a %v, b %v; want only b's", sampled(a), sampled(u.slot("b")))
	}
	if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"forwarded": 1}) {
		t.Errorf("outcomes %v, want forwarded once (not once per attempt)", got)
	}
	if got := u.n.stats.forwarded.Load(); got != 1 {
		t.Errorf("forwarded count %d, want 1", got)
	}
	if got := u.n.stats.done.Load(); got != 0 {
		t.Errorf("served here %d, want 0", got)
	}

	// The next request: a is no candidate, b gets it at once.
	r, w, cancel = caddyRequest("GET", "/")
	defer cancel()
	if err := h.ServeHTTP(w, r, local); err != nil || w.Body.String() != "b" {
		t.Fatalf("second request: %q, %v", w.Body.String(), err)
	}
	if a.Sent() != 1 {
		t.Errorf("a was tried again before it announced")
	}
	// a announces again: a candidate again.
	u.peer("a", a.Peer().Advertise)
	if failed(a) {
		t.Error("a still counts as failed after its announcement")
	}
	c := h.policy.evaluate(candidacy.Run{Now: time.Now()})
	defer c.Release()
	if got := c.Names(); len(got) != 2 || got[0] != "a" {
		t.Errorf("after a's announcement the chain leaves %v, want [a b]", got)
	}
}

// When every peer tried fails before a response starts, this node serves
// the request itself: once, counted as failed over (not forwarded), busy
// here while it does, without the hop marker.
func TestDirectiveServesLocallyWhenEveryPeerFails(t *testing.T) {
	for _, track := range []bool{false, true} {
		name := "without backhand_track"
		if track {
			name = "under backhand_track"
		}
		t.Run(name, func(t *testing.T) {
			u := newUnitApp(t, deadAddr(t))
			u.peer("a", deadAddr(t))
			u.peer("b", deadAddr(t))
			// Two attempts, a then b: the fallback, which would choose among
			// every live peer, does not come into play.
			h := u.directive(`{"load_balancing":{"retries":1}}`, byNames{"a", "b"})
			local := &site{name: "local"}
			var busyDuring int64
			local.during = func(r *http.Request) {
				busyDuring = u.n.stats.busy.Load()
				if r.Header.Get(wire.HopHeader) != "" {
					t.Error("the local site sees the hop marker")
				}
			}
			r, w, cancel := caddyRequest("GET", "/")
			defer cancel()
			var err error
			if track {
				err = (&Track{node: u.n}).ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					return h.ServeHTTP(w, r, local)
				}))
			} else {
				err = h.ServeHTTP(w, r, local)
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.Body.String() != "local" || local.count() != 1 {
				t.Fatalf("body %q, local site %d times; want served here once", w.Body.String(), local.count())
			}
			if busyDuring != 1 {
				t.Errorf("busy while served here %d, want 1", busyDuring)
			}
			if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"failed_over": 1}) {
				t.Errorf("outcomes %v, want failed_over once", got)
			}
			if got := totalInFlight(u.n); got != 0 {
				t.Errorf("in flight after the request: %v", inFlight(u.n))
			}
			if busy, done, fwd := u.n.stats.busy.Load(), u.n.stats.done.Load(), u.n.stats.forwarded.Load(); busy != 0 || done != 1 || fwd != 0 {
				t.Errorf("busy %d, served %d, forwarded %d; want 0, 1, 0", busy, done, fwd)
			}
			if a := u.slot("a"); !failed(a) || sampled(a) {
				t.Errorf("a: failed %v, response time learnt %v; want failed, nothing learnt", failed(a), sampled(a))
			}
		})
	}
}

// An error after the peer's response started is the proxy's to return:
// the directive does not serve the request again here.
func TestDirectiveNoLocalServeAfterResponseStarted(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	_, aAddr := peerSite(t, "a")
	u.peer("a", aAddr)
	// handle_response with no routes hands the peer's response to the
	// rest of the route, which here writes and then fails.
	h := u.directive(`{"handle_response":[{}]}`, byNames{"a"})
	broken := errors.New("broken after the header")
	rest := &site{name: "rest", fail: broken}
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	err := h.ServeHTTP(w, r, rest)
	if !errors.Is(err, broken) {
		t.Fatalf("error %v, want the route's", err)
	}
	if rest.count() != 1 {
		t.Errorf("rest of the route ran %d times, want once (no local serve after the response started)", rest.count())
	}
	if got := outcomes(u.n); got["failed_over"] != 0 || got["local"] != 0 {
		t.Errorf("outcomes %v: counted as served here", got)
	}
	if got := totalInFlight(u.n); got != 0 {
		t.Errorf("in flight after the request: %v", inFlight(u.n))
	}
}

// The directive leaves the request to the rest of the route when this node
// wins, when the chain leaves no candidate, when off ran, and when the
// request has no variables to plan in; each counts once as local, busy
// here while served.
func TestDirectiveServesLocally(t *testing.T) {
	for _, tt := range []struct {
		name   string
		chain  []CandidacyFunction
		noVars bool
	}{
		{"this node wins", []CandidacyFunction{byNames{"me", "a"}}, false},
		{"empty list", []CandidacyFunction{byNames{"nobody"}}, false},
		{"off", []CandidacyFunction{&candidacy.Off{}, byNames{"a"}}, false},
		{"no request variables", []CandidacyFunction{byNames{"a"}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnitApp(t, deadAddr(t))
			a, aAddr := peerSite(t, "a")
			u.peer("a", aAddr)
			h := u.directive("", tt.chain...)
			local := &site{name: "local"}
			var busyDuring int64
			local.during = func(*http.Request) { busyDuring = u.n.stats.busy.Load() }
			r, w, cancel := caddyRequest("GET", "/")
			defer cancel()
			if tt.noVars {
				r = httptest.NewRequest("GET", "/", nil)
			}
			if err := h.ServeHTTP(w, r, local); err != nil {
				t.Fatal(err)
			}
			if local.count() != 1 || a.count() != 0 {
				t.Fatalf("local site %d, peer a %d requests; want 1 and 0", local.count(), a.count())
			}
			if busyDuring != 1 || u.n.stats.busy.Load() != 0 || u.n.stats.done.Load() != 1 {
				t.Errorf("busy during %d, after %d, served %d; want 1, 0, 1", busyDuring, u.n.stats.busy.Load(), u.n.stats.done.Load())
			}
			if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"local": 1}) {
				t.Errorf("outcomes %v, want local once", got)
			}
			if w.Header().Get("Set-Cookie") != "" {
				t.Errorf("cookie set without byCookie: %q", w.Header().Get("Set-Cookie"))
			}
		})
	}
}

// hopTo is a marker's content from peer p for node to, made at.
func hopTo(to string, at time.Time) wire.Hop {
	return wire.Hop{From: "p", To: to, Client: "203.0.113.9", Scheme: "https", At: at}
}

// A valid hop marker: served here, never forwarded again, with the client
// IP of the marker; the marker does not reach the rest of the route. A
// forged, expired or garbled one: stripped, ignored, the request balanced
// (the peer gets this node's own marker).
func TestDirectiveHopMarker(t *testing.T) {
	forger := wire.NewHopSigner([]byte("not-the-cluster-key-at-all"))
	for _, tt := range []struct {
		name   string
		marker func(u *unitApp) string
		valid  bool
	}{
		{"valid", func(u *unitApp) string { return u.n.keys.Load().hop.Mark(hopTo("me", time.Now()), "GET", "/") }, true},
		{"forged", func(*unitApp) string { return forger.Mark(hopTo("me", time.Now()), "GET", "/") }, false},
		{"unsigned", func(*unitApp) string { return (*wire.HopSigner)(nil).Mark(hopTo("me", time.Now()), "GET", "/") }, false},
		{"expired", func(u *unitApp) string {
			return u.n.keys.Load().hop.Mark(hopTo("me", time.Now().Add(-time.Hour)), "GET", "/")
		}, false},
		{"for another node", func(u *unitApp) string { return u.n.keys.Load().hop.Mark(hopTo("other", time.Now()), "GET", "/") }, false},
		{"for another request", func(u *unitApp) string { return u.n.keys.Load().hop.Mark(hopTo("me", time.Now()), "GET", "/admin") }, false},
		{"garbage", func(*unitApp) string { return "hello" }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnitApp(t, deadAddr(t))
			a, aAddr := peerSite(t, "a")
			u.peer("a", aAddr)
			h := u.directive("", byNames{"a"})
			local := &site{name: "local"}
			var clientIP any
			var remote string
			var overTLS bool
			local.during = func(r *http.Request) {
				clientIP, remote, overTLS = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey), r.RemoteAddr, r.TLS != nil
			}
			r, w, cancel := caddyRequest("GET", "/")
			defer cancel()
			r.Header.Set(wire.HopHeader, tt.marker(u))
			if err := h.ServeHTTP(w, r, local); err != nil {
				t.Fatal(err)
			}
			if tt.valid {
				if local.count() != 1 || a.count() != 0 {
					t.Fatalf("local %d, peer %d; want served here", local.count(), a.count())
				}
				if local.hop(0) != "" {
					t.Error("the marker reached the rest of the route")
				}
				if clientIP != "203.0.113.9" || remote != "203.0.113.9:0" || !overTLS {
					t.Errorf("client IP %v, remote %q, over TLS %v; want the marker's client 203.0.113.9 over https", clientIP, remote, overTLS)
				}
				if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"local": 1}) {
					t.Errorf("outcomes %v, want local once", got)
				}
				return
			}
			if local.count() != 0 || a.count() != 1 {
				t.Fatalf("local %d, peer %d; want the request balanced to the peer", local.count(), a.count())
			}
			keys := u.n.keys.Load()
			if hop, ok := keys.hop.Check(a.hop(0), "a", "GET", "/", time.Now(), keys.hopWindow); !ok || hop.From != "me" || hop.Client != "127.0.0.1" {
				t.Errorf("peer got marker %q (%+v, valid %v); want this node's for 127.0.0.1", a.hop(0), hop, ok)
			}
			if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"forwarded": 1}) {
				t.Errorf("outcomes %v, want forwarded once", got)
			}
		})
	}
}

// HTTPRedirectToIP and HTTPRedirectToName answer GET and HEAD with 302 to
// the winner, over the scheme peers are reached with for an IP (plain
// HTTP here) and the client's for a name, with the request's parsed path
// and query and a hop marker valid for the winner only; other methods are
// proxied; when this node wins there is no redirect.
func TestDirectiveRedirects(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	a, aAddr := peerSite(t, "a")
	u.peer("a", aAddr)
	_, port, _ := net.SplitHostPort(aAddr)
	for _, tt := range []struct {
		name, method, host string
		tls                bool
		chain              []CandidacyFunction
		location           string // "" for no redirect
	}{
		{"IP GET", "GET", "www.example.com", false, []CandidacyFunction{byNames{"a"}, &candidacy.HTTPRedirectToIP{}}, "http://" + aAddr + "/p?q=1"},
		{"IP HEAD over TLS", "HEAD", "www.example.com", true, []CandidacyFunction{byNames{"a"}, &candidacy.HTTPRedirectToIP{}}, "http://" + aAddr + "/p?q=1"},
		{"name GET over TLS", "GET", "www.example.com", true, []CandidacyFunction{byNames{"a"}, &candidacy.HTTPRedirectToName{Format: "%S.example.net"}}, "https://a.example.net/p?q=1"},
		{"name GET", "GET", "www.example.com:8443", false, []CandidacyFunction{byNames{"a"}, &candidacy.HTTPRedirectToName{Format: "%S.%-2H.%-1H:%P"}}, "http://a.example.com:" + port + "/p?q=1"},
		{"POST is proxied", "POST", "www.example.com", false, []CandidacyFunction{byNames{"a"}, &candidacy.HTTPRedirectToIP{}}, ""},
		{"this node wins", "GET", "www.example.com", false, []CandidacyFunction{byNames{"me", "a"}, &candidacy.HTTPRedirectToIP{}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := u.directive("", tt.chain...)
			before, hitsBefore := outcomes(u.n), a.count()
			local := &site{name: "local"}
			r, w, cancel := caddyRequest(tt.method, "/p?q=1")
			defer cancel()
			r.Host = tt.host
			if tt.tls {
				r.TLS = &tls.ConnectionState{}
			}
			if err := h.ServeHTTP(w, r, local); err != nil {
				t.Fatal(err)
			}
			after := outcomes(u.n)
			if tt.location == "" {
				if w.Code == http.StatusFound {
					t.Fatalf("redirected to %q", w.Header().Get("Location"))
				}
				if after["redirected"] != before["redirected"] {
					t.Error("counted as redirected")
				}
				return
			}
			loc := w.Header().Get("Location")
			prefix := tt.location + "&" + wire.HopParam + "="
			if w.Code != http.StatusFound || !strings.HasPrefix(loc, prefix) {
				t.Fatalf("status %d Location %q, want 302 %q<marker>", w.Code, loc, prefix)
			}
			marker, err := url.QueryUnescape(loc[len(prefix):])
			keys := u.n.keys.Load()
			if hop, ok := keys.hop.Check(marker, "a", tt.method, "/p?q=1", time.Now(), keys.hopWindow); err != nil || !ok || hop.From != "me" {
				t.Errorf("redirect marker %q: %+v valid %v (%v); want from me for a's GET /p?q=1", marker, hop, ok, err)
			}
			if a.count() != hitsBefore || local.count() != 0 {
				t.Error("a redirected request was also served")
			}
			if after["redirected"] != before["redirected"]+1 || after["forwarded"] != before["forwarded"] || after["local"] != before["local"] {
				t.Errorf("outcomes %v -> %v, want one more redirected", before, after)
			}
		})
	}
	if got := a.count(); got != 1 {
		t.Errorf("peer served %d requests, want the POST only", got)
	}
}

// A client that follows a redirect lands with the marker in its query:
// the node it names serves the request (with the marker removed from the
// query) instead of redirecting it again; a marker for another node, or
// another target, is removed and the request balanced as any other. The
// raw target a client sent cannot make the Location name another host.
func TestDirectiveRedirectLands(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	_, aAddr := peerSite(t, "a")
	u.peer("a", aAddr)
	h := u.directive("", byNames{"a"}, &candidacy.HTTPRedirectToIP{})
	keys := u.n.keys.Load()
	for _, tt := range []struct {
		name, to, signedFor string
		here                bool
	}{
		{"for this node", "me", "/p?q=1", true},
		{"for another node", "other", "/p?q=1", false},
		{"for another target", "me", "/admin", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			marker := keys.hop.Mark(wire.Hop{From: "a", To: tt.to, Scheme: "http", At: time.Now()}, "GET", tt.signedFor)
			local := &site{name: "local"}
			var query string
			local.during = func(r *http.Request) { query = r.URL.RawQuery }
			r, w, cancel := caddyRequest("GET", "/p?q=1&"+wire.HopParam+"="+url.QueryEscape(marker))
			defer cancel()
			if err := h.ServeHTTP(w, r, local); err != nil {
				t.Fatal(err)
			}
			if tt.here {
				if local.count() != 1 || w.Code == http.StatusFound || query != "q=1" {
					t.Errorf("served here %d times, status %d, query %q; want served here once with query q=1", local.count(), w.Code, query)
				}
				return
			}
			if local.count() != 0 || w.Code != http.StatusFound || strings.Contains(w.Header().Get("Location"), url.QueryEscape(marker)) {
				t.Errorf("served here %d times, status %d, Location %q; want a new redirect without the old marker", local.count(), w.Code, w.Header().Get("Location"))
			}
		})
	}
	// GET x:@evil.example/p: the raw target names another host.
	r, w, cancel := caddyRequest("GET", "/p")
	defer cancel()
	r.RequestURI = "x:@evil.example/p"
	if r.URL, _ = url.ParseRequestURI(r.RequestURI); r.URL == nil {
		t.Fatal("unparsable target")
	}
	if err := h.ServeHTTP(w, r, &site{name: "local"}); err != nil {
		t.Fatal(err)
	}
	if loc, err := url.Parse(w.Header().Get("Location")); err != nil || loc.Host != aAddr {
		t.Errorf("Location %q (%v), want host %s", w.Header().Get("Location"), err, aAddr)
	}
}

// byCookie's cookie is set by the directive when the winner differs from
// it, and not when the request already carries the winner's.
func TestDirectiveSetsCookie(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	_, aAddr := peerSite(t, "a")
	u.peer("a", aAddr)
	h := u.directive("", &candidacy.ByCookie{Name: "bh"}, byNames{"a"})
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	if err := h.ServeHTTP(w, r, &site{name: "local"}); err != nil {
		t.Fatal(err)
	}
	cookies := w.Result().Cookies()
	if len(cookies) != 1 || cookies[0].Name != "bh" || cookies[0].Value != u.n.cookieValueFor("a") || !cookies[0].HttpOnly {
		t.Fatalf("cookies %v, want bh naming a, HttpOnly", cookies)
	}
	r, w, cancel = caddyRequest("GET", "/")
	defer cancel()
	r.AddCookie(cookies[0])
	if err := h.ServeHTTP(w, r, &site{name: "local"}); err != nil {
		t.Fatal(err)
	}
	if got := w.Result().Cookies(); len(got) != 0 {
		t.Errorf("cookie set again: %v", got)
	}
}

// The last peer tried before the directive serves locally failed too: it
// is marked failed (no candidate until it announces again) and takes no
// response-time sample, so a dead peer's refused dial is not learnt as a
// fast answer.
func TestDirectiveMarksLastFailedPeer(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	u.peer("a", deadAddr(t))
	u.peer("b", deadAddr(t))
	h := u.directive(`{"load_balancing":{"retries":1}}`, byNames{"a", "b"})
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	if err := h.ServeHTTP(w, r, &site{name: "local"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if s := u.slot(name); !failed(s) || sampled(s) {
			t.Errorf("%s: failed %v, response time learnt %v; want failed, nothing learnt", name, failed(s), sampled(s))
		}
	}
}

// Under backhand_track, a request that the directive serves locally after
// every peer failed (the fallback policy included) counts as served here,
// not as forwarded.
func TestTrackCountsFailedOverAsServed(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	u.peer("a", deadAddr(t))
	u.peer("b", deadAddr(t))
	// Four attempts: a, b, then the fallback (first) over every live peer.
	h := u.directive(`{"load_balancing":{"selection_policy":{"policy":"backhand","fallback":{"policy":"first"}}}}`, byNames{"a", "b"})
	local := &site{name: "local"}
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	err := (&Track{node: u.n}).ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return h.ServeHTTP(w, r, local)
	}))
	if err != nil || local.count() != 1 {
		t.Fatalf("local site %d times, error %v; want served here", local.count(), err)
	}
	if done, fwd := u.n.stats.done.Load(), u.n.stats.forwarded.Load(); done != 1 || fwd != 0 {
		t.Errorf("served %d, forwarded %d; want 1 and 0", done, fwd)
	}
}

// A POST is served here after a failed forward only when it never reached
// a peer (every attempt failed to connect): one that a peer may have
// served, whose answer was lost, fails with the proxy's error instead of
// being served twice. A GET is served here either way.
func TestDirectiveRepeatsOnlyWhatIsSafe(t *testing.T) {
	for _, tt := range []struct {
		name, method string
		peerAnswers  bool // the peer accepts the connection, reads the request, then breaks it
		here         bool
	}{
		{"POST, peer unreachable", "POST", false, true},
		{"POST, peer reached", "POST", true, false},
		{"GET, peer reached", "GET", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnitApp(t, deadAddr(t))
			addr := deadAddr(t)
			if tt.peerAnswers {
				addr = hangUpAfterRequest(t)
			}
			u.peer("a", addr)
			h := u.directive(`{"load_balancing":{"retries":1}}`, byNames{"a"})
			local := &site{name: "local"}
			r, w, cancel := caddyRequest(tt.method, "/")
			defer cancel()
			err := h.ServeHTTP(w, r, local)
			if here := local.count() == 1; here != tt.here {
				t.Fatalf("served here %v (error %v), want %v", here, err, tt.here)
			}
			if !tt.here && err == nil {
				t.Error("no error for a POST that a peer may have served")
			}
		})
	}
}

// hangUpAfterRequest listens on loopback and closes every connection once
// it has read a request from it, without answering: a peer that received
// the request and died.
func hangUpAfterRequest(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				_, _ = c.Read(buf)
			}()
		}
	}()
	return ln.Addr().String()
}
