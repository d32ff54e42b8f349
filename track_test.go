package backhand

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-backhand/backhand/candidacy"
)

// backhand_track before the directive: while a peer serves, the request
// is not busy here and is in flight at that peer only (after a failed
// first choice); afterwards every count is back to zero and the request
// counts once as forwarded, by track, not by the directive as well.
func TestDirectiveUnderTrackForwards(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	b, bAddr := peerSite(t, "b")
	u.peer("a", deadAddr(t))
	u.peer("b", bAddr)
	h := u.directive("", byNames{"a", "b"})
	var during map[string]int64
	var busyDuring int64
	b.during = func(*http.Request) { during, busyDuring = inFlight(u.n), u.n.stats.busy.Load() }
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	var busyBefore int64
	err := (&Track{node: u.n}).ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		busyBefore = u.n.stats.busy.Load()
		return h.ServeHTTP(w, r, &site{name: "local"})
	}))
	if err != nil || w.Body.String() != "b" {
		t.Fatalf("served by %q, error %v", w.Body.String(), err)
	}
	if busyBefore != 1 || busyDuring != 0 || during["a"] != 0 || during["b"] != 1 {
		t.Errorf("busy before %d, while b serves %d, in flight %v; want 1, 0, b 1 only", busyBefore, busyDuring, during)
	}
	if busy, done, fwd := u.n.stats.busy.Load(), u.n.stats.done.Load(), u.n.stats.forwarded.Load(); busy != 0 || done != 0 || fwd != 1 {
		t.Errorf("after: busy %d, served %d, forwarded %d; want 0, 0, 1", busy, done, fwd)
	}
	if got := totalInFlight(u.n); got != 0 {
		t.Errorf("in flight after the request: %v", inFlight(u.n))
	}
	if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"forwarded": 1}) {
		t.Errorf("outcomes %v, want forwarded once", got)
	}
}

// The client goes away while a peer serves: the count there ends with
// the forward, the request is not served here as well, and it counts
// once.
func TestDirectiveClientGoesAway(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	a, aAddr := peerSite(t, "a")
	u.peer("a", aAddr)
	arrived := make(chan map[string]int64, 1)
	a.during = func(r *http.Request) {
		arrived <- inFlight(u.n)
		<-r.Context().Done() // until the proxy gives up the request
	}
	h := u.directive("", byNames{"a"})
	local := &site{name: "local"}
	r, w, cancel := caddyRequest("GET", "/")
	done := make(chan error, 1)
	go func() { done <- h.ServeHTTP(w, r, local) }()
	if during := <-arrived; during["a"] != 1 {
		t.Errorf("in flight while a serves: %v, want a 1", during)
	}
	cancel()
	<-done // reverse_proxy reports a client that went away as no error
	if local.count() != 0 {
		t.Error("served here after the client went away")
	}
	if got := totalInFlight(u.n); got != 0 {
		t.Errorf("in flight after the request: %v", inFlight(u.n))
	}
	if got := outcomes(u.n); got["failed_over"] != 0 || got["local"] != 0 || got["forwarded"] != 1 {
		t.Errorf("outcomes %v, want forwarded once", got)
	}
}

// When a peer's response breaks off after it started, reverse_proxy
// panics with http.ErrAbortHandler; the peer's count in flight at this
// node still drops, with or without backhand_track on the route.
func TestDirectiveAbortedResponse(t *testing.T) {
	for _, track := range []bool{true, false} {
		name := "under backhand_track"
		if !track {
			name = "without backhand_track"
		}
		t.Run(name, func(t *testing.T) {
			if !track {
			}
			u := newUnitApp(t, deadAddr(t))
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte("only ten.."))
				_ = http.NewResponseController(w).Flush()
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close()
				}
			}))
			defer srv.Close()
			u.peer("a", srv.Listener.Addr().String())
			h := u.directive("", byNames{"a"})
			r, w, cancel := caddyRequest("GET", "/")
			defer cancel()
			var handler caddyhttp.Handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				return h.ServeHTTP(w, r, &site{name: "local"})
			})
			if track {
				inner := handler
				handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					return (&Track{node: u.n}).ServeHTTP(w, r, inner)
				})
			}
			aborted := false
			func() {
				defer func() {
					v := recover()
					if v != nil && v != http.ErrAbortHandler {
						panic(v)
					}
					aborted = v == http.ErrAbortHandler
				}()
				_ = handler.ServeHTTP(w, r)
			}()
			if !aborted {
				t.Fatal("reverse_proxy did not abort the broken response")
			}
			if got := totalInFlight(u.n); got != 0 {
				t.Errorf("in flight after the aborted response: %v, want 0", inFlight(u.n))
			}
			if got := u.n.stats.busy.Load(); got != 0 {
				t.Errorf("busy %d after the aborted response, want 0", got)
			}
		})
	}
}

// backhand_track alone counts the request busy while the route serves it,
// and as served after, once; with or without request variables.
func TestTrackCountsServedRequests(t *testing.T) {
	n := testNode(heardWith("me", "127.0.0.1:80", 0, self))
	n.table.UpdateSelf(heardPeer("me", "127.0.0.1:80", 0))
	track := &Track{node: n}
	withVars, cancel := countingRequest()
	defer cancel()
	for _, r := range []*http.Request{withVars, httptest.NewRequest("GET", "/", nil)} {
		var during int64
		err := track.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			during = n.stats.busy.Load()
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		if during != 1 {
			t.Errorf("busy while served %d, want 1", during)
		}
	}
	if busy, done, fwd := n.stats.busy.Load(), n.stats.done.Load(), n.stats.forwarded.Load(); busy != 0 || done != 2 || fwd != 0 {
		t.Errorf("busy %d, served %d, forwarded %d; want 0, 2, 0", busy, done, fwd)
	}
	if got := n.table.Lookup("me").Responses(); got != 2 {
		t.Errorf("this node learnt %d of its own response times, want 2", got)
	}
}

// The announced latency is the mean over the requests served, recent ones
// weighing more; nothing before latencyMinRequests; an interval without
// requests leaves it.
func TestLatencyEWMA(t *testing.T) {
	var st localStats
	var e latencyEWMA
	at := time.Unix(1_800_000_000, 0)
	if got := e.update(&st, at); got != 0 {
		t.Fatalf("first update %d, want 0", got)
	}
	st.done.Add(latencyMinRequests - 1)
	st.latencyMicros.Add(1000 * (latencyMinRequests - 1))
	if got := e.update(&st, at.Add(time.Second)); got != 0 {
		t.Errorf("after %d requests: %dµs, want 0 (too few to tell)", latencyMinRequests-1, got)
	}
	st.done.Add(1)
	st.latencyMicros.Add(1000)
	if got := e.update(&st, at.Add(2*time.Second)); got != 1000 {
		t.Errorf("after %d requests of 1ms: %dµs, want 1000", latencyMinRequests, got)
	}
	if got := e.update(&st, at.Add(3*time.Second)); got != 1000 {
		t.Errorf("after an idle interval: %dµs, want 1000", got)
	}
	// One slow request among two hundred moves the mean a little, as one
	// request: not as an interval's mean would.
	st.done.Add(1)
	st.latencyMicros.Add(11000)
	if got := e.update(&st, at.Add(4*time.Second)); got <= 1000 || got >= 1200 {
		t.Errorf("after one slow request: %dµs, want between 1000 and 1200", got)
	}
}

// Provisioning: each module needs the app and checks its options, with an
// error that names the module and the option.
func TestProvisionErrors(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	for _, tt := range []struct{ id, raw, err string }{
		{"http.reverse_proxy.selection_policies.backhand", `{"max_age":"-1s"}`, "max_age must be positive"},
		{"http.reverse_proxy.selection_policies.backhand", `{"predict":"maybe"}`, `predict: want off, blend or decay, got "maybe"`},
		{"http.reverse_proxy.selection_policies.backhand", `{"keep":9}`, "keep must be 1-8, got 9"},
		{"http.reverse_proxy.selection_policies.backhand", `{"chain":[{"function":"nosuch"}]}`, "lb_policy backhand: candidacy chain"},
		{"http.reverse_proxy.selection_policies.backhand", `{"fallback":{"policy":"nosuch"}}`, "loading fallback policy"},
		{"http.reverse_proxy.upstreams.backhand", `{"max_age":"-1s"}`, "dynamic backhand: max_age must be positive"},
		{"http.reverse_proxy.upstreams.backhand", `{"name":"("}`, `dynamic backhand: name "("`},
		{"http.handlers.backhand", `{"proxy":{"upstreams":[{"dial":"127.0.0.1:1"}]}}`, "static upstreams are not allowed"},
		{"http.handlers.backhand", `{"proxy":{"load_balancing":{"selection_policy":{"policy":"first"}}}}`, "the proxy's selection policy must be backhand"},
		{"http.handlers.backhand", `{"proxy":[]}`, "backhand: proxy:"},
		{"http.handlers.backhand", `{"proxy":{"dynamic_upstreams":{"source":"nosuch"}}}`, "backhand: provision http.handlers.reverse_proxy"},
	} {
		if _, err := u.load(tt.id, tt.raw); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s %s: error %v, want %q", tt.id, tt.raw, err, tt.err)
		}
	}

	mod, err := u.load("http.reverse_proxy.selection_policies.backhand", `{"chain":[{"function":"byAge"},{"function":"byWait"}],"predict":"on","keep":2,"max_age":"2s"}`)
	if err != nil {
		t.Fatal(err)
	}
	if s := mod.(*Selection); len(s.chain.Functions) != 2 || s.chain.Predict != candidacy.PredictBlend || s.keep != 2 || s.chain.MaxAge != 2*time.Second || s.chain.Timed == nil || s.node != u.n || s.fallback == nil {
		t.Errorf("provisioned policy %+v", s)
	}
	mod, err = u.load("http.reverse_proxy.selection_policies.backhand", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	if s := mod.(*Selection); len(s.chain.Functions) != len(candidacy.DefaultChain()) || s.chain.Predict != candidacy.PredictDecay || s.keep != defaultKeep || s.chain.MaxAge != time.Duration(u.app.MaxAge) {
		t.Errorf("default policy %+v", s)
	}
	mod, err = u.load("http.reverse_proxy.upstreams.backhand", `{"name":"^web","max_age":"5s","tags":["x"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if src := mod.(*Upstreams); src.name == nil || src.maxAge != 5*time.Second || src.policy != nil || src.node != u.n {
		t.Errorf("provisioned source %+v", src)
	}
	mod, err = u.load("http.handlers.backhand", `{"proxy":{"load_balancing":{"try_duration":"1s"}}}`)
	if err != nil {
		t.Fatal(err)
	}
	if h := mod.(*Handler); h.proxy.LoadBalancing.Retries != 0 || h.policy == nil {
		t.Errorf("try_duration set: retries %d, want none added", h.proxy.LoadBalancing.Retries)
	}
	if mod, err = u.load("http.handlers.backhand", `{}`); err != nil || mod.(*Handler).proxy.LoadBalancing.Retries != defaultRetries {
		t.Errorf("default retries: %v", err)
	}

	// Without the app.
	bare, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelCtx := caddy.NewContext(bare)
	defer cancelCtx()
	for _, id := range []string{"http.handlers.backhand_track", "http.handlers.backhand", "http.reverse_proxy.upstreams.backhand", "http.reverse_proxy.selection_policies.backhand"} {
		if _, err := ctx.LoadModuleByID(id, []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "needs the backhand app") {
			t.Errorf("%s without the app: error %v", id, err)
		}
	}
	if mod, err := u.load("http.handlers.backhand_track", `{}`); err != nil || mod.(*Track).node != u.n {
		t.Errorf("backhand_track: %v", err)
	}
}
