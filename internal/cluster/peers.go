package cluster

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// PeersView is the JSON of the admin API's GET /backhand/peers, decoded on
// the client side (the fields the tests and the runner use).
type PeersView struct {
	Node        string         `json:"node"`
	Cluster     string         `json:"cluster"`
	Incarnation string         `json:"incarnation"`
	Time        time.Time      `json:"time"`
	MaxAgeMS    int64          `json:"max_age_ms"`
	Sent        uint64         `json:"announcements_sent"`
	Accepted    uint64         `json:"announcements_accepted"`
	Rejected    map[string]int `json:"announcements_rejected"`
	Peers       []PeerView     `json:"peers"`
	Draining    bool           `json:"draining"`
	AdminDrain  bool           `json:"admin_drain"`

	// Decisions counts this node's balancing decisions by outcome (local,
	// forwarded, redirected, fallback, failed_over) since it started.
	Decisions map[string]uint64 `json:"decisions"`
}

// PeerView is one row of PeersView.
type PeerView struct {
	Name        string   `json:"name"`
	Advertise   string   `json:"advertise"`
	Tags        []string `json:"tags"`
	State       string   `json:"state"`
	AgeMS       int64    `json:"age_ms"`
	Incarnation string   `json:"incarnation"`
	Seq         uint64   `json:"seq"`
	Source      string   `json:"source,omitempty"`
	Load        float64  `json:"load"`
	CPUs        float64  `json:"cpus"`
	Busy        uint32   `json:"busy"`
	Capacity    uint32   `json:"capacity"`
	LatencyMS   float64  `json:"latency_ms"` // the peer's own response time, as announced
	Forwarded   uint64   `json:"forwarded"`
	Speed       uint32   `json:"speed"`
	Draining    bool     `json:"draining"`

	// SentByThisNode is how many requests the viewing node has proxied to
	// this peer since it started.
	SentByThisNode uint64 `json:"sent_by_this_node"`

	// InFlightFromThisNode is how many of those are in flight now.
	InFlightFromThisNode int64 `json:"in_flight_from_this_node"`

	// ObservedLatencyMS is the viewing node's estimate of this peer's
	// response time; nil until it has sent the peer a request.
	ObservedLatencyMS *float64 `json:"observed_latency_ms,omitempty"`

	// LearnedLatencyMS is the typical response time byWait ranks this
	// peer by, learned from the viewing node's requests to it; nil until
	// there is enough evidence.
	LearnedLatencyMS *float64 `json:"learned_latency_ms,omitempty"`
}

// Peer returns the row of the named peer.
func (v *PeersView) Peer(name string) (PeerView, bool) {
	i := slices.IndexFunc(v.Peers, func(p PeerView) bool { return p.Name == name })
	if i < 0 {
		return PeerView{}, false
	}
	return v.Peers[i], true
}

// Self returns this node's own row.
func (v *PeersView) Self() (PeerView, bool) {
	i := slices.IndexFunc(v.Peers, func(p PeerView) bool { return p.State == "self" })
	if i < 0 {
		return PeerView{}, false
	}
	return v.Peers[i], true
}

// States maps each listed peer to its state.
func (v *PeersView) States() map[string]string {
	m := make(map[string]string, len(v.Peers))
	for _, p := range v.Peers {
		m[p.Name] = p.State
	}
	return m
}

// SeesAll returns nil if the view lists every one of names, this node as
// "self" and the others as "live"; otherwise an error describing the view.
func (v *PeersView) SeesAll(names ...string) error {
	for _, n := range names {
		p, ok := v.Peer(n)
		want := "live"
		if n == v.Node {
			want = "self"
		}
		if !ok || p.State != want {
			return fmt.Errorf("%s sees %s, want %s %s", v.Node, v.Summary(), n, want)
		}
	}
	return nil
}

// Summary is a one-line "name=state(age)" list of the peers.
func (v *PeersView) Summary() string {
	parts := make([]string, 0, len(v.Peers))
	for _, p := range v.Peers {
		if p.State == "self" {
			parts = append(parts, p.Name+"=self")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%s(%dms)", p.Name, p.State, p.AgeMS))
	}
	if len(parts) == 0 {
		return "(no peers)"
	}
	return strings.Join(parts, " ")
}
