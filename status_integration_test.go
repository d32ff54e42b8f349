package backhand_test

// Integration tests of the operator's view: the status page in a real
// headless Chromium, the admin API's drain round trip, and the metrics
// scrape, against real Caddy processes on loopback addresses.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
	"golang.org/x/net/html"
)

// statusSite is a site on the node's address at port that serves the
// status page under /backhand/.
func statusSite(c *cluster.NodeConfig, port int) {
	c.ExtraSites = append(c.ExtraSites, fmt.Sprintf(`:%d {
	bind %s
	handle /backhand/* {
		backhand_status {
			refresh 1s
		}
	}
	respond "no status here" 404
}`, port, c.Host()))
}

func statusURL(n *cluster.Node, port int) string {
	return fmt.Sprintf("http://%s:%d/backhand/", n.Config.Host(), port)
}

// adminPost makes a POST to n's admin API and returns the status and body.
func adminPost(ctx context.Context, n *cluster.Node, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.Config.AdminURL()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// drainState is the admin API's answer to drain and undrain.
type drainState struct {
	Node       string `json:"node"`
	Draining   bool   `json:"draining"`
	AdminDrain bool   `json:"admin_drain"`
}

func setDrain(t *testing.T, n *cluster.Node, drain bool) drainState {
	t.Helper()
	path := "/backhand/undrain"
	if drain {
		path = "/backhand/drain"
	}
	status, body, err := adminPost(t.Context(), n, path)
	if err != nil || status != http.StatusOK {
		t.Fatalf("POST %s on %s: %d %s %v", path, n.Name(), status, body, err)
	}
	var st drainState
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("POST %s: %v in %s", path, err, body)
	}
	return st
}

// waitState waits until observer's view shows peer in state.
func waitState(t *testing.T, observer *cluster.Node, peer, state string, timeout time.Duration) {
	t.Helper()
	err := cluster.Poll(t.Context(), timeout, itPoll, func() error {
		v, err := observer.Peers(t.Context())
		if err != nil {
			return err
		}
		if p, ok := v.Peer(peer); !ok || p.State != state {
			return fmt.Errorf("%s sees %s, want %s %s", observer.Name(), v.Summary(), peer, state)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestIntegrationDrainRoundTrip(t *testing.T) {
	nodes, _ := itCluster{base: itBase(t, 2), n: 2}.start(t)
	waitAllSeeAll(t, nodes, 5*time.Second)
	a, b := nodes[0], nodes[1]
	// Drained within an interval, seen by the peer on its next receipt.
	within := 2*itInterval + itStartup

	if st := setDrain(t, a, true); st != (drainState{Node: a.Name(), Draining: true, AdminDrain: true}) {
		t.Errorf("drain answered %+v", st)
	}
	waitState(t, b, a.Name(), "draining", within)
	v, err := a.Peers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	raw := map[string]any{}
	if err := getJSON(t.Context(), a.Config.AdminURL()+"/backhand/peers", &raw); err != nil {
		t.Fatal(err)
	}
	if raw["draining"] != true || raw["admin_drain"] != true {
		t.Errorf("%s's own view: draining %v admin_drain %v, want true", a.Name(), raw["draining"], raw["admin_drain"])
	}
	if self, _ := v.Self(); !self.Draining {
		waitSelfDraining(t, a, true, within)
	}

	if st := setDrain(t, a, false); st != (drainState{Node: a.Name()}) {
		t.Errorf("undrain answered %+v", st)
	}
	waitState(t, b, a.Name(), "live", within)
	waitSelfDraining(t, a, false, within)

	if !strings.Contains(a.LogTail(200), "drain set through the admin API") {
		t.Errorf("%s logged no info line for the drain:\n%s", a.Name(), a.LogTail(20))
	}
}

// waitSelfDraining waits until n's own row shows what it announced.
func waitSelfDraining(t *testing.T, n *cluster.Node, draining bool, timeout time.Duration) {
	t.Helper()
	if err := cluster.Poll(t.Context(), timeout, itPoll, func() error {
		v, err := n.Peers(t.Context())
		if err != nil {
			return err
		}
		if self, ok := v.Self(); !ok || self.Draining != draining {
			return fmt.Errorf("%s's self row: draining %v, want %v", n.Name(), self.Draining, draining)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func getJSON(ctx context.Context, url string, v any, header ...string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return fmt.Errorf("GET %s: %d %s %q", url, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return json.Unmarshal(body, v)
}

// TestIntegrationStatusJSON checks that the status page's JSON, by query
// and by Accept header, has the admin API's schema and content.
func TestIntegrationStatusJSON(t *testing.T) {
	base := itBase(t, 3)
	nodes, _ := itCluster{base: base, n: 3, modify: func(c *cluster.NodeConfig) { statusSite(c, base+2) }}.start(t)
	waitAllSeeAll(t, nodes, 5*time.Second)
	var admin, byQuery, byAccept map[string]any
	n := nodes[1]
	if err := getJSON(t.Context(), n.Config.AdminURL()+"/backhand/peers", &admin); err != nil {
		t.Fatal(err)
	}
	if err := getJSON(t.Context(), statusURL(n, base+2)+"?format=json", &byQuery); err != nil {
		t.Fatal(err)
	}
	if err := getJSON(t.Context(), statusURL(n, base+2), &byAccept, "Accept", "application/json"); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]map[string]any{"?format=json": byQuery, "Accept": byAccept} {
		if got, want := slices.Sorted(maps.Keys(v)), slices.Sorted(maps.Keys(admin)); !slices.Equal(got, want) {
			t.Errorf("status %s fields %v, admin API's %v", name, got, want)
		}
		if v["node"] != n.Name() || len(v["peers"].([]any)) != 3 {
			t.Errorf("status %s: node %v, %d peers", name, v["node"], len(v["peers"].([]any)))
		}
	}
}

// TestIntegrationStatusMetrics scrapes the admin endpoint's /metrics after
// requests through a backhand entry point, and again after a config reload
// (which gives Caddy a fresh metrics registry).
func TestIntegrationStatusMetrics(t *testing.T) {
	nodes, _ := itCluster{base: itBase(t, 3), n: 3, modify: func(c *cluster.NodeConfig) {
		c.LBPolicy = "backhand"
		c.EntryDirectives = append(c.EntryDirectives, "backhand_track") // counts what it sends each peer
	}}.start(t)
	waitAllSeeAll(t, nodes, 5*time.Second)
	entry := nodes[0]
	for range 30 {
		if _, err := get(t.Context(), entry, entry.Config.EntryURL()); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) string {
		t.Helper()
		text := scrapeBackhand(t, entry)
		for _, want := range []string{
			`caddy_backhand_peers{state="live"} 2`,
			`caddy_backhand_peers{state="self"} 1`,
			`caddy_backhand_peers{state="stale"} 0`,
			`caddy_backhand_announcements_rejected_total{reason="bad_mac"} 0`,
			`caddy_backhand_selections_total{outcome="forwarded"} `,
			`caddy_backhand_chain_duration_seconds_count `,
			`caddy_backhand_peer_speed{peer="node3"} `,
			`caddy_backhand_forwarded_total{peer="node2"} `,
		} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: scrape lacks %q:\n%s", when, want, text)
			}
		}
		sent := 0.0
		for _, n := range nodes {
			sent += metricValue(text, `caddy_backhand_forwarded_total{peer="`+n.Name()+`"}`)
		}
		if metricValue(text, `caddy_backhand_announcements_received_total`) == 0 || sent != 30 ||
			metricValue(text, `caddy_backhand_selections_total{outcome="forwarded"}`)+metricValue(text, `caddy_backhand_selections_total{outcome="local"}`) < 30 {
			t.Errorf("%s: counters did not count (sent to peers %v):\n%s", when, sent, text)
		}
		return text
	}
	before := check("before reload")
	t.Logf("sample scrape:\n%s", before)

	cfg := entry.Config
	cfg.ExtraGlobal = append(cfg.ExtraGlobal, "# reloaded")
	if err := entry.Load(t.Context(), cfg.Caddyfile()+"\n# reload\n"); err != nil {
		t.Fatal(err)
	}
	after := check("after reload")
	if metricValue(after, "caddy_backhand_announcements_sent_total") < metricValue(before, "caddy_backhand_announcements_sent_total") {
		t.Errorf("counters went back after the reload")
	}
}

// scrapeBackhand returns the caddy_backhand_ lines of n's admin /metrics.
func scrapeBackhand(t *testing.T, n *cluster.Node) string {
	t.Helper()
	status, body, err := n.Get(t.Context(), n.Config.AdminURL()+"/metrics")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", status, err)
	}
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, "caddy_backhand_") {
			out.WriteString(line + "\n")
		}
	}
	return out.String()
}

// metricValue is the value of the series written exactly as series, or 0.
func metricValue(text, series string) float64 {
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

// chromium returns the path of Debian's chromium, skipping the test when
// it is absent unless CI=true, where it must be there.
func chromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs real Caddy processes; skipped with -short")
	}
	p, err := exec.LookPath("chromium")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("chromium not on PATH (apt-get install -y chromium): %v", err)
	}
	t.Skipf("chromium not on PATH; apt-get install -y chromium to run this test (required when CI=true)")
	return ""
}

// runChromium runs headless Chromium on url with an empty profile, letting
// the page's script run for a few seconds of virtual time, and returns its
// standard output.
func runChromium(t *testing.T, bin, url string, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=3000",
	}, extra...)
	args = append(args, url)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // nothing of the user's profile
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, lastLines(stderr.String(), 20))
	}
	return stdout.Bytes()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// domRows parses Chromium's dump of the status page: the state of each
// peer row by name, and how many times the script refreshed the page.
func domRows(t *testing.T, dom []byte) (map[string]string, string) {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(dom))
	if err != nil {
		t.Fatal(err)
	}
	rows, updates := map[string]string{}, ""
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		switch {
		case n.Data == "body":
			updates = attr(n, "data-updates")
		case n.Data == "tr" && attr(n, "data-state") != "":
			if td := firstElement(n, "td"); td != nil && td.FirstChild != nil {
				rows[td.FirstChild.Data] = attr(n, "data-state")
			}
		}
	}
	return rows, updates
}

// domOrder returns the names of the peer rows in document order.
func domOrder(t *testing.T, dom []byte) []string {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(dom))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range doc.Descendants() {
		if n.Type == html.ElementNode && n.Data == "tr" && attr(n, "data-state") != "" {
			if td := firstElement(n, "td"); td != nil && td.FirstChild != nil {
				names = append(names, td.FirstChild.Data)
			}
		}
	}
	return names
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func firstElement(n *html.Node, tag string) *html.Node {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == tag {
			return c
		}
	}
	return nil
}

// artifactDir is where test artifacts go: $BACKHAND_ARTIFACTS, else
// caddy-backhand-artifacts in the temporary directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BACKHAND_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "caddy-backhand-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestIntegrationStatusPageInChromium opens node1's status page in
// headless Chromium: first with every node live, then with node2 drained
// through the admin API and node3 killed (stale), and saves a screenshot of
// the second as a test artifact.
func TestIntegrationStatusPageInChromium(t *testing.T) {
	bin := chromium(t)
	base := itBase(t, 3)
	nodes, _ := itCluster{base: base, n: 3, modify: func(c *cluster.NodeConfig) {
		c.MaxAge = time.Second // stale soon after the kill
		c.LBPolicy = "backhand"
		c.EntryDirectives = append(c.EntryDirectives, "backhand_track")
		statusSite(c, base+2)
	}}.start(t)
	waitAllSeeAll(t, nodes, 5*time.Second)
	url := statusURL(nodes[0], base+2)

	expect := func(dom []byte, want map[string]string) {
		t.Helper()
		rows, updates := domRows(t, dom)
		if !maps.Equal(rows, want) {
			t.Errorf("Chromium shows %v, want %v", rows, want)
		}
		if updates == "" || updates == "0" {
			t.Errorf("the page's script did not refresh it (data-updates=%q)", updates)
		}
	}
	expect(runChromium(t, bin, url, "--dump-dom"), map[string]string{"node1": "self", "node2": "live", "node3": "live"})

	// Requests through node1's entry point fill its columns of what it sent.
	for range 20 {
		if _, err := get(t.Context(), nodes[0], nodes[0].Config.EntryURL()); err != nil {
			t.Fatal(err)
		}
	}

	setDrain(t, nodes[1], true)
	if err := nodes[2].Kill(); err != nil {
		t.Fatal(err)
	}
	waitState(t, nodes[0], "node2", "draining", 2*itInterval+itStartup)
	waitState(t, nodes[0], "node3", "stale", time.Second+itInterval+itStartup)
	expect(runChromium(t, bin, url, "--dump-dom"), map[string]string{"node1": "self", "node2": "draining", "node3": "stale"})

	// Sorted by the fragment, name descending: the script's sort ran.
	if order := domOrder(t, runChromium(t, bin, url+"#sort=-name", "--dump-dom")); !slices.Equal(order, []string{"node3", "node2", "node1"}) {
		t.Errorf("#sort=-name shows rows %v, want node3 node2 node1", order)
	}

	shot := filepath.Join(artifactDir(t), "status-page.png")
	_ = os.Remove(shot)
	runChromium(t, bin, url, "--screenshot="+shot, "--window-size=1400,900", "--hide-scrollbars")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil || cfg.Width != 1400 || cfg.Height != 900 {
		t.Errorf("screenshot %s: %dx%d, %v; want a 1400x900 PNG", shot, cfg.Width, cfg.Height, err)
	}
	t.Logf("screenshot of the status page: %s", shot)
}
