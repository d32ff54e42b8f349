package backhand

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"maps"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Status{})
	httpcaddyfile.RegisterHandlerDirective("backhand_status", parseStatus)
	// With the handlers that answer: after basic_auth and the like, so the
	// page can be protected, and usable inside handle blocks.
	httpcaddyfile.RegisterDirectiveOrder("backhand_status", httpcaddyfile.Before, "respond")
}

// Status serves this node's view of its cluster, as mod_backhand's
// backhand-handler did: one row per peer with its state, the age of its
// last announcement and its announced figures, plus what this node itself
// sent it. Browsers get an HTML page without external assets that
// refreshes itself and sorts by any column; tools get the same JSON as the
// admin API's GET /backhand/peers (PeersView) by asking for
// `?format=json` or sending `Accept: application/json`.
//
// The page shows the cluster's internals (addresses, load, memory):
// protect it, e.g. with basic_auth or a remote_ip matcher. In a site with
// the `backhand` directive, keep the status path out of its matcher, or a
// peer may answer with its own view.
type Status struct {
	// SlowStart shows live peers whose current incarnation was first heard
	// within this window as "slow-start"; set it to the window of the
	// chain's slowStart function. Default: 0, no slow-start state.
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	// Refresh is how often the HTML page fetches fresh figures.
	// At least 250ms. Default: 2s.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	app *App
	now func() time.Time // the clock; nil: time.Now (tests set it)
}

const (
	defaultStatusRefresh = 2 * time.Second
	minStatusRefresh     = 250 * time.Millisecond
)

// CaddyModule returns the Caddy module information.
func (Status) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backhand_status",
		New: func() caddy.Module { return new(Status) },
	}
}

// Provision finds the backhand app and checks the options.
func (s *Status) Provision(ctx caddy.Context) error {
	app, err := backhandApp(ctx, "backhand_status")
	if err != nil {
		return err
	}
	s.app = app
	return s.validate()
}

// validate checks the options and fills defaults.
func (s *Status) validate() error {
	if s.SlowStart < 0 {
		return errModule("backhand_status", "slow_start must not be negative, got %v", time.Duration(s.SlowStart))
	}
	if s.Refresh == 0 {
		s.Refresh = caddy.Duration(defaultStatusRefresh)
	}
	if time.Duration(s.Refresh) < minStatusRefresh {
		return errModule("backhand_status", "refresh must be at least %v, got %v", minStatusRefresh, time.Duration(s.Refresh))
	}
	return nil
}

// ServeHTTP answers GET and HEAD with the view as HTML or JSON; it never
// calls next.
func (s *Status) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("backhand_status: method %s not allowed", r.Method))
	}
	w.Header().Set("Vary", "Accept")
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	v := peersViewWith(s.app, now(), viewOptions{slowStart: time.Duration(s.SlowStart)})
	if wantsJSON(r) {
		return writeJSON(w, v)
	}
	return s.serveHTML(w, v)
}

func (s *Status) serveHTML(w http.ResponseWriter, v PeersView) error {
	nonce, err := newNonce()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	var buf bytes.Buffer // rendered whole, so a template error is a clean 500
	if err := statusTemplate.Execute(&buf, newStatusPage(v, time.Duration(s.Refresh), nonce)); err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// Everything is inline: nothing but this page's own nonce'd style and
	// script runs, and it may only fetch from its own origin.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'nonce-"+nonce+"'; script-src 'nonce-"+nonce+
		"'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	_, err = w.Write(buf.Bytes())
	return err
}

func newNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil // hex: nothing for html/template to escape
}

// wantsJSON reports whether the client asked for JSON: ?format=json, or an
// Accept header that ranks application/json above text/html. `*/*` and
// browsers get HTML; ?format=html forces it.
func wantsJSON(r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "json":
		return true
	case "html":
		return false
	}
	accept := r.Header.Values("Accept")
	qJSON, specJSON := acceptQ(accept, "application", "json")
	qHTML, specHTML := acceptQ(accept, "text", "html")
	// On equal quality, the type named more precisely wins: "application/json,
	// */*" asks for JSON; "*/*" alone gets HTML.
	return qJSON > qHTML || qJSON == qHTML && qJSON > 0 && specJSON > specHTML
}

// acceptQ is the quality the Accept header gives typ/sub, and the
// specificity of the media range that gave it: that of its most specific
// matching range (RFC 9110 §12.5.1); 0, -1 if none matches.
func acceptQ(accept []string, typ, sub string) (float64, int) {
	q, specificity := 0.0, -1
	for _, h := range accept {
		for part := range strings.SplitSeq(h, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			t, st, _ := strings.Cut(mt, "/")
			spec := mediaSpecificity(t, st, typ, sub)
			if spec <= specificity {
				continue
			}
			specificity, q = spec, 1
			if v, err := strconv.ParseFloat(params["q"], 64); err == nil {
				q = v
			}
		}
	}
	return q, specificity
}

// mediaSpecificity is 2 for typ/sub, 1 for typ/*, 0 for */*, -1 for no
// match.
func mediaSpecificity(t, st, typ, sub string) int {
	switch {
	case t == typ && st == sub:
		return 2
	case t == typ && st == "*":
		return 1
	case t == "*" && st == "*":
		return 0
	}
	return -1
}

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// statusColumn is one column of the peer table. The page's script has a
// cell function for each key; keep the two lists in step.
type statusColumn struct {
	Key, Label, Title string
	Num               bool // right-aligned, sorted numerically
}

var statusColumns = []statusColumn{
	{"name", "Name", "node name", false},
	{"advertise", "Address", "where peers forward HTTP to", false},
	{"tags", "Tags", "", false},
	{"state", "State", "self, live, slow-start, draining or stale (not heard within max_age)", false},
	{"age", "Age", "since its last announcement arrived", true},
	{"speed", "Speed", "configured speed, 1000 = reference core; — when none", true},
	{"busy", "Busy / cap", "requests in flight / capacity", true},
	{"load", "Load", "load average", true},
	{"cpu_idle", "CPU idle", "idle share over the last interval", true},
	{"cpus", "CPUs", "", true},
	{"mem", "Mem avail / total", "", true},
	{"sent", "Sent here", "requests this node has proxied to it", true},
	{"inflight", "In flight", "of those, in flight now", true},
	{"observed", "Latency seen", "this node's peak-EWMA of its response time", true},
	{"latency", "Latency own", "its own response-time EWMA, as announced", true},
	{"learned", "Ranked by", "the response time byWait ranks it by, learned from what this node saw (for itself: the requests it served)", true},
}

// statusPage is what the template renders.
type statusPage struct {
	View      PeersView
	Summary   []summaryItem
	Columns   []statusColumn
	Rows      []statusRow
	RefreshMS int64
	Nonce     string
}

type summaryItem struct{ Label, Text, Class string }

type statusRow struct {
	State string
	Cells []statusCell
}

type statusCell struct {
	Text, Sort string
	Num        bool // right-aligned
	Badge      bool // the state, shown as a badge
}

func newStatusPage(v PeersView, refresh time.Duration, nonce string) statusPage {
	page := statusPage{View: v, Summary: summaryItems(v), Columns: statusColumns, RefreshMS: refresh.Milliseconds(), Nonce: nonce}
	for _, p := range defaultOrder(v.Peers) {
		cells := rowCells(&p)
		for i := range cells {
			cells[i].Num = statusColumns[i].Num
			cells[i].Badge = statusColumns[i].Key == "state"
		}
		page.Rows = append(page.Rows, statusRow{State: p.State, Cells: cells})
	}
	return page
}

// defaultOrder is self first, then by name: rows stay in place as states
// change, so the eye finds them again.
func defaultOrder(peers []PeerView) []PeerView {
	out := slices.Clone(peers)
	slices.SortStableFunc(out, func(a, b PeerView) int {
		if (a.State == "self") != (b.State == "self") {
			if a.State == "self" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// stateRank orders states by how much attention they need, for sorting.
var stateRank = map[string]int{"self": 0, "live": 1, "slow-start": 2, "draining": 3, "stale": 4}

// rowCells formats one row; the page's script formats alike.
func rowCells(p *PeerView) []statusCell {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	observed, observedSort := "—", "-1"
	if p.ObservedLatencyMS != nil {
		observed, observedSort = fmtMS(*p.ObservedLatencyMS), f(*p.ObservedLatencyMS)
	}
	learned, learnedSort := "—", "-1"
	if p.LearnedLatencyMS != nil {
		learned, learnedSort = fmtMS(*p.LearnedLatencyMS), f(*p.LearnedLatencyMS)
	}
	speed := "—"
	if p.Speed > 0 {
		speed = strconv.FormatUint(uint64(p.Speed), 10)
	}
	busyShare := 0.0
	if p.Capacity > 0 {
		busyShare = float64(p.Busy) / float64(p.Capacity)
	}
	tags := strings.Join(p.Tags, " ")
	c := func(text, sort string) statusCell { return statusCell{Text: text, Sort: sort} }
	return []statusCell{
		c(p.Name, p.Name),
		c(p.Advertise, p.Advertise),
		c(tags, tags),
		c(p.State, strconv.Itoa(stateRank[p.State])),
		c(fmtAge(p.AgeMS), strconv.FormatInt(p.AgeMS, 10)),
		c(speed, f(float64(p.Speed))),
		c(fmt.Sprintf("%d / %d", p.Busy, p.Capacity), f(busyShare)),
		c(strconv.FormatFloat(p.Load, 'f', 2, 64), f(p.Load)),
		c(fmtPct(p.CPUIdle), f(p.CPUIdle)),
		c(f(math.Round(p.CPUs*1000)/1000), f(p.CPUs)),
		c(fmtBytes(p.MemAvail)+" / "+fmtBytes(p.MemTotal), f(float64(p.MemAvail))),
		c(strconv.FormatUint(p.SentByThisNode, 10), f(float64(p.SentByThisNode))),
		c(strconv.FormatInt(p.InFlightFromThisNode, 10), f(float64(p.InFlightFromThisNode))),
		c(observed, observedSort),
		c(fmtMS(p.LatencyMS), f(p.LatencyMS)),
		c(learned, learnedSort),
	}
}

// summaryItems are the node-level lines above the table.
func summaryItems(v PeersView) []summaryItem {
	counts := map[string]int{}
	for _, p := range v.Peers {
		counts[p.State]++
	}
	var states []string
	for _, s := range []string{"live", "slow-start", "draining", "stale"} {
		if counts[s] > 0 || s == "live" {
			states = append(states, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	peersClass := ""
	if counts["live"]+counts["slow-start"] == 0 {
		peersClass = "bad"
	} else if counts["stale"] > 0 {
		peersClass = "warn"
	}
	rejected, rejectedClass := rejectSummary(v.Rejected)
	drain, drainClass := "no", ""
	if v.Draining {
		drain, drainClass = "yes", "warn"
		if v.AdminDrain {
			drain += " (admin API)"
		}
	}
	items := []summaryItem{
		{"Node", v.Node + " in cluster " + v.Cluster, ""},
		{"Peers", strings.Join(states, ", "), peersClass},
		{"Announcements", fmt.Sprintf("%d sent, %d accepted", v.Sent, v.Accepted), ""},
		{"Rejected", rejected, rejectedClass},
		{"Decisions", decisionSummary(v.Decisions), ""},
		{"Draining", drain, drainClass},
		{"Max age", fmtAge(v.MaxAgeMS), ""},
	}
	if v.VIP != nil {
		text, class := vipSummary(v.VIP)
		items = append(items, summaryItem{"Virtual addresses", text, class})
	}
	return items
}

// vipSummary is each virtual address and its holders, then the moves
// (as the page's script writes it): "10.0.0.10/24 on a, 10.0.0.11/24 on
// -; 3 acquired, 1 released". An address with no holder or two is a
// warning; a refused option is an error.
func vipSummary(v *VIPView) (string, string) {
	if v.Error != "" {
		return v.Error, "bad"
	}
	class := ""
	var parts []string
	for _, a := range v.Addresses {
		holders := strings.Join(a.Holders, "+")
		if len(a.Holders) != 1 {
			class = "warn"
			if holders == "" {
				holders = "-"
			}
		}
		parts = append(parts, a.Address+" on "+holders)
	}
	return fmt.Sprintf("%s; %d acquired, %d released", strings.Join(parts, ", "), v.Acquired, v.Released), class
}

// rejectSummary is the total and the non-zero reasons, by name (as the
// page's script lists them).
func rejectSummary(r map[string]int) (string, string) {
	total := 0
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(r)) {
		if n := r[name]; n > 0 {
			total += n
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	if total == 0 {
		return "0", ""
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", ")), "warn"
}

func decisionSummary(d map[string]uint64) string {
	parts := make([]string, 0, numOutcomes)
	for o := range numOutcomes {
		parts = append(parts, fmt.Sprintf("%s %d", o, d[o.String()]))
	}
	return strings.Join(parts, ", ")
}

// fmtAge shows a duration in ms at a useful precision.
func fmtAge(ms int64) string {
	switch {
	case ms < 1000:
		return fmt.Sprintf("%d ms", ms)
	case ms < 60_000:
		return fmt.Sprintf("%.1f s", float64(ms)/1000)
	case ms < 3_600_000:
		return fmt.Sprintf("%d m %d s", ms/60_000, ms%60_000/1000)
	}
	return fmt.Sprintf("%.1f h", float64(ms)/3_600_000)
}

func fmtMS(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

func fmtPct(share float64) string { return fmt.Sprintf("%.0f %%", share*100) }

func fmtBytes(b uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, i := float64(b), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", b)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// parseStatus sets up the handler from Caddyfile tokens. Syntax:
//
//	backhand_status [<matcher>] {
//		slow_start <duration>
//		refresh    <duration>
//	}
func parseStatus(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(Status)
	err := s.UnmarshalCaddyfile(h.Dispenser)
	return s, err
}

// UnmarshalCaddyfile reads the handler's options.
func (s *Status) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *caddy.Duration
		opt := d.Val()
		switch opt {
		case "slow_start":
			dst = &s.SlowStart
		case "refresh":
			dst = &s.Refresh
		default:
			return d.Errf("backhand_status: unknown option %q", opt)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return d.Errf("backhand_status: %s: %v", opt, err)
		}
		*dst = caddy.Duration(dur)
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Status)(nil)
	_ caddyhttp.MiddlewareHandler = (*Status)(nil)
	_ caddyfile.Unmarshaler       = (*Status)(nil)
)
