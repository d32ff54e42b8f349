package wire

import "errors"

// Reason says why Decode rejected a datagram. The peer table counts
// rejections by reason, and the names (String) label the
// announcements_rejected_total metric and the status page, so they are
// part of the interface: do not rename or reorder them.
type Reason uint8

// The reasons Decode rejects a datagram for. The peer table adds its own
// reasons (replay, wrong cluster ...) after NumReasons.
const (
	Truncated    Reason = iota // shorter than its fields say
	Oversized                  // longer than MaxDatagram
	BadMagic                   // not a backhand datagram
	BadVersion                 // another version of the format
	Malformed                  // a field out of range, or bytes left over
	Unsigned                   // the verifier has a key; the datagram has no MAC
	AuthMismatch               // the verifier has no key; the datagram is signed
	BadMAC                     // the MAC does not match (wrong key, or tampered)
	BadAdvertise               // the advertised address is not host:port (see CheckAdvertise)
	NumReasons                 // how many reasons there are
)

var reasonNames = [NumReasons]string{
	"truncated", "oversized", "bad_magic", "bad_version", "malformed",
	"unsigned", "auth_mismatch", "bad_mac", "bad_advertise",
}

// String is the reason's name, such as "bad_mac".
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// rejectError is a datagram rejected for a reason.
type rejectError struct{ reason Reason }

func (e rejectError) Error() string { return "announcement rejected: " + e.reason.String() }

func reject(r Reason) error { return rejectError{r} }

// ReasonOf returns the reason carried by an error from Decode, or Malformed
// for any other error.
func ReasonOf(err error) Reason {
	var e rejectError
	if errors.As(err, &e) {
		return e.reason
	}
	return Malformed
}
