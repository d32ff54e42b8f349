package backhand

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// withRunning makes app the running app for the test.
func withRunning(t *testing.T, app *App) {
	t.Helper()
	prev := latestApp.Swap(app)
	t.Cleanup(func() { latestApp.Store(prev) })
}

// adminDo calls the admin route of pattern as Caddy's admin server would,
// turning an APIError into its status.
func adminDo(t *testing.T, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	w := httptest.NewRecorder()
	for _, route := range (AdminAPI{}).Routes() {
		if route.Pattern == r.URL.Path {
			if err := route.Handler.ServeHTTP(w, r); err != nil {
				api, ok := err.(caddy.APIError)
				if !ok {
					t.Fatalf("%s %s: %v", method, target, err)
				}
				w.Code = api.HTTPStatus
			}
			return w
		}
	}
	t.Fatalf("no admin route %s", r.URL.Path)
	return nil
}

func TestAdminPeers(t *testing.T) {
	app, _ := scripted(t)
	withRunning(t, app)
	w := adminDo(t, http.MethodGet, "/backhand/peers")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", w.Code, w.Header().Get("Content-Type"))
	}
	var v PeersView
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if v.Node != "me" || len(v.Peers) != 5 || v.Decisions["forwarded"] != 3 || v.SlowStartMS != 0 {
		t.Errorf("view %+v", v)
	}

	// The window is parsed and echoed; viewState's test covers its effect.
	w = adminDo(t, http.MethodGet, "/backhand/peers?slow_start=8760h")
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || v.SlowStartMS != (8760*time.Hour).Milliseconds() {
		t.Errorf("slow_start: %v %+v", err, v.SlowStartMS)
	}
	for _, bad := range []string{"soon", "-1s"} {
		if w := adminDo(t, http.MethodGet, "/backhand/peers?slow_start="+bad); w.Code != http.StatusBadRequest {
			t.Errorf("slow_start=%s: %d, want 400", bad, w.Code)
		}
	}
	if w := adminDo(t, http.MethodPost, "/backhand/peers"); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" {
		t.Errorf("POST /backhand/peers: %d, Allow %q", w.Code, w.Header().Get("Allow"))
	}
}

func TestAdminNotRunning(t *testing.T) {
	withRunning(t, nil)
	for _, req := range [][2]string{{http.MethodGet, "/backhand/peers"}, {http.MethodPost, "/backhand/drain"}, {http.MethodPost, "/backhand/undrain"}} {
		if w := adminDo(t, req[0], req[1]); w.Code != http.StatusNotFound {
			t.Errorf("%s %s without a running app: %d, want 404", req[0], req[1], w.Code)
		}
	}
}

func TestAdminDrainSetsFlagAndLogs(t *testing.T) {
	app, _ := scripted(t)
	core, logs := observer.New(zapcore.InfoLevel)
	app.logger = zap.New(core)
	withRunning(t, app)

	drain := func(path string, want DrainState) {
		t.Helper()
		w := adminDo(t, http.MethodPost, path)
		var got DrainState
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != http.StatusOK || got != want {
			t.Fatalf("POST %s: %d %s, want %+v", path, w.Code, w.Body, want)
		}
		if app.node.draining.Load() != want.AdminDrain {
			t.Errorf("POST %s: node.draining %v", path, app.node.draining.Load())
		}
		if v := peersView(app, time.Now()); v.Draining != want.Draining || v.AdminDrain != want.AdminDrain {
			t.Errorf("POST %s: view draining %v admin %v", path, v.Draining, v.AdminDrain)
		}
	}
	drain("/backhand/drain", DrainState{Node: "me", Draining: true, AdminDrain: true})
	drain("/backhand/drain", DrainState{Node: "me", Draining: true, AdminDrain: true}) // idempotent
	drain("/backhand/undrain", DrainState{Node: "me"})

	entries := logs.FilterMessage("drain set through the admin API").All()
	if len(entries) != 3 {
		t.Fatalf("%d info logs, want one per call: %v", len(entries), logs.All())
	}
	first := entries[0].ContextMap()
	if entries[0].Level != zapcore.InfoLevel || first["node"] != "me" || first["admin_drain"] != true || first["was"] != false {
		t.Errorf("first log %v %v", entries[0].Level, first)
	}
	if last := entries[2].ContextMap(); last["admin_drain"] != false || last["was"] != true {
		t.Errorf("last log %v", last)
	}

	// The config's drain option wins over an undrain.
	app.Drain = true
	drain("/backhand/undrain", DrainState{Node: "me", Draining: true, ConfigDrain: true})

	if w := adminDo(t, http.MethodGet, "/backhand/drain"); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET /backhand/drain: %d, Allow %q", w.Code, w.Header().Get("Allow"))
	}
}

// TestAdminDrainAnnounced drains a node through the admin handler and
// waits until its peer, over real UDP, sees it draining; then undrains it.
func TestAdminDrainAnnounced(t *testing.T) {
	pa, pb := freeUDPPort(t, "127.0.0.1"), freeUDPPort(t, "127.0.0.1")
	peers := []string{fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("127.0.0.1:%d", pb)}
	interval := caddy.Duration(50 * time.Millisecond)
	mk := func(name string, port int) *App {
		return startTestApp(t, &App{Name: name, Cluster: "drain", Advertise: "127.0.0.1:8001", Interval: interval,
			Listen: []string{fmt.Sprintf("udp/127.0.0.1:%d", port)}, Peers: peers, Key: "a-test-key-of-enough-length", Speed: 1000})
	}
	a, b := mk("a", pa), mk("b", pb)
	withRunning(t, a)
	state := func() string {
		sl := b.node.table.Lookup("a")
		if sl == nil {
			return "absent"
		}
		return peerState(sl, time.Now(), time.Duration(b.MaxAge))
	}
	waitFor(t, 2*time.Second, "b sees a live", func() bool { return state() == "live" })
	if w := adminDo(t, http.MethodPost, "/backhand/drain"); w.Code != http.StatusOK {
		t.Fatalf("drain: %d %s", w.Code, w.Body)
	}
	waitFor(t, 2*time.Second, "b sees a draining", func() bool { return state() == "draining" })
	if w := adminDo(t, http.MethodPost, "/backhand/undrain"); w.Code != http.StatusOK {
		t.Fatalf("undrain: %d %s", w.Code, w.Body)
	}
	waitFor(t, 2*time.Second, "b sees a live again", func() bool { return state() == "live" })
}
