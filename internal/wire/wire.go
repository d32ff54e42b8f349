// Package wire is backhand's wire format: the announcement datagram that
// every node sends its peers each interval, the hop marker that a node puts
// on the requests it forwards, and the keys both are authenticated with,
// derived from the cluster's shared secret.
//
// It knows nothing of peer tables, configs or HTTP handlers: it turns
// announcements into bytes and back, and says why a datagram was refused,
// so that the format can be read, tested and fuzzed on its own.
package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// The announcement wire format, version 1. Big-endian, no floats:
//
//	magic "BH" | version 1 | flags (bit 0: signed)
//	incarnation u64 | sequence u64 | send time u64 (Unix ns)
//	cluster, node, advertise: u8 length + bytes each
//	tags: u8 count, then u8 length + bytes each
//	figures (figuresLen bytes, see appendFigures)
//	HMAC-SHA256 over everything before it (32 bytes, signed datagrams only)
//
// A version-1 decoder rejects any other length: new fields mean a new version.
const (
	wireVersion  = 1
	flagSigned   = 1 << 0
	headerLen    = 4 + 8 + 8 + 8
	figuresLen   = 4 + 4 + 2 + 8 + 8 + 4 + 4 + 4 + 8 + 4 + 1 + 2 + 4
	macLen       = sha256.Size
	minDatagram  = headerLen + 3 + 1 + figuresLen
	figDraining  = 1 << 0
	figAppWeight = 1 << 1
	figAppLoad   = 1 << 2
)

// Size limits of an announcement. Encode refuses, and Decode rejects, any
// field beyond them; the config checks names, tags and the advertised
// address against them so that a valid config always encodes.
const (
	// MaxDatagram is the largest datagram, in bytes: it fits one packet on
	// any sane path MTU.
	MaxDatagram = 1200

	// MaxNameLen is the longest node or cluster name, in bytes.
	MaxNameLen = 64

	// MaxAddrLen is the longest advertised address (host:port), in bytes.
	MaxAddrLen = 255

	// MaxTags is how many tags a node may carry, and MaxTagLen the longest
	// tag, in bytes.
	MaxTags   = 8
	MaxTagLen = 32
)

var wireMagic = [2]byte{'B', 'H'}

// Announcement is one datagram: who sent it, when, and its figures. A node
// encodes its own each interval; a receiver decodes one per datagram, into
// the same Announcement to avoid allocating.
type Announcement struct {
	Incarnation uint64 // random per process start, so restarts reset Seq
	Seq         uint64
	SentAt      int64 // Unix nanoseconds, by the sender's clock
	Cluster     string
	Node        string
	Advertise   string // host:port that peers forward HTTP to
	Tags        []string
	Figures     Figures
}

// Signer signs announcements (Encode) and verifies them (Decode) with one
// key, from AnnounceKey. It keeps one hash to avoid allocating per
// datagram, so each goroutine needs its own. A nil Signer means no key:
// datagrams go unsigned, and only unsigned ones are accepted.
type Signer struct{ mac hash.Hash }

// NewSigner returns a Signer for key, or nil for a nil key.
func NewSigner(key []byte) *Signer {
	if key == nil {
		return nil
	}
	return &Signer{mac: hmac.New(sha256.New, key)}
}

func (s *Signer) sum(dst, msg []byte) []byte {
	s.mac.Reset()
	s.mac.Write(msg)
	return s.mac.Sum(dst)
}

// Encode appends a's datagram to buf, signed when s is not nil. It fails,
// leaving buf as it was, when a field or the whole datagram exceeds the
// size limits.
func (a *Announcement) Encode(buf []byte, s *Signer) ([]byte, error) {
	if err := a.checkSizes(); err != nil {
		return buf, err
	}
	start := len(buf)
	var flags byte
	if s != nil {
		flags |= flagSigned
	}
	buf = append(buf, wireMagic[0], wireMagic[1], wireVersion, flags)
	buf = binary.BigEndian.AppendUint64(buf, a.Incarnation)
	buf = binary.BigEndian.AppendUint64(buf, a.Seq)
	buf = binary.BigEndian.AppendUint64(buf, uint64(a.SentAt))
	buf = appendString(buf, a.Cluster)
	buf = appendString(buf, a.Node)
	buf = appendString(buf, a.Advertise)
	buf = append(buf, byte(len(a.Tags)))
	for _, t := range a.Tags {
		buf = appendString(buf, t)
	}
	buf = appendFigures(buf, &a.Figures)
	if s != nil {
		buf = s.sum(buf, buf[start:])
	}
	if len(buf)-start > MaxDatagram {
		return buf[:start], fmt.Errorf("announcement is %d bytes, more than %d", len(buf)-start, MaxDatagram)
	}
	return buf, nil
}

func (a *Announcement) checkSizes() error {
	switch {
	case !ValidName(a.Node):
		return fmt.Errorf("node name %q must be 1-%d bytes of letters, digits, '.', '-' and '_'", a.Node, MaxNameLen)
	case a.Cluster != "" && !ValidName(a.Cluster):
		return fmt.Errorf("cluster name %q must be 1-%d bytes of letters, digits, '.', '-' and '_'", a.Cluster, MaxNameLen)
	case len(a.Tags) > MaxTags:
		return fmt.Errorf("at most %d tags, got %d", MaxTags, len(a.Tags))
	}
	if a.Advertise != "" {
		if err := CheckAdvertise(a.Advertise); err != nil {
			return fmt.Errorf("advertised address: %v", err)
		}
	}
	for _, t := range a.Tags {
		if !ValidTag(t) {
			return fmt.Errorf("tag %q must be 1-%d printable bytes without spaces", t, MaxTagLen)
		}
	}
	return nil
}

func appendString(buf []byte, s string) []byte {
	return append(append(buf, byte(len(s))), s...)
}

func appendFigures(buf []byte, f *Figures) []byte {
	be := binary.BigEndian
	buf = be.AppendUint32(buf, f.Load1000)
	buf = be.AppendUint32(buf, f.CPUMilli)
	buf = be.AppendUint16(buf, f.CPUIdle1000)
	buf = be.AppendUint64(buf, f.MemTotal)
	buf = be.AppendUint64(buf, f.MemAvail)
	buf = be.AppendUint32(buf, f.Busy)
	buf = be.AppendUint32(buf, f.Capacity)
	buf = be.AppendUint32(buf, f.LatencyMicros)
	buf = be.AppendUint64(buf, f.Forwarded)
	buf = be.AppendUint32(buf, f.Speed)
	var flags byte
	if f.Draining {
		flags |= figDraining
	}
	if f.HasAppWeight {
		flags |= figAppWeight
	}
	if f.HasAppLoad {
		flags |= figAppLoad
	}
	buf = append(buf, flags)
	buf = be.AppendUint16(buf, f.AppWeight)
	return be.AppendUint32(buf, f.AppLoad1000)
}

// Decode parses and verifies datagram b into a. With a nil verifier it
// accepts only unsigned datagrams; with one, only signed datagrams whose MAC
// matches. The MAC is checked before any field is parsed, so nothing an
// attacker without the key sends reaches the parser. ReasonOf tells why an
// error rejected the datagram.
func (a *Announcement) Decode(b []byte, v *Signer) error {
	switch {
	case len(b) > MaxDatagram:
		return reject(Oversized)
	case len(b) < 4:
		return reject(Truncated)
	case b[0] != wireMagic[0] || b[1] != wireMagic[1]:
		return reject(BadMagic)
	case b[2] != wireVersion:
		return reject(BadVersion)
	}
	signed := b[3]&flagSigned != 0
	switch {
	case b[3]&^flagSigned != 0:
		return reject(Malformed)
	case v != nil && !signed:
		return reject(Unsigned)
	case v == nil && signed:
		return reject(AuthMismatch)
	}
	if signed {
		if len(b) < minDatagram+macLen {
			return reject(Truncated)
		}
		body, tag := b[:len(b)-macLen], b[len(b)-macLen:]
		var sum [macLen]byte
		if !hmac.Equal(v.sum(sum[:0], body), tag) {
			return reject(BadMAC)
		}
		b = body
	}
	return a.parse(b)
}

// parse reads the fields of an unsigned (or already verified) datagram.
func (a *Announcement) parse(b []byte) error {
	r := wireReader{b: b}
	r.skip(4)
	a.Incarnation = r.u64()
	a.Seq = r.u64()
	a.SentAt = int64(r.u64())
	a.Cluster = r.str(MaxNameLen)
	a.Node = r.str(MaxNameLen)
	a.Advertise = r.str(MaxAddrLen)
	n := int(r.u8())
	if n > MaxTags {
		return reject(Malformed)
	}
	a.Tags = a.Tags[:0]
	for range n {
		a.Tags = append(a.Tags, r.str(MaxTagLen))
	}
	r.figures(&a.Figures)
	switch {
	case r.invalid:
		return reject(Malformed)
	case r.bad:
		return reject(Truncated)
	}
	if len(r.b) != 0 || !ValidName(a.Node) || (a.Cluster != "" && !ValidName(a.Cluster)) {
		return reject(Malformed)
	}
	for _, t := range a.Tags {
		if !ValidTag(t) {
			return reject(Malformed)
		}
	}
	if a.Advertise != "" && CheckAdvertise(a.Advertise) != nil {
		return reject(BadAdvertise)
	}
	return nil
}

// wireReader reads big-endian fields; past the end it sets bad (and on a
// field out of range, invalid) and returns zeros, so parse checks once at the
// end instead of after every field.
type wireReader struct {
	b       []byte
	bad     bool
	invalid bool
}

func (r *wireReader) take(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *wireReader) skip(n int) { r.take(n) }

func (r *wireReader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *wireReader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *wireReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *wireReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// str reads a length-prefixed string of at most limit bytes; a longer one
// marks the datagram bad rather than being truncated silently.
func (r *wireReader) str(limit int) string {
	n := int(r.u8())
	if n > limit {
		r.invalid = true
		return ""
	}
	return string(r.take(n))
}

func (r *wireReader) figures(f *Figures) {
	f.Load1000 = r.u32()
	f.CPUMilli = r.u32()
	f.CPUIdle1000 = r.u16()
	f.MemTotal = r.u64()
	f.MemAvail = r.u64()
	f.Busy = r.u32()
	f.Capacity = r.u32()
	f.LatencyMicros = r.u32()
	f.Forwarded = r.u64()
	f.Speed = r.u32()
	flags := r.u8()
	f.Draining = flags&figDraining != 0
	f.HasAppWeight = flags&figAppWeight != 0
	f.HasAppLoad = flags&figAppLoad != 0
	f.AppWeight = r.u16()
	f.AppLoad1000 = r.u32()
	if flags&^(figDraining|figAppWeight|figAppLoad) != 0 {
		r.invalid = true
	}
}

// CheckAdvertise checks an advertised address as both its sender (the
// advertise option) and its receivers (Decode) do: peers dial it, and
// reverse_proxy would expand placeholders in it and accept other network
// types (unix/...), so it must be exactly host:port, the host an IP
// address or a DNS name, the port 1-65535, at most MaxAddrLen bytes.
func CheckAdvertise(hostport string) error {
	if len(hostport) > MaxAddrLen {
		return fmt.Errorf("%q is longer than %d bytes", hostport, MaxAddrLen)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", hostport)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%q: port %q must be 1-65535", hostport, port)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.Zone() != "" {
			return fmt.Errorf("%q: an IPv6 zone is meaningful only on this host", hostport)
		}
		return nil
	}
	if !ValidDNSName(host) {
		return fmt.Errorf("%q: %q is neither an IP address nor a DNS name", hostport, host)
	}
	return nil
}

// ValidDNSName reports whether s is a DNS name: dot-separated labels of
// letters, digits, '-' and '_', none empty or longer than 63 bytes, none
// starting or ending with '-'; 253 bytes at most.
func ValidDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c == '-' || c == '_' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')) {
				return false
			}
		}
	}
	return true
}

// ValidName reports whether s may name a node or a cluster: 1-MaxNameLen
// bytes of letters, digits, '.', '-' and '_'. Names travel in hop markers
// (';'-separated) and byCookie's cookie, so nothing else is safe.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '.' || c == '-' || c == '_' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')) {
			return false
		}
	}
	return true
}

// ValidTag reports whether s may be a tag: 1-MaxTagLen bytes of visible
// ASCII, no spaces.
func ValidTag(s string) bool {
	if s == "" || len(s) > MaxTagLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
