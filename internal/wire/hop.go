package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HopHeader is the request header that marks a request a backhand node
// forwarded to a peer. The receiving node serves it itself and never
// forwards it again, which is what prevents loops; the marker also carries
// the original client's address and scheme, so the receiving node can
// restore them. It is authenticated with a key derived from the cluster
// key and bound to what it authorises: the receiving node, the request's
// method and target, and a time within the cluster's replay window. A
// forged, expired or misdirected marker is stripped and the request is
// balanced as any other. Without a cluster key (insecure_no_key) markers
// are not authenticated: anyone can make a node serve a request itself,
// so receivers then take nothing else from a marker.
const HopHeader = "Backhand-Hop"

// HopParam is the query parameter that carries a hop marker in a redirect
// (HTTPRedirectToIP/Name), so that the node the client lands on serves
// the request instead of redirecting it again.
const HopParam = "backhand_hop"

const hopVersion = "v2"

// Hop is what a hop marker says.
type Hop struct {
	From   string    // the node that forwarded or redirected the request
	To     string    // the node that is to serve it
	Client string    // the client's IP address, or empty
	Scheme string    // how the client reached From: "http" or "https"
	At     time.Time // when the marker was made
}

// HopSigner signs and checks hop markers with one key, derived from the
// cluster's shared secret. It pools its HMAC states: every forwarded
// request needs one, and a fresh HMAC hashes the key twice before it
// hashes the marker. It is safe for concurrent use. A nil HopSigner (no
// cluster key) makes and accepts unsigned markers.
type HopSigner struct {
	macs sync.Pool // of *hopMAC
}

// hopMAC is a pooled HMAC state with the buffer its message is built in.
type hopMAC struct {
	h   hash.Hash
	msg []byte
}

// NewHopSigner returns the hop marker signer keyed by the cluster's shared
// secret, or nil without a secret.
func NewHopSigner(secret []byte) *HopSigner {
	if len(secret) == 0 {
		return nil
	}
	key := deriveKey(secret, hopLabel)
	return &HopSigner{macs: sync.Pool{New: func() any { return &hopMAC{h: hmac.New(sha256.New, key)} }}}
}

// Mark returns the marker for h on a request with method and target (the
// request URI as sent): "v2;<from>;<to>;<client>;<scheme>;<unix ms>;<MAC>",
// the MAC being the first 16 bytes of HMAC-SHA256 over the rest and the
// method and target, in hex ("-" without a key). Every forwarded request
// makes one, so it is built in one buffer.
func (s *HopSigner) Mark(h Hop, method, target string) string {
	var buf [256]byte
	b := append(buf[:0], hopVersion+";"...)
	for _, f := range [...]string{h.From, h.To, h.Client, h.Scheme} {
		b = append(append(b, f...), ';')
	}
	b = strconv.AppendInt(b, h.At.UnixMilli(), 10)
	b = append(b, ';')
	if s == nil {
		return string(append(b, '-'))
	}
	var sum [sha256.Size]byte
	return string(hex.AppendEncode(b, s.sum(b[:len(b)-1], method, target, &sum)))
}

// sum is the marker MAC of body bound to method and target: the first
// hopMACLen bytes of its HMAC. The three are hashed as one message, built
// in the pooled state's buffer.
func (s *HopSigner) sum(body []byte, method, target string, out *[sha256.Size]byte) []byte {
	m := s.macs.Get().(*hopMAC)
	m.msg = append(append(append(append(append(m.msg[:0], body...), 0), method...), 0), target...)
	m.h.Reset()
	m.h.Write(m.msg)
	m.h.Sum(out[:0])
	s.macs.Put(m)
	return out[:hopMACLen]
}

const hopMACLen = 16 // bytes of the HMAC a marker keeps

// Check verifies a marker made by Mark with the same key for node to, on a
// request with method and target, at most window from now, and returns
// what it says. The client, when present, is a valid IP address.
func (s *HopSigner) Check(marker, to, method, target string, now time.Time, window time.Duration) (Hop, bool) {
	i := strings.LastIndexByte(marker, ';')
	if i < 0 {
		return Hop{}, false
	}
	body, mac := marker[:i], marker[i+1:]
	if s == nil {
		if mac != "-" {
			return Hop{}, false
		}
	} else {
		var got [hopMACLen]byte
		if len(mac) != 2*hopMACLen {
			return Hop{}, false
		}
		if _, err := hex.Decode(got[:], []byte(mac)); err != nil {
			return Hop{}, false
		}
		var sum [sha256.Size]byte
		var b [256]byte
		if !hmac.Equal(got[:], s.sum(append(b[:0], body...), method, target, &sum)) {
			return Hop{}, false
		}
	}
	var f [6]string
	rest := body
	for k := range f {
		var found bool
		f[k], rest, found = strings.Cut(rest, ";")
		if found != (k < len(f)-1) {
			return Hop{}, false
		}
	}
	h := Hop{From: f[1], To: f[2], Client: f[3], Scheme: f[4]}
	if f[0] != hopVersion || h.From == "" || h.To != to || (h.Scheme != "http" && h.Scheme != "https") {
		return Hop{}, false
	}
	if h.Client != "" {
		if _, err := netip.ParseAddr(h.Client); err != nil {
			return Hop{}, false
		}
	}
	ms, err := strconv.ParseInt(f[5], 10, 64)
	if err != nil {
		return Hop{}, false
	}
	h.At = time.UnixMilli(ms)
	if d := now.Sub(h.At); d > window || d < -window {
		return Hop{}, false
	}
	return h, true
}
