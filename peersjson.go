package backhand

import (
	"math"
	"strconv"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
)

// PeersView is this node's view of its cluster, as served in JSON by the
// admin API at GET /backhand/peers and by the `backhand_status` handler
// (with ?format=json or Accept: application/json). Its field names are a
// stable schema: fields may be added, never renamed or removed.
type PeersView struct {
	Node        string         `json:"node"`
	Cluster     string         `json:"cluster"`
	Incarnation string         `json:"incarnation"` // hex
	Time        time.Time      `json:"time"`
	MaxAgeMS    int64          `json:"max_age_ms"`
	Sent        uint64         `json:"announcements_sent"`
	Accepted    uint64         `json:"announcements_accepted"`
	Rejected    map[string]int `json:"announcements_rejected"` // by reason; every reason listed
	Peers       []PeerView     `json:"peers"`                  // sorted by name, self included

	// SlowStartMS is the slow-start window the states were computed with;
	// 0 (omitted) means no peer is shown as "slow-start".
	SlowStartMS int64 `json:"slow_start_ms,omitempty"`

	// Draining is whether this node announces itself as draining from
	// its next announcement on: the `drain` option or the admin API's
	// drain. (An application report may also drain it; the self row's
	// `draining` shows what was last announced.)
	Draining bool `json:"draining"`

	// AdminDrain is whether the admin API's POST /backhand/drain is in
	// effect (cleared by POST /backhand/undrain).
	AdminDrain bool `json:"admin_drain"`

	// Decisions counts how this node's balancing decisions ended since the
	// process started, by outcome: local, forwarded, redirected, fallback,
	// failed_over. Every outcome is listed.
	Decisions map[string]uint64 `json:"decisions"`

	// ReferenceLatencyMS is the cluster's reference response time: the
	// median of the typical times byWait ranks the live nodes by (times
	// within 1.25x of it count as equal); 0 while unknown.
	ReferenceLatencyMS float64 `json:"reference_latency_ms"`

	// RoundTripFactor is how much longer this node counts a request it
	// sends a peer than the peer counts it (the hop; 1 to 2), by which
	// byWait raises this node's own count of the requests it serves.
	RoundTripFactor float64 `json:"round_trip_factor"`

	// Crowding is how much traffic other deciders send this node's peers
	// on the same announcements, per request of this node's own (about
	// (deciders - 1) x staleness; see bySample): above 60 the default
	// chain samples three peers, else it compares up to sixteen. Null
	// while this node has sent its peers nothing.
	Crowding *float64 `json:"crowding"`

	// VIP is the vip option's state: each virtual address, who holds it
	// and who should, and this process's moves; omitted without the
	// option.
	VIP *VIPView `json:"vip,omitempty"`
}

// PeerView is one row of PeersView. Loads are plain numbers (1.5 means a
// load average of 1.5), shares are 0-1.
type PeerView struct {
	Name        string   `json:"name"`
	Advertise   string   `json:"advertise"`
	Tags        []string `json:"tags"`  // as configured: the vip option's holdings tag is shown in Holds
	State       string   `json:"state"` // self, live, stale, draining or slow-start
	AgeMS       int64    `json:"age_ms"`
	Incarnation string   `json:"incarnation"`
	Seq         uint64   `json:"seq"`
	Source      string   `json:"source,omitempty"` // UDP source address; empty for self
	Load        float64  `json:"load"`
	CPUs        float64  `json:"cpus"`
	CPUIdle     float64  `json:"cpu_idle"`
	MemTotal    uint64   `json:"mem_total"`
	MemAvail    uint64   `json:"mem_avail"`
	Busy        uint32   `json:"busy"`
	Capacity    uint32   `json:"capacity"`
	LatencyMS   float64  `json:"latency_ms"` // the peer's own response-time EWMA, as announced
	Forwarded   uint64   `json:"forwarded"`  // requests the peer forwarded to others, as announced
	Speed       uint32   `json:"speed"`
	Draining    bool     `json:"draining"`
	AppWeight   *float64 `json:"app_weight,omitempty"` // 0-1, when the application reports one
	AppLoad     *float64 `json:"app_load,omitempty"`

	// Holds are the virtual addresses the peer announced holding (the vip
	// option), omitted when none.
	Holds []string `json:"holds,omitempty"`

	// SentByThisNode is how many requests this node has proxied to the
	// peer since this process started (0 for peers it never chose).
	SentByThisNode uint64 `json:"sent_by_this_node"`

	// InFlightFromThisNode is how many of them are in flight now.
	InFlightFromThisNode int64 `json:"in_flight_from_this_node"`

	// ObservedLatencyMS is this node's peak-EWMA estimate of the peer's
	// response time to its proxied requests (10 s time constant); omitted
	// until this node has sent the peer a request.
	ObservedLatencyMS *float64 `json:"observed_latency_ms,omitempty"`

	// LearnedLatencyMS is the typical response time that byWait ranks the
	// peer by, learned from the requests this node sent it (for this node
	// itself: from those it served); omitted until there is enough
	// evidence.
	LearnedLatencyMS *float64 `json:"learned_latency_ms,omitempty"`
}

// viewOptions are the presentation settings of a view.
type viewOptions struct {
	// slowStart shows peers first heard (in their current incarnation)
	// within this window as "slow-start"; 0 turns the state off.
	slowStart time.Duration
}

// peersView builds the view of app's node at now.
func peersView(app *App, now time.Time) PeersView {
	return peersViewWith(app, now, viewOptions{})
}

// peersViewWith builds the view of app's node at now with opts.
func peersViewWith(app *App, now time.Time, opts viewOptions) PeersView {
	n := app.node
	admin := n.draining.Load()
	v := PeersView{
		Node:        app.Name,
		Cluster:     app.Cluster,
		Incarnation: strconv.FormatUint(n.incarnation, 16),
		Time:        now,
		MaxAgeMS:    time.Duration(app.MaxAge).Milliseconds(),
		Sent:        n.stats.sent.Load(),
		Accepted:    n.received.accepts.Load(),
		Rejected:    make(map[string]int, numRejectReasons),
		Peers:       []PeerView{},
		SlowStartMS: opts.slowStart.Milliseconds(),
		Draining:    app.Drain || admin,
		AdminDrain:  admin,
		Decisions:   make(map[string]uint64, numOutcomes),

		ReferenceLatencyMS: n.table.ReferenceMicros() / 1000,
		RoundTripFactor:    n.table.RoundTripFactor(),
	}
	if c := n.table.Crowding(); !math.IsInf(c, 0) && !math.IsNaN(c) {
		v.Crowding = &c
	}
	for r := range numRejectReasons {
		v.Rejected[r.String()] = int(n.received.rejects[r].Load())
	}
	for o := range numOutcomes {
		v.Decisions[o.String()] = n.decisions.outcomes[o].Load()
	}
	for _, s := range n.table.Peers() {
		row := slotRow(s, now, time.Duration(app.MaxAge), opts)
		row.Holds = heldBy(app, row.Tags)
		row.Tags = withoutVIPTags(row.Tags)
		v.Peers = append(v.Peers, row)
	}
	v.VIP = vipViewOf(app)
	return v
}

// slotRow is the row of one slot: the peer's announced record plus this
// node's own counters for it, and its state under maxAge (the app's; the
// patience and this node's evidence apply as on the candidate lists).
func slotRow(s *candidacy.Slot, now time.Time, maxAge time.Duration, opts viewOptions) PeerView {
	p := s.Peer()
	pv := rowOf(p, now)
	pv.State = viewState(s, now, maxAge, opts.slowStart)
	pv.SentByThisNode = s.Sent()
	pv.InFlightFromThisNode = s.InFlight()
	if us, ok := s.ObservedMicros(); ok {
		ms := us / 1000
		pv.ObservedLatencyMS = &ms
	}
	if us, ok := s.LearnedMicros(); ok {
		ms := us / 1000
		pv.LearnedLatencyMS = &ms
	}
	return pv
}

func rowOf(p *candidacy.Peer, now time.Time) PeerView {
	f := &p.Figures
	pv := PeerView{
		Name:        p.Name,
		Advertise:   p.Advertise,
		Tags:        p.Tags,
		AgeMS:       p.Age(now).Milliseconds(),
		Incarnation: strconv.FormatUint(p.Incarnation, 16),
		Seq:         p.Seq,
		Load:        float64(f.Load1000) / 1000,
		CPUs:        float64(f.CPUMilli) / 1000,
		CPUIdle:     float64(f.CPUIdle1000) / 1000,
		MemTotal:    f.MemTotal,
		MemAvail:    f.MemAvail,
		Busy:        f.Busy,
		Capacity:    f.Capacity,
		LatencyMS:   float64(f.LatencyMicros) / 1000,
		Forwarded:   f.Forwarded,
		Speed:       f.Speed,
		Draining:    f.Draining,
	}
	if pv.Tags == nil {
		pv.Tags = []string{}
	}
	if p.Source.IsValid() {
		pv.Source = p.Source.String()
	}
	if f.HasAppWeight {
		w := float64(f.AppWeight) / 1000
		pv.AppWeight = &w
	}
	if f.HasAppLoad {
		l := float64(f.AppLoad1000) / 1000
		pv.AppLoad = &l
	}
	return pv
}

// peerState names where the peer of slot s stands: self, live, stale
// (silent for longer than maxAge and its patience, and not answering this
// node through a cluster-wide silence: see candidacy.Slot.Usable) or
// draining.
func peerState(s *candidacy.Slot, now time.Time, maxAge time.Duration) string {
	p := s.Peer()
	switch {
	case p.Self:
		return "self"
	case !s.Fresh(now, maxAge):
		return "stale"
	case p.Figures.Draining:
		return "draining"
	}
	return "live"
}

// viewState is peerState plus "slow-start": a live peer whose current
// incarnation was first heard less than slowStart ago (a node that just
// joined or restarted, which a slowStart candidacy function with the same
// window is still ramping up). Stale and draining take precedence.
func viewState(s *candidacy.Slot, now time.Time, maxAge, slowStart time.Duration) string {
	st := peerState(s, now, maxAge)
	if st == "live" && slowStart > 0 && now.Sub(s.Peer().FirstSeen) < slowStart {
		return "slow-start"
	}
	return st
}
