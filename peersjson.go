package backhand

import (
	"strconv"
	"time"
)

// PeersView is this node's view of its cluster, as served in JSON by the
// admin API at GET /backhand/peers. Its field names are a stable schema:
// fields may be added, never renamed or removed.
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
}

// PeerView is one row of PeersView. Loads are plain numbers (1.5 means a
// load average of 1.5), shares are 0-1.
type PeerView struct {
	Name        string   `json:"name"`
	Advertise   string   `json:"advertise"`
	Tags        []string `json:"tags"`
	State       string   `json:"state"` // self, live, stale or draining
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
	LatencyMS   float64  `json:"latency_ms"`
	Forwarded   uint64   `json:"forwarded"`
	Speed       uint32   `json:"speed"`
	Draining    bool     `json:"draining"`
	AppWeight   *float64 `json:"app_weight,omitempty"` // 0-1, when the application reports one
	AppLoad     *float64 `json:"app_load,omitempty"`
}

// peersView builds the view of node n under app's settings at now.
func peersView(app *App, now time.Time) PeersView {
	n := app.node
	t := n.table
	v := PeersView{
		Node:        app.Name,
		Cluster:     app.Cluster,
		Incarnation: strconv.FormatUint(n.incarnation, 16),
		Time:        now,
		MaxAgeMS:    time.Duration(app.MaxAge).Milliseconds(),
		Sent:        n.stats.sent.Load(),
		Accepted:    t.accepts.Load(),
		Rejected:    make(map[string]int, numRejectReasons),
		Peers:       []PeerView{},
	}
	for r := range numRejectReasons {
		v.Rejected[r.String()] = int(t.rejects[r].Load())
	}
	for _, s := range t.peers() {
		v.Peers = append(v.Peers, rowOf(s.cur.Load(), now, time.Duration(app.MaxAge)))
	}
	return v
}

func rowOf(p *Peer, now time.Time, maxAge time.Duration) PeerView {
	f := &p.Figures
	pv := PeerView{
		Name:        p.Name,
		Advertise:   p.Advertise,
		Tags:        p.Tags,
		State:       peerState(p, now, maxAge),
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

// peerState names where a peer stands: self, live, stale (silent for longer
// than maxAge) or draining.
func peerState(p *Peer, now time.Time, maxAge time.Duration) string {
	switch {
	case p.Self:
		return "self"
	case p.Age(now) > maxAge:
		return "stale"
	case p.Figures.Draining:
		return "draining"
	}
	return "live"
}
