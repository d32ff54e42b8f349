package candidacy

import (
	"net/netip"
	"slices"
	"time"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// Figures are the resources and load a node announces, as the wire
// carries them.
type Figures = wire.Figures

// Peer is one node of the cluster as this node last heard it. A Peer is
// immutable once published: an announcement replaces it with a new one, so
// readers on the request path need no lock.
type Peer struct {
	Name        string
	Advertise   string // host:port to forward HTTP to
	Tags        []string
	Figures     Figures
	Incarnation uint64
	Seq         uint64
	SentAt      int64          // Unix ns, by the sender's clock
	ReceivedAt  time.Time      // by this node's clock; ages are measured from it
	FirstSeen   time.Time      // when this incarnation was first heard (slow start)
	Source      netip.AddrPort // UDP source; zero for self
	Self        bool

	// Patience is the longest silence after which the peer still counts
	// as fresh, whatever the max_age asked for: learned by the table from
	// the gaps between its recent announcements (see patienceGaps), so a
	// peer whose announcements are mostly lost on the way is not taken
	// for dead between two that arrive. 0 (a steady peer): max_age alone.
	Patience time.Duration
}

// Age is how long ago the peer was last heard from.
func (p *Peer) Age(now time.Time) time.Duration { return now.Sub(p.ReceivedAt) }

// Fresh reports whether the peer was heard from within maxAge at now, or
// within its Patience when that is longer; this node itself always is.
// This is what the announcements alone say: Slot.Fresh adds the
// cluster's patience and this node's own evidence.
func (p *Peer) Fresh(now time.Time, maxAge time.Duration) bool {
	return p.Self || p.Age(now) <= max(maxAge, p.Patience)
}

// takesRequests reports whether the peer may be sent new requests: it
// advertises an address and is not draining.
func (p *Peer) takesRequests() bool {
	return p.Advertise != "" && !p.Figures.Draining
}

// Usable reports whether the peer may serve a new request by its record
// alone: fresh and taking requests (it advertises an address and is not
// draining). Candidate lists, the upstream source and the status page
// apply Slot.Usable, which adds what this node knows besides.
func (p *Peer) Usable(now time.Time, maxAge time.Duration) bool {
	return p.takesRequests() && p.Fresh(now, maxAge)
}

// HasTags reports whether the peer carries every one of tags.
func (p *Peer) HasTags(tags []string) bool {
	for _, t := range tags {
		if !slices.Contains(p.Tags, t) {
			return false
		}
	}
	return true
}
