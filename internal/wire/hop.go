package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HopHeader is the request header that marks a request a backhand node
// forwarded to a peer. The receiving node serves it itself and never
// forwards it again, which is what prevents loops; the marker also carries
// the original client's address, so the receiving node can log the real
// client. It is authenticated with a key derived from the cluster key and
// valid for hopWindow, so a client cannot forge one: a forged or expired
// marker is stripped and the request is balanced as any other. Without a
// cluster key (insecure_no_key) markers are not authenticated; a forged one
// can then only make a node serve a request itself.
const HopHeader = "Backhand-Hop"

const (
	hopVersion = "v1"
	hopWindow  = 30 * time.Second
)

// HopSigner signs and checks hop markers with one key, derived from the
// cluster's shared secret. It pools its HMAC states: every forwarded
// request needs one, and a fresh HMAC hashes the key twice before it
// hashes the marker. It is safe for concurrent use. A nil HopSigner (no
// cluster key) makes and accepts unsigned markers.
type HopSigner struct {
	macs sync.Pool // of hash.Hash
}

// NewHopSigner returns the hop marker signer keyed by the cluster's shared
// secret, or nil without a secret.
func NewHopSigner(secret []byte) *HopSigner {
	if len(secret) == 0 {
		return nil
	}
	key := deriveKey(secret, hopLabel)
	return &HopSigner{macs: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

// HopMarker returns the value of HopHeader for a request that node
// forwards on behalf of client (an IP address, or empty) at now:
// "v1;<node>;<client ip>;<unix ms>;<MAC>", the MAC being the first 16
// bytes of HMAC-SHA256 over the rest, in hex ("-" without a key). Every
// forwarded request makes one, so it is built in one buffer.
func HopMarker(s *HopSigner, node, client string, now time.Time) string {
	var buf [160]byte
	b := append(buf[:0], hopVersion+";"...)
	b = append(b, node...)
	b = append(b, ';')
	b = append(b, client...)
	b = append(b, ';')
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, ';')
	if s == nil {
		return string(append(b, '-'))
	}
	var sum [sha256.Size]byte
	return string(hex.AppendEncode(b, s.sum(b[:len(b)-1], &sum)))
}

// sum is the marker MAC of body: the first hopMACLen bytes of its HMAC.
func (s *HopSigner) sum(body []byte, out *[sha256.Size]byte) []byte {
	m := s.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(body)
	m.Sum(out[:0])
	s.macs.Put(m)
	return out[:hopMACLen]
}

const hopMACLen = 16 // bytes of the HMAC a marker keeps

// CheckHop verifies a marker made by HopMarker with the same key and at
// most hopWindow (30s) from now, and returns the node that forwarded the
// request and the original client's address.
func CheckHop(s *HopSigner, marker string, now time.Time) (from, client string, ok bool) {
	i := strings.LastIndexByte(marker, ';')
	if i < 0 {
		return "", "", false
	}
	body, mac := marker[:i], marker[i+1:]
	if s == nil {
		if mac != "-" {
			return "", "", false
		}
	} else {
		var got [hopMACLen]byte
		if len(mac) != 2*hopMACLen {
			return "", "", false
		}
		if _, err := hex.Decode(got[:], []byte(mac)); err != nil {
			return "", "", false
		}
		var sum [sha256.Size]byte
		if !hmac.Equal(got[:], s.sum([]byte(body), &sum)) {
			return "", "", false
		}
	}
	version, rest, _ := strings.Cut(body, ";")
	from, rest, _ = strings.Cut(rest, ";")
	client, stamp, found := strings.Cut(rest, ";")
	if !found || version != hopVersion || from == "" {
		return "", "", false
	}
	ms, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		return "", "", false
	}
	if d := now.Sub(time.UnixMilli(ms)); d > hopWindow || d < -hopWindow {
		return "", "", false
	}
	return from, client, true
}
