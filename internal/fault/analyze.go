package fault

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// analyze fills in the report from the clients' results, the applications'
// counts and timelines, and the observers' polls.
func (s *runState) analyze(results []Result) {
	r, e := s.rep, s.e
	served := map[string]int{}
	posts := map[string]int{}
	for _, a := range e.apps {
		all, p := a.Served()
		for k, v := range all {
			served[k] += v
		}
		for k, v := range p {
			posts[k] += v
		}
	}
	who := map[string][]string{} // id -> the applications that served it
	for _, a := range e.apps {
		all, _ := a.Served()
		for k, v := range all {
			for range v {
				who[k] = append(who[k], a.name)
			}
		}
	}
	var dupNotes []string
	r.Failures = map[string]int{}
	for _, x := range results {
		r.Requests++
		if x.Kind == KindDropped {
			r.Dropped++
		}
		if x.Failed() {
			r.Failures[x.KindLabel()]++
			if x.Post {
				r.PostFail++
			} else {
				r.GetFail++
			}
			if served[x.ID] > 0 {
				r.ServedFail++
			}
		} else if served[x.ID] == 0 {
			r.Lost++
		}
		if n := served[x.ID]; n > 1 {
			if len(dupNotes) < 4 {
				m := "GET"
				if x.Post {
					m = "POST"
				}
				dupNotes = append(dupNotes, fmt.Sprintf("%s %s due %.2fs: served by %s, client saw %s after %v",
					m, x.ID, x.Due.Seconds(), strings.Join(who[x.ID], " and "), x.KindLabel(), x.Lat.Round(time.Millisecond)))
			}
			if x.Post {
				r.DupPost++
			} else {
				r.DupGet++
			}
		}
	}

	for _, n := range dupNotes {
		r.note("served twice: %s", n)
	}
	s.describeFailures(results, served)

	// Latencies by phase (by due time), failures included with their time.
	var before, during, after []time.Duration
	for _, x := range results {
		if x.Kind == KindDropped {
			continue
		}
		switch {
		case x.Due < e.o.Warmup:
		case x.Due < r.Inject:
			before = append(before, x.Lat)
		case x.Due < r.DuringEnd:
			during = append(during, x.Lat)
			r.MaxLatencyDuring = max(r.MaxLatencyDuring, x.Lat)
		default:
			after = append(after, x.Lat)
		}
		r.MaxLatency = max(r.MaxLatency, x.Lat)
	}
	r.P99Before, r.P99During, r.P99After = p99(before), p99(during), p99(after)
	for _, w := range r.Windows {
		r.note("%s", windowStats(w, results))
	}

	// The last time an observer routed a new request to the victim.
	obss := s.observations()
	last := map[int]uint64{}
	maxAge := e.o.MaxAge
	if maxAge == 0 {
		maxAge = 3 * e.o.Interval
	}
	var lastInc time.Duration = -1
	late := map[int]uint64{}
	lateBase := map[int]uint64{}
	for _, o := range obss {
		if !o.ok {
			continue
		}
		if prev, seen := last[o.who]; seen && o.sent > prev && o.at >= r.Inject {
			if r.Recover == 0 || o.at <= r.Recover {
				lastInc = o.at
			}
		}
		if o.at >= r.Inject+maxAge+time.Second && (r.Recover == 0 || o.at <= r.Recover) {
			if _, ok := lateBase[o.who]; !ok {
				lateBase[o.who] = o.sent
			}
			late[o.who] = o.sent - lateBase[o.who]
		}
		last[o.who] = o.sent
	}
	for _, v := range late {
		r.SentLate += v
	}
	if r.Inject > 0 {
		if lastInc < 0 {
			r.StopAfter = 0
		} else {
			r.StopAfter = lastInc - r.Inject
		}
	}

	// A recovered node: when every observer lists it live again (a new
	// incarnation after a restart), and when it has its share.
	if s.wide && r.Inject > 0 {
		r.note("%s", s.spread(r.Inject, r.DuringEnd, 5*time.Second))
	}
	if r.Recover > 0 && !s.wide {
		oldInc := ""
		for _, n := range r.Notes {
			if v, ok := strings.CutPrefix(n, "old incarnation "); ok {
				oldInc = v
			}
		}
		nobs := len(e.observers())
		liveAt := map[int]time.Duration{}
		for _, o := range obss {
			if o.at < r.Recover || !o.ok {
				continue
			}
			if o.state == "live" && (oldInc == "" || o.incarnation != oldInc) {
				if _, ok := liveAt[o.who]; !ok {
					liveAt[o.who] = o.at
				}
			} else {
				delete(liveAt, o.who)
			}
		}
		if len(liveAt) == nobs {
			var t time.Duration
			for _, at := range liveAt {
				t = max(t, at)
			}
			r.CandidateAfter = t - r.Recover
		}
		r.ShareAfter = s.shareAfter(r.Recover)
		r.note("node%d's share of the arrivals per 2 s from the recovery (fair: %.0f%%): %s", e.victim+1, 100/float64(len(e.apps)), s.shares(r.Recover, 2*time.Second))
		for _, n := range s.latencyAfter(obss, r.Recover) {
			r.note("%s", n)
		}
	}
}

// latencyAfter describes, per observer, its estimates of the victim's
// response time (learned: byWait's typical time; observed: peak-EWMA) at
// the recovery and every 2 s after it, against the other nodes' median.
func (s *runState) latencyAfter(obss []obs, rec time.Duration) []string {
	e := s.e
	victim := "node" + fmt.Sprint(e.victim+1)
	var out []string
	for who, n := range e.observers() {
		var parts []string
		next := rec
		for _, o := range obss {
			if o.who != who || o.at < next || o.learned == nil || len(parts) >= 8 {
				continue
			}
			var others []float64
			for name, v := range o.learned {
				if name != victim && v >= 0 {
					others = append(others, v)
				}
			}
			slices.Sort(others)
			med := -1.0
			if len(others) > 0 {
				med = others[len(others)/2]
			}
			parts = append(parts, fmt.Sprintf("+%.0fs %s/%s, announces %s busy %d (others %s)", (o.at-rec).Seconds(),
				fmtMS(o.learned[victim]), fmtMS(o.observed[victim]), fmtMS(o.announced[victim]), o.busyOf[victim], fmtMS(med)))
			next += 2 * time.Second
		}
		out = append(out, fmt.Sprintf("%s's learned/observed latency of %s, and what it announces (latency_ms, busy), from the recovery: %s", n.Name(), victim, strings.Join(parts, ", ")))
	}
	return out
}

func fmtMS(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0fms", v)
}

// spread describes how the applications shared the arrivals from from to
// to: each one's share of the whole, and the largest share one of them
// had in each window of win (a herd shows as windows near 100%).
func (s *runState) spread(from, to, win time.Duration) string {
	e := s.e
	tl := make([][]int64, len(e.apps))
	for i, a := range e.apps {
		tl[i] = a.Arrivals()
	}
	total := make([]int64, len(tl))
	var all int64
	var peaks []float64
	w := int(win / bucket)
	for b := int(from / bucket); b+w <= min(int(to/bucket), len(tl[0])); b += w {
		var most, sum int64
		for i := range tl {
			var n int64
			for k := b; k < b+w; k++ {
				n += tl[i][k]
			}
			total[i] += n
			sum += n
			most = max(most, n)
		}
		all += sum
		if sum > 0 {
			peaks = append(peaks, 100*float64(most)/float64(sum))
		}
	}
	var ps []string
	for _, p := range peaks {
		ps = append(ps, fmt.Sprintf("%.0f%%", p))
	}
	if len(peaks) > 24 {
		slices.Sort(peaks)
		ps = []string{fmt.Sprintf("median %.0f%%, max %.0f%% over %d windows", peaks[len(peaks)/2], peaks[len(peaks)-1], len(peaks))}
	}
	var parts []string
	for i, a := range e.apps {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", a.name, 100*float64(total[i])/float64(max(all, 1))))
	}
	return fmt.Sprintf("arrivals during the fault: %s; the busiest node's share per %v: %s", strings.Join(parts, ", "), win, strings.Join(ps, " "))
}

// shares is the victim's share of the arrivals in consecutive windows of
// win from rec, as percentages.
func (s *runState) shares(rec, win time.Duration) string {
	e := s.e
	tl := make([][]int64, len(e.apps))
	for i, a := range e.apps {
		tl[i] = a.Arrivals()
	}
	w := int(win / bucket)
	var parts []string
	for b := int(rec / bucket); b+w <= len(tl[0]) && len(parts) < 12; b += w {
		var mine, all int64
		for i := range tl {
			for k := b; k < b+w; k++ {
				all += tl[i][k]
				if i == e.victim {
					mine += tl[i][k]
				}
			}
		}
		if all == 0 {
			break
		}
		parts = append(parts, fmt.Sprintf("%.0f%%", 100*float64(mine)/float64(all)))
	}
	return strings.Join(parts, " ")
}

// shareAfter is the time from rec to the end of the first 1 s window in
// which the victim's application got at least 3/4 of its fair share of
// the arrivals; -1 if none.
func (s *runState) shareAfter(rec time.Duration) time.Duration {
	e := s.e
	tl := make([][]int64, len(e.apps))
	for i, a := range e.apps {
		tl[i] = a.Arrivals()
	}
	const win = int(time.Second / bucket)
	first := int(rec / bucket)
	for b := first; b+win <= len(tl[0]); b++ {
		var mine, all int64
		for i := range tl {
			for k := b; k < b+win; k++ {
				all += tl[i][k]
				if i == e.victim {
					mine += tl[i][k]
				}
			}
		}
		if all == 0 {
			break // the load has ended
		}
		if float64(mine) >= 0.75*float64(all)/float64(len(tl)) {
			return time.Duration(b+win)*bucket - rec
		}
	}
	return -1
}

// describeFailures notes the browser-like resends, and up to
// FailureDetails failed requests: the client's error, whether its
// connection was a kept-alive one, and the first log line of a node that
// names it.
func (s *runState) describeFailures(results []Result, served map[string]int) {
	r, e := s.rep, s.e
	var resent, resentPost, resentFailed int
	for _, x := range results {
		if x.Resent {
			resent++
			if x.Post {
				resentPost++
			}
			if x.Failed() {
				resentFailed++
			}
		}
	}
	if e.o.BrowserResend {
		r.note("browser-like resends (a kept-alive connection broke before any response header): %d (%d POST), %d of them failed again", resent, resentPost, resentFailed)
	}
	shown := 0
	for _, x := range results {
		if !x.Failed() || x.Kind == KindDropped || shown >= e.o.FailureDetails {
			continue
		}
		shown++
		m := "GET"
		if x.Post {
			m = "POST"
		}
		entry := strings.TrimSuffix(strings.TrimPrefix(x.Entry, "http://"), "/")
		line := fmt.Sprintf("failed: %s %s due %.2fs via %s (kept-alive %v, resent %v, served %d): %s %.160s after %v",
			m, x.ID, x.Due.Seconds(), entry, x.Reused, x.Resent, served[x.ID], x.KindLabel(), x.Err, x.Lat.Round(time.Millisecond))
		if logs := e.grepLogs(`"`+x.ID+`"`, 2); len(logs) > 0 {
			for _, l := range logs {
				line += "; log " + clipLog(l)
			}
		}
		r.note("%s", line)
	}
}

// clipLog keeps a log line's node, message and error.
func clipLog(l string) string {
	node, rest, _ := strings.Cut(l, ": ")
	var v struct {
		Logger string `json:"logger"`
		Msg    string `json:"msg"`
		Err    string `json:"error"`
		Status int    `json:"status"`
	}
	if json.Unmarshal([]byte(rest), &v) != nil {
		return node + ": " + rest[:min(len(rest), 200)]
	}
	return fmt.Sprintf("%s: %s %q status %d error %.200q", node, v.Logger, v.Msg, v.Status, v.Err)
}

// windowStats summarises the requests due within w: how many, their
// failures by kind, p99 and longest.
func windowStats(w Window, results []Result) string {
	var lats []time.Duration
	fails := map[string]int{}
	var longest time.Duration
	for _, x := range results {
		if x.Due < w.From || x.Due >= w.To {
			continue
		}
		if x.Failed() {
			fails[x.KindLabel()]++
		}
		if x.Kind == KindDropped {
			continue
		}
		lats = append(lats, x.Lat)
		longest = max(longest, x.Lat)
	}
	f := (&Report{Failures: fails}).FailureSummary()
	return fmt.Sprintf("%s (%.1fs-%.1fs): %d requests, failures %s, p99 %s, longest %s",
		w.Name, w.From.Seconds(), w.To.Seconds(), len(lats), f, fmtDur(p99(lats)), fmtDur(longest))
}

func p99(xs []time.Duration) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[min(len(xs)-1, int(0.99*float64(len(xs))))]
}

func fmtDur(d time.Duration) string {
	switch {
	case d == -2:
		return "-"
	case d < 0:
		return "never"
	case d == 0:
		return "0"
	case d < time.Second:
		return fmt.Sprintf("%.0fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
}

// FailureSummary is "none" or the failures by kind, e.g. "502:3 conn:1".
func (r *Report) FailureSummary() string {
	if len(r.Failures) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(r.Failures))
	for k := range r.Failures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", k, r.Failures[k]))
	}
	return strings.Join(parts, " ")
}

// Line is a one-line summary.
func (r *Report) Line() string {
	if r.Skipped != "" {
		return fmt.Sprintf("%s/%s: skipped: %s", r.Fault, r.Deploy, r.Skipped)
	}
	s := fmt.Sprintf("%s/%s: %d requests, failures %s (GET %d, POST %d), lost %d, served twice GET %d POST %d, served-but-failed %d; stop %s (late %d), candidate %s, share %s; p99 %s / %s / %s, max %s",
		r.Fault, r.Deploy, r.Requests, r.FailureSummary(), r.GetFail, r.PostFail, r.Lost, r.DupGet, r.DupPost, r.ServedFail,
		fmtDur(r.StopAfter), r.SentLate, fmtOpt(r.CandidateAfter, r.Recover), fmtOpt(r.ShareAfter, r.Recover),
		fmtDur(r.P99Before), fmtDur(r.P99During), fmtDur(r.P99After), fmtDur(r.MaxLatency))
	if r.Err != nil {
		s += fmt.Sprintf("; ERROR %v", r.Err)
	}
	for _, n := range r.Notes {
		s += "\n      " + n
	}
	return s
}

func fmtOpt(d, rec time.Duration) string {
	if rec == 0 || d == -2 {
		return "-"
	}
	return fmtDur(d)
}

// WriteMarkdown writes a table per fault, a row per deployment, and the
// notes.
func WriteMarkdown(w io.Writer, reps []*Report) {
	byFault := map[string][]*Report{}
	var order []string
	for _, r := range reps {
		if _, ok := byFault[r.Fault]; !ok {
			order = append(order, r.Fault)
		}
		byFault[r.Fault] = append(byFault[r.Fault], r)
	}
	for _, f := range order {
		spec, _ := faultByName(f)
		fmt.Fprintf(w, "#### %s: %s\n\n", f, spec.desc)
		fmt.Fprintln(w, "| deployment | requests | failures by kind | GET / POST failed | lost | served twice GET / POST | served, yet failed | stops getting new requests | candidate again | share back | p99 before / during / after | longest |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
		var notes []string
		for _, r := range byFault[f] {
			if r.Skipped != "" {
				fmt.Fprintf(w, "| %s | skipped: %s |||||||||||\n", r.Deploy, r.Skipped)
				continue
			}
			fmt.Fprintf(w, "| %s | %d | %s | %d / %d | %d | %d / %d | %d | %s (%d late) | %s | %s | %s / %s / %s | %s |\n",
				r.Deploy, r.Requests, r.FailureSummary(), r.GetFail, r.PostFail, r.Lost, r.DupGet, r.DupPost, r.ServedFail,
				fmtDur(r.StopAfter), r.SentLate, fmtOpt(r.CandidateAfter, r.Recover), fmtOpt(r.ShareAfter, r.Recover),
				fmtDur(r.P99Before), fmtDur(r.P99During), fmtDur(r.P99After), fmtDur(r.MaxLatency))
			for _, n := range r.Notes {
				notes = append(notes, r.Deploy+": "+n)
			}
			if r.Err != nil {
				notes = append(notes, fmt.Sprintf("%s: error: %v", r.Deploy, r.Err))
			}
		}
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		if len(notes) > 0 {
			fmt.Fprintln(w)
		}
	}
}
