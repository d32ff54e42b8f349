package backhand

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
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
	wireVersion   = 1
	flagSigned    = 1 << 0
	headerLen     = 4 + 8 + 8 + 8
	figuresLen    = 4 + 4 + 2 + 8 + 8 + 4 + 4 + 4 + 8 + 4 + 1 + 2 + 4
	macLen        = sha256.Size
	minDatagram   = headerLen + 3 + 1 + figuresLen
	maxDatagram   = 1200 // fits one packet on any sane path MTU
	maxNameLen    = 64   // node and cluster names
	maxAddrLen    = 255
	maxTags       = 8
	maxTagLen     = 32
	figDraining   = 1 << 0
	figAppWeight  = 1 << 1
	figAppLoad    = 1 << 2
	announceLabel = "caddy-backhand announce v1"
)

var wireMagic = [2]byte{'B', 'H'}

// announcement is one decoded datagram: who sent it, when, and its figures.
type announcement struct {
	Incarnation uint64 // random per process start, so restarts reset Seq
	Seq         uint64
	SentAt      int64 // Unix nanoseconds, by the sender's clock
	Cluster     string
	Node        string
	Advertise   string // host:port that peers forward HTTP to
	Tags        []string
	Figures     Figures
}

// announceKey derives the key that signs announcements from the shared
// secret, so the same secret can key other things (the hop marker) without
// one MAC being valid for the other.
func announceKey(secret []byte) []byte {
	if len(secret) == 0 {
		return nil
	}
	return deriveKey(secret, announceLabel)
}

// deriveKey is HMAC-SHA256(secret, label): one key per use of the secret.
func deriveKey(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// signer computes announcement MACs. It keeps one hash to avoid allocating
// per datagram, so each goroutine needs its own.
type signer struct{ mac hash.Hash }

// newSigner returns nil for a nil key: datagrams go unsigned.
func newSigner(key []byte) *signer {
	if key == nil {
		return nil
	}
	return &signer{mac: hmac.New(sha256.New, key)}
}

func (s *signer) sum(dst, msg []byte) []byte {
	s.mac.Reset()
	s.mac.Write(msg)
	return s.mac.Sum(dst)
}

// encode appends a's datagram to buf, signed when s is not nil.
func (a *announcement) encode(buf []byte, s *signer) ([]byte, error) {
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
	if len(buf)-start > maxDatagram {
		return buf[:start], fmt.Errorf("announcement is %d bytes, more than %d", len(buf)-start, maxDatagram)
	}
	return buf, nil
}

func (a *announcement) checkSizes() error {
	switch {
	case a.Node == "" || len(a.Node) > maxNameLen:
		return fmt.Errorf("node name must be 1-%d bytes, got %d", maxNameLen, len(a.Node))
	case len(a.Cluster) > maxNameLen:
		return fmt.Errorf("cluster name must be at most %d bytes, got %d", maxNameLen, len(a.Cluster))
	case len(a.Advertise) > maxAddrLen:
		return fmt.Errorf("advertised address must be at most %d bytes, got %d", maxAddrLen, len(a.Advertise))
	case len(a.Tags) > maxTags:
		return fmt.Errorf("at most %d tags, got %d", maxTags, len(a.Tags))
	}
	for _, t := range a.Tags {
		if t == "" || len(t) > maxTagLen {
			return fmt.Errorf("tag %q must be 1-%d bytes", t, maxTagLen)
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

// errReject is a datagram rejected for a reason that the peer table counts.
type errReject struct{ reason rejectReason }

func (e errReject) Error() string { return "announcement rejected: " + e.reason.String() }

func reject(r rejectReason) error { return errReject{r} }

// reasonOf returns the rejection reason carried by err, or rejectMalformed.
func reasonOf(err error) rejectReason {
	var e errReject
	if errors.As(err, &e) {
		return e.reason
	}
	return rejectMalformed
}

// decode parses and verifies datagram b into a. With a nil verifier it
// accepts only unsigned datagrams; with one, only signed datagrams whose MAC
// matches. The MAC is checked before any field is parsed, so nothing an
// attacker without the key sends reaches the parser.
func (a *announcement) decode(b []byte, v *signer) error {
	switch {
	case len(b) > maxDatagram:
		return reject(rejectOversized)
	case len(b) < 4:
		return reject(rejectTruncated)
	case b[0] != wireMagic[0] || b[1] != wireMagic[1]:
		return reject(rejectBadMagic)
	case b[2] != wireVersion:
		return reject(rejectBadVersion)
	}
	signed := b[3]&flagSigned != 0
	switch {
	case b[3]&^flagSigned != 0:
		return reject(rejectMalformed)
	case v != nil && !signed:
		return reject(rejectUnsigned)
	case v == nil && signed:
		return reject(rejectAuthMismatch)
	}
	if signed {
		if len(b) < minDatagram+macLen {
			return reject(rejectTruncated)
		}
		body, tag := b[:len(b)-macLen], b[len(b)-macLen:]
		var sum [macLen]byte
		if !hmac.Equal(v.sum(sum[:0], body), tag) {
			return reject(rejectBadMAC)
		}
		b = body
	}
	return a.parse(b)
}

// parse reads the fields of an unsigned (or already verified) datagram.
func (a *announcement) parse(b []byte) error {
	r := wireReader{b: b}
	r.skip(4)
	a.Incarnation = r.u64()
	a.Seq = r.u64()
	a.SentAt = int64(r.u64())
	a.Cluster = r.str(maxNameLen)
	a.Node = r.str(maxNameLen)
	a.Advertise = r.str(maxAddrLen)
	n := int(r.u8())
	if n > maxTags {
		return reject(rejectMalformed)
	}
	a.Tags = a.Tags[:0]
	for range n {
		a.Tags = append(a.Tags, r.str(maxTagLen))
	}
	r.figures(&a.Figures)
	switch {
	case r.invalid:
		return reject(rejectMalformed)
	case r.bad:
		return reject(rejectTruncated)
	}
	if len(r.b) != 0 || a.Node == "" {
		return reject(rejectMalformed)
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
