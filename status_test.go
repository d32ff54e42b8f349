package backhand

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// scriptKey is the cluster key of the scripted sequence.
var scriptKey = wire.AnnounceKey([]byte("scripted-sequence-secret-0123"))

// scripted runs a fixed sequence of announcements (through the real
// receive path: MAC, cluster, replay and table checks) and requests into a
// fresh node "me" of cluster "demo", and returns its app and the time to
// look at it. At that time, with max_age 3s:
//
//	alpha    live, first heard 10s ago; 3 requests sent, 1 in flight, 40ms observed
//	bravo    draining
//	charlie  stale (silent for 10s)
//	delta    live, first heard 1s ago (slow-start within a 5s window)
//	me       self
//
// and the node has accepted 6 announcements and rejected 4 (replay,
// bad_mac, truncated, wrong_cluster), sent 4, and decided local 2,
// forwarded 3, fallback 1, with chain runs of 100ns, 3µs and 2ms.
func scripted(t *testing.T) (*App, time.Time) {
	t.Helper()
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	an := testAnnouncer(scriptKey)
	n := an.node
	n.incarnation = 0xabc
	app := an.app
	app.Name, app.MaxAge, app.node, app.logger = "me", caddy.Duration(3*time.Second), n, zap.NewNop()
	n.table.SetLimits(&candidacy.Limits{
		MaxPeers: 8, ReplayWindow: 10 * time.Second, MaxAge: 3 * time.Second, EvictAfter: time.Minute,
		SelfName: "me", SelfAdvertise: "127.0.0.1:8001", Incarnation: n.incarnation,
	})

	send := func(a wire.Announcement, key []byte, at time.Time) {
		a.SentAt = at.UnixNano()
		b, err := a.Encode(nil, wire.NewSigner(key))
		if err != nil {
			t.Fatal(err)
		}
		from := netip.AddrPortFrom(netip.MustParseAddrPort(a.Advertise).Addr(), 4445)
		an.receive(b, from, []*wire.Signer{wire.NewSigner(scriptKey)}, new(wire.Announcement), at)
	}
	peer := func(name string, inc, seq uint64, host string, f Figures) wire.Announcement {
		return wire.Announcement{Cluster: "demo", Node: name, Incarnation: inc, Seq: seq, Advertise: host + ":8001", Figures: f}
	}
	alpha := Figures{Load1000: 1500, CPUMilli: 4000, CPUIdle1000: 250, MemTotal: 8 << 30, MemAvail: 2 << 30,
		Busy: 3, Capacity: 100, LatencyMicros: 12500, Forwarded: 7, Speed: 1200}
	bravo := Figures{Load1000: 200, CPUMilli: 2000, CPUIdle1000: 900, MemTotal: 4 << 30, MemAvail: 3 << 30,
		Capacity: 50, LatencyMicros: 800, Speed: 900}

	a1 := peer("alpha", 1, 1, "127.0.0.2", alpha)
	a1.Tags = []string{"cgi", "images"}
	send(a1, scriptKey, t0)
	send(peer("bravo", 2, 1, "127.0.0.3", bravo), scriptKey, t0)
	send(peer("charlie", 3, 1, "127.0.0.4", Figures{CPUMilli: 1000, Capacity: 10, Speed: 1000}), scriptKey, t0)
	send(peer("delta", 4, 1, "127.0.0.5", Figures{CPUMilli: 1500, Capacity: 20, Speed: 1100}), scriptKey, t0.Add(9*time.Second))

	t1 := t0.Add(9500 * time.Millisecond)
	a2 := a1
	a2.Seq = 2
	send(a2, scriptKey, t1)
	send(a2, scriptKey, t1) // replay
	b2 := peer("bravo", 2, 2, "127.0.0.3", bravo)
	b2.Figures.Draining = true
	send(b2, scriptKey, t1)
	send(peer("mallory", 9, 1, "127.0.0.6", Figures{}), wire.AnnounceKey([]byte("not-the-cluster-key-at-all")), t1) // bad_mac
	an.receive([]byte("BH\x01"), netip.MustParseAddrPort("127.0.0.7:4445"), []*wire.Signer{wire.NewSigner(scriptKey)}, new(wire.Announcement), t1)
	other := peer("eve", 5, 1, "127.0.0.8", Figures{})
	other.Cluster = "other"
	send(other, scriptKey, t1) // wrong_cluster

	at := t0.Add(10 * time.Second)
	n.table.UpdateSelf(&candidacy.Peer{Name: "me", Advertise: "127.0.0.1:8001", Incarnation: n.incarnation, Seq: 40,
		SentAt: at.UnixNano(), ReceivedAt: at, FirstSeen: t0,
		Figures: Figures{Load1000: 500, CPUMilli: 2000, CPUIdle1000: 800, MemTotal: 16 << 30, MemAvail: 9 << 30,
			Busy: 1, Capacity: 256, LatencyMicros: 4000, Forwarded: 3, Speed: 1000}})
	n.stats.sent.Add(4)

	s := n.table.Lookup("alpha")
	for range 3 {
		s.Begin()
	}
	s.End(20*time.Millisecond, at.Add(-200*time.Millisecond), true)
	s.End(40*time.Millisecond, at.Add(-100*time.Millisecond), true)

	for _, o := range []outcome{outcomeLocal, outcomeLocal, outcomeForwarded, outcomeForwarded, outcomeForwarded, outcomeFallback} {
		n.decisions.record(o)
	}
	for _, d := range []time.Duration{100 * time.Nanosecond, 3 * time.Microsecond, 2 * time.Millisecond} {
		n.decisions.timeChain(d)
	}
	return app, at
}

// scriptedJSON is the view of the scripted node with a 5s slow-start
// window: the documented schema of GET /backhand/peers and of
// backhand_status's JSON. Fields may be added, never renamed or removed.
const scriptedJSON = `{
	"node": "me",
	"cluster": "demo",
	"incarnation": "abc",
	"time": "2026-11-27T12:00:10Z",
	"max_age_ms": 3000,
	"announcements_sent": 4,
	"announcements_accepted": 6,
	"announcements_rejected": {
		"acl": 0, "advertise_denied": 0, "auth_mismatch": 0, "bad_advertise": 0, "bad_mac": 1, "bad_magic": 0, "bad_version": 0,
		"duplicate_id": 0, "malformed": 0, "out_of_window": 0, "oversized": 0, "replay": 1,
		"table_full": 0, "truncated": 1, "unsigned": 0, "wrong_cluster": 1
	},
	"peers": [
		{
			"name": "alpha", "advertise": "127.0.0.2:8001", "tags": ["cgi", "images"],
			"state": "live", "age_ms": 500, "incarnation": "1", "seq": 2, "source": "127.0.0.2:4445",
			"load": 1.5, "cpus": 4, "cpu_idle": 0.25, "mem_total": 8589934592, "mem_avail": 2147483648,
			"busy": 3, "capacity": 100, "latency_ms": 12.5, "forwarded": 7, "speed": 1200, "draining": false,
			"sent_by_this_node": 3, "in_flight_from_this_node": 1, "observed_latency_ms": 40
		},
		{
			"name": "bravo", "advertise": "127.0.0.3:8001", "tags": [],
			"state": "draining", "age_ms": 500, "incarnation": "2", "seq": 2, "source": "127.0.0.3:4445",
			"load": 0.2, "cpus": 2, "cpu_idle": 0.9, "mem_total": 4294967296, "mem_avail": 3221225472,
			"busy": 0, "capacity": 50, "latency_ms": 0.8, "forwarded": 0, "speed": 900, "draining": true,
			"sent_by_this_node": 0, "in_flight_from_this_node": 0
		},
		{
			"name": "charlie", "advertise": "127.0.0.4:8001", "tags": [],
			"state": "stale", "age_ms": 10000, "incarnation": "3", "seq": 1, "source": "127.0.0.4:4445",
			"load": 0, "cpus": 1, "cpu_idle": 0, "mem_total": 0, "mem_avail": 0,
			"busy": 0, "capacity": 10, "latency_ms": 0, "forwarded": 0, "speed": 1000, "draining": false,
			"sent_by_this_node": 0, "in_flight_from_this_node": 0
		},
		{
			"name": "delta", "advertise": "127.0.0.5:8001", "tags": [],
			"state": "slow-start", "age_ms": 1000, "incarnation": "4", "seq": 1, "source": "127.0.0.5:4445",
			"load": 0, "cpus": 1.5, "cpu_idle": 0, "mem_total": 0, "mem_avail": 0,
			"busy": 0, "capacity": 20, "latency_ms": 0, "forwarded": 0, "speed": 1100, "draining": false,
			"sent_by_this_node": 0, "in_flight_from_this_node": 0
		},
		{
			"name": "me", "advertise": "127.0.0.1:8001", "tags": [],
			"state": "self", "age_ms": 0, "incarnation": "abc", "seq": 40,
			"load": 0.5, "cpus": 2, "cpu_idle": 0.8, "mem_total": 17179869184, "mem_avail": 9663676416,
			"busy": 1, "capacity": 256, "latency_ms": 4, "forwarded": 3, "speed": 1000, "draining": false,
			"sent_by_this_node": 0, "in_flight_from_this_node": 0
		}
	],
	"slow_start_ms": 5000,
	"draining": false,
	"admin_drain": false,
	"decisions": {"failed_over": 0, "fallback": 1, "forwarded": 3, "local": 2, "redirected": 0},
	"reference_latency_ms": 0,
	"round_trip_factor": 1,
	"crowding": null
}`

// decodeJSON decodes b into generic values, failing the test on error.
func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
	return m
}

func TestStatusJSONSchema(t *testing.T) {
	app, at := scripted(t)
	got, err := json.Marshal(peersViewWith(app, at, viewOptions{slowStart: 5 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	if want := decodeJSON(t, []byte(scriptedJSON)); !reflect.DeepEqual(decodeJSON(t, got), want) {
		pretty, _ := json.MarshalIndent(json.RawMessage(got), "", "\t")
		t.Errorf("view differs from the documented schema and values; got\n%s", pretty)
	}
}

func TestStatusWithoutSlowStartWindow(t *testing.T) {
	app, at := scripted(t)
	v := peersView(app, at)
	states := map[string]string{}
	for _, p := range v.Peers {
		states[p.Name] = p.State
	}
	want := map[string]string{"alpha": "live", "bravo": "draining", "charlie": "stale", "delta": "live", "me": "self"}
	if !maps.Equal(states, want) {
		t.Errorf("states %v, want %v", states, want)
	}
	if b, _ := json.Marshal(v); strings.Contains(string(b), "slow_start_ms") {
		t.Errorf("slow_start_ms should be omitted without a window: %s", b)
	}
}

func TestStatusViewState(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	p := func(age, since time.Duration, set ...func(*candidacy.Peer)) *candidacy.Peer {
		q := &candidacy.Peer{ReceivedAt: now.Add(-age), FirstSeen: now.Add(-since)}
		for _, s := range set {
			s(q)
		}
		return q
	}
	tests := []struct {
		name string
		p    *candidacy.Peer
		want string
	}{
		{"new peer within the window", p(0, 2*time.Second), "slow-start"},
		{"window passed", p(0, 6*time.Second), "live"},
		{"new but stale", p(4*time.Second, 2*time.Second), "stale"},
		{"new but draining", p(0, time.Second, draining), "draining"},
		{"self is self", p(0, 0, self), "self"},
	}
	for _, tt := range tests {
		tt.p.Name = "peer"
		tab := candidacy.NewTable(candidacy.Limits{MaxPeers: 8, MaxAge: 3 * time.Second, EvictAfter: time.Minute, SelfName: "me"})
		tab.Store(tt.p)
		sl := tab.Lookup("peer")
		if got := viewState(sl, now, 3*time.Second, 5*time.Second); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
		if got := viewState(sl, now, 3*time.Second, 0); got != peerState(sl, now, 3*time.Second) {
			t.Errorf("%s: without a window %s, want peerState's %s", tt.name, got, peerState(sl, now, 3*time.Second))
		}
	}
}

func TestStatusNegotiation(t *testing.T) {
	tests := []struct {
		query, accept string
		json          bool
	}{
		{"", "", false},
		{"", "*/*", false},
		{"", "application/json", true},
		{"", "application/json, text/plain, */*", true},
		{"", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", false}, // a browser
		{"", "text/html;q=0.5, application/json", true},
		{"", "application/*", true},
		{"", "application/json, */*", true},
		{"", "text/*, application/json", true},
		{"", "text/*;q=0.9, application/json;q=0.8", false},
		{"", "application/json;q=0", false},
		{"", "nonsense", false},
		{"format=json", "text/html", true},
		{"format=html", "application/json", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/backhand/?"+tt.query, nil)
		if tt.accept != "" {
			r.Header.Set("Accept", tt.accept)
		}
		if got := wantsJSON(r); got != tt.json {
			t.Errorf("?%s Accept %q: JSON %v, want %v", tt.query, tt.accept, got, tt.json)
		}
	}
}

// serveStatus runs one request through a backhand_status handler on app.
func serveStatus(t *testing.T, app *App, at time.Time, method, target, accept string) *httptest.ResponseRecorder {
	t.Helper()
	s := &Status{app: app, SlowStart: caddy.Duration(5 * time.Second), Refresh: caddy.Duration(defaultStatusRefresh),
		now: func() time.Time { return at }}
	r := httptest.NewRequest(method, target, nil)
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	w := httptest.NewRecorder()
	if err := s.ServeHTTP(w, r, nil); err != nil {
		w.Code = statusOf(err)
	}
	return w
}

func statusOf(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return http.StatusInternalServerError
}

func TestStatusServesJSON(t *testing.T) {
	app, at := scripted(t)
	for _, req := range []struct{ target, accept string }{{"/backhand/?format=json", ""}, {"/backhand/", "application/json"}} {
		w := serveStatus(t, app, at, http.MethodGet, req.target, req.accept)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s (Accept %q): %d %s", req.target, req.accept, w.Code, w.Header().Get("Content-Type"))
		}
		got, want := decodeJSON(t, w.Body.Bytes()), decodeJSON(t, []byte(scriptedJSON))
		if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want))) {
			t.Errorf("top-level fields %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
		peers := got["peers"].([]any)
		if len(peers) != 5 {
			t.Fatalf("%d peers, want 5", len(peers))
		}
		alpha, wantAlpha := peers[0].(map[string]any), want["peers"].([]any)[0].(map[string]any)
		if !slices.Equal(slices.Sorted(maps.Keys(alpha)), slices.Sorted(maps.Keys(wantAlpha))) {
			t.Errorf("peer fields %v, want %v", slices.Sorted(maps.Keys(alpha)), slices.Sorted(maps.Keys(wantAlpha)))
		}
		if w.Header().Get("Vary") != "Accept" || w.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("headers %v: want Vary: Accept and Cache-Control: no-store", w.Header())
		}
	}
}

func TestStatusServesHTML(t *testing.T) {
	app, at := scripted(t)
	w := serveStatus(t, app, at, http.MethodGet, "/backhand/", "text/html,application/xhtml+xml,*/*;q=0.8")
	body := w.Body.String()
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("%d %s", w.Code, w.Header().Get("Content-Type"))
	}
	for _, name := range []string{"alpha", "bravo", "charlie", "delta", "me"} {
		if !strings.Contains(body, "<td data-v=\""+name+"\">"+name+"</td>") {
			t.Errorf("no row for %s", name)
		}
	}
	// States are row classes (stale rows are marked by their style) and badges.
	for _, row := range []string{`<tr class="stale" data-state="stale">`, `<tr class="draining" data-state="draining">`,
		`<tr class="slow-start" data-state="slow-start">`, `<tr class="self" data-state="self">`, `<span class="badge">stale</span>`} {
		if !strings.Contains(body, row) {
			t.Errorf("missing %s", row)
		}
	}
	// Self first, then by name.
	if i, j := strings.Index(body, `data-v="me"`), strings.Index(body, `data-v="alpha"`); i < 0 || j < 0 || i > j {
		t.Errorf("self row should come first")
	}
	// Nothing external: no URL with a host, the style and script carry the
	// nonce of the policy.
	if m := regexp.MustCompile(`(?i)(src|href|url)\s*[=(]\s*["']?(https?:)?//`).FindString(body); m != "" {
		t.Errorf("external reference %q", m)
	}
	csp := w.Header().Get("Content-Security-Policy")
	m := regexp.MustCompile(`script-src 'nonce-([^']+)'`).FindStringSubmatch(csp)
	if m == nil || !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("Content-Security-Policy %q", csp)
	}
	if !strings.Contains(body, `<script nonce="`+m[1]+`">`) || !strings.Contains(body, `<style nonce="`+m[1]+`">`) {
		t.Errorf("style and script do not carry the nonce %s", m[1])
	}
	if strings.Count(body, "<script") != 1 {
		t.Errorf("want exactly one (inline) script")
	}
	for _, want := range []string{"1 live", "1 slow-start", "1 draining", "1 stale", "4 (bad_mac 1, replay 1, truncated 1, wrong_cluster 1)",
		"local 2, forwarded 3, redirected 0, fallback 1, failed_over 0", "40 ms", "2.0 GiB / 8.0 GiB", "12 ms", "3 / 100"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if second := serveStatus(t, app, at, http.MethodGet, "/backhand/", "text/html").Header().Get("Content-Security-Policy"); second == csp {
		t.Errorf("the nonce must change with every page")
	}
}

func TestStatusEscapesPeerNames(t *testing.T) {
	app, at := scripted(t)
	hostile := `<img src=x onerror=alert(1)>`
	app.node.table.Store(&candidacy.Peer{Name: hostile, Advertise: `"><script>x</script>`, ReceivedAt: at, FirstSeen: at})
	body := serveStatus(t, app, at, http.MethodGet, "/", "text/html").Body.String()
	if strings.Contains(body, hostile) || strings.Contains(body, "<script>x") || !strings.Contains(body, "&lt;img src=x") {
		t.Errorf("peer name or address not escaped")
	}
}

func TestStatusMethods(t *testing.T) {
	app, at := scripted(t)
	if w := serveStatus(t, app, at, http.MethodHead, "/", ""); w.Code != http.StatusOK {
		t.Errorf("HEAD: %d", w.Code)
	}
	if w := serveStatus(t, app, at, http.MethodPost, "/", ""); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q", w.Code, w.Header().Get("Allow"))
	}
}

func TestStatusFormatting(t *testing.T) {
	for in, want := range map[int64]string{0: "0 ms", 999: "999 ms", 1500: "1.5 s", 59_999: "60.0 s", 61_000: "1 m 1 s", 7_200_000: "2.0 h"} {
		if got := fmtAge(in); got != want {
			t.Errorf("fmtAge(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 8 << 30: "8.0 GiB"} {
		if got := fmtBytes(in); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", in, got, want)
		}
	}
	if got := fmtMS(2.345); got != "2.35 ms" && got != "2.34 ms" {
		t.Errorf("fmtMS(2.345) = %q", got)
	}
}

func TestStatusCaddyfile(t *testing.T) {
	tests := []struct {
		in      string
		want    Status
		wantErr string
	}{
		{in: "backhand_status", want: Status{}},
		{in: "backhand_status {\n slow_start 30s\n refresh 5s\n}", want: Status{SlowStart: caddy.Duration(30 * time.Second), Refresh: caddy.Duration(5 * time.Second)}},
		{in: "backhand_status extra", wantErr: "wrong argument count"},
		{in: "backhand_status {\n colour red\n}", wantErr: `unknown option "colour"`},
		{in: "backhand_status {\n refresh soon\n}", wantErr: "refresh"},
		{in: "backhand_status {\n refresh\n}", wantErr: "wrong argument count"},
		{in: "backhand_status {\n refresh 1s 2s\n}", wantErr: "wrong argument count"},
	}
	for _, tt := range tests {
		var s Status
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.in))
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%q: error %v, want one containing %q", tt.in, err, tt.wantErr)
		case tt.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tt.in, err)
		case tt.wantErr == "" && (s.SlowStart != tt.want.SlowStart || s.Refresh != tt.want.Refresh):
			t.Errorf("%q: %+v, want %+v", tt.in, s, tt.want)
		}
	}
}

// TestStatusAdaptInsideHandle checks that the directive needs no order
// option, in a handle block and at the top of a site.
func TestStatusAdaptInsideHandle(t *testing.T) {
	for _, site := range []string{
		"handle /backhand/* {\n\t\tbackhand_status {\n\t\t\tslow_start 30s\n\t\t}\n\t}\n\trespond \"app\"",
		"backhand_status /status\n\trespond \"app\"",
	} {
		in := "{\n\tbackhand {\n\t\tinsecure_no_key\n\t}\n}\n:8080 {\n\t" + site + "\n}\n"
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
		if err != nil {
			t.Fatalf("%s\n%v", in, err)
		}
		if !strings.Contains(string(out), `"handler":"backhand_status"`) {
			t.Errorf("no backhand_status handler in %s", out)
		}
		if i, j := strings.Index(string(out), "backhand_status"), strings.Index(string(out), `"static_response"`); i > j {
			t.Errorf("backhand_status should come before respond: %s", out)
		}
	}
}

func TestStatusValidate(t *testing.T) {
	for _, tt := range []struct {
		s  Status
		ok bool
	}{
		{Status{}, true},
		{Status{Refresh: caddy.Duration(time.Second), SlowStart: caddy.Duration(time.Minute)}, true},
		{Status{Refresh: caddy.Duration(100 * time.Millisecond)}, false},
		{Status{SlowStart: caddy.Duration(-time.Second)}, false},
	} {
		s := tt.s
		err := s.validate()
		if (err == nil) != tt.ok {
			t.Errorf("%+v: %v", tt.s, err)
		}
		if err == nil && time.Duration(s.Refresh) < minStatusRefresh {
			t.Errorf("%+v: refresh left at %v", tt.s, time.Duration(s.Refresh))
		}
	}
}
