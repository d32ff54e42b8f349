package backhand

import (
	"errors"
	"sync/atomic"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// rejectReason says why a datagram was not taken into the table: first
// wire's reasons, which Decode finds in the datagram itself (truncated,
// bad_mac ...), with the same values, then those of the receiver and the
// table. Their names label metrics and the status page.
type rejectReason uint8

const (
	rejectWrongCluster rejectReason = rejectReason(wire.NumReasons) + iota
	rejectACL
	rejectReplay
	rejectOutOfWindow // send time too far from our clock
	rejectTableFull
	rejectDuplicateID     // another process announces this node's name
	rejectAdvertiseDenied // the advertised address is outside advertise_allow
	numRejectReasons
)

var rejectNames = [numRejectReasons - rejectReason(wire.NumReasons)]string{
	"wrong_cluster", "acl", "replay", "out_of_window", "table_full", "duplicate_id", "advertise_denied",
}

func (r rejectReason) String() string {
	switch {
	case r < rejectReason(wire.NumReasons):
		return wire.Reason(r).String()
	case r < numRejectReasons:
		return rejectNames[r-rejectReason(wire.NumReasons)]
	}
	return "unknown"
}

// reasonOf returns the rejection reason of err, from the table's Accept
// or from wire's Decode (wire.Malformed for any other error).
func reasonOf(err error) rejectReason {
	switch {
	case errors.Is(err, candidacy.ErrReplay):
		return rejectReplay
	case errors.Is(err, candidacy.ErrOutOfWindow):
		return rejectOutOfWindow
	case errors.Is(err, candidacy.ErrTableFull):
		return rejectTableFull
	case errors.Is(err, candidacy.ErrDuplicateID):
		return rejectDuplicateID
	}
	return rejectReason(wire.ReasonOf(err))
}

// receivedCounts counts the announcements this node received: accepted
// into the table, or rejected by reason.
type receivedCounts struct {
	accepts atomic.Uint64
	rejects [numRejectReasons]atomic.Uint64
}

// countReject records a rejection and returns its reason.
func (c *receivedCounts) countReject(r rejectReason) rejectReason {
	c.rejects[r].Add(1)
	return r
}
