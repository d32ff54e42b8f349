package backhand

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

var testKey = announceKey([]byte("0123456789abcdef-test-secret"))

func sampleAnnouncement() announcement {
	return announcement{
		Incarnation: 0x1122334455667788,
		Seq:         42,
		SentAt:      time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC).UnixNano(),
		Cluster:     "demo",
		Node:        "web-1.example.net",
		Advertise:   "10.0.0.4:8080",
		Tags:        []string{"cgi", "images"},
		Figures: Figures{
			Load1000: 1520, CPUMilli: 8000, CPUIdle1000: 713,
			MemTotal: 32 << 30, MemAvail: 12 << 30,
			Busy: 17, Capacity: 256, LatencyMicros: 12345, Forwarded: 99,
			Speed: 1042, Draining: true,
			AppWeight: 750, HasAppWeight: true, AppLoad1000: 300, HasAppLoad: true,
		},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		in := sampleAnnouncement()
		b, err := in.encode(nil, newSigner(key))
		if err != nil {
			t.Fatal(err)
		}
		var out announcement
		if err := out.decode(b, newSigner(key)); err != nil {
			t.Fatalf("signed=%v: %v", key != nil, err)
		}
		if !reflect.DeepEqual(in, out) {
			t.Errorf("signed=%v: round trip changed the announcement:\n in %+v\nout %+v", key != nil, in, out)
		}
		if len(b) > 512 {
			t.Errorf("a typical announcement is %d bytes, want <= 512", len(b))
		}
	}
}

// Every single-bit change anywhere in a signed datagram must be rejected:
// the MAC covers every byte, and the header bytes are checked before it.
func TestWireTamperedByteRejected(t *testing.T) {
	a := sampleAnnouncement()
	b, err := a.encode(nil, newSigner(testKey))
	if err != nil {
		t.Fatal(err)
	}
	v := newSigner(testKey)
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			var out announcement
			if err := out.decode(c, v); err == nil {
				t.Fatalf("flipping bit %#x of byte %d was accepted", bit, i)
			}
		}
	}
}

func TestWireRejections(t *testing.T) {
	a := sampleAnnouncement()
	signed, _ := a.encode(nil, newSigner(testKey))
	unsigned, _ := a.encode(nil, nil)
	otherKey := announceKey([]byte("another-secret-of-enough-length"))
	tests := []struct {
		name string
		b    []byte
		key  []byte
		want rejectReason
	}{
		{"wrong key", signed, otherKey, rejectBadMAC},
		{"unsigned to a keyed node", unsigned, testKey, rejectUnsigned},
		{"signed to a keyless node", signed, nil, rejectAuthMismatch},
		{"empty", nil, testKey, rejectTruncated},
		{"header only", signed[:4], testKey, rejectTruncated},
		{"oversized", make([]byte, maxDatagram+1), testKey, rejectOversized},
		{"bad magic", append([]byte("XX"), signed[2:]...), testKey, rejectBadMagic},
		{"future version", append([]byte{'B', 'H', 2}, signed[3:]...), testKey, rejectBadVersion},
		{"unknown flag", append([]byte{'B', 'H', 1, 0x81}, signed[4:]...), testKey, rejectMalformed},
		{"trailing byte (unsigned)", append(bytes.Clone(unsigned), 0), nil, rejectMalformed},
		{"cut short (unsigned)", unsigned[:len(unsigned)-1], nil, rejectTruncated},
		{"cut short (signed)", signed[:len(signed)-1], testKey, rejectBadMAC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out announcement
			err := out.decode(tt.b, newSigner(tt.key))
			if err == nil {
				t.Fatal("accepted")
			}
			if got := reasonOf(err); got != tt.want {
				t.Errorf("reason %v, want %v", got, tt.want)
			}
		})
	}
}

// Every prefix of a datagram is rejected, never accepted or panicking.
func TestWireEveryTruncationRejected(t *testing.T) {
	a := sampleAnnouncement()
	for _, key := range [][]byte{nil, testKey} {
		b, _ := a.encode(nil, newSigner(key))
		for n := range len(b) {
			var out announcement
			if err := out.decode(b[:n], newSigner(key)); err == nil {
				t.Fatalf("signed=%v: prefix of %d/%d bytes accepted", key != nil, n, len(b))
			}
		}
	}
}

func TestWireEncodeLimits(t *testing.T) {
	a := sampleAnnouncement()
	a.Node = ""
	if _, err := a.encode(nil, nil); err == nil {
		t.Error("empty node name encoded")
	}
	a = sampleAnnouncement()
	a.Tags = make([]string, maxTags+1)
	if _, err := a.encode(nil, nil); err == nil {
		t.Error("too many tags encoded")
	}
	a = sampleAnnouncement()
	a.Advertise = string(bytes.Repeat([]byte("a"), maxAddrLen+1))
	if _, err := a.encode(nil, nil); err == nil {
		t.Error("overlong advertise encoded")
	}
}

func FuzzDecode(f *testing.F) {
	a := sampleAnnouncement()
	signed, _ := a.encode(nil, newSigner(testKey))
	unsigned, _ := a.encode(nil, nil)
	f.Add(signed)
	f.Add(unsigned)
	f.Add([]byte("BH\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out announcement
		if err := out.decode(b, nil); err == nil {
			// Whatever is accepted must encode back to the same bytes:
			// the format has exactly one encoding per announcement.
			again, err := out.encode(nil, nil)
			if err != nil {
				t.Fatalf("accepted datagram does not re-encode: %v", err)
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
			}
		}
		_ = out.decode(b, newSigner(testKey))
	})
}

func BenchmarkEncode(b *testing.B) {
	a := sampleAnnouncement()
	s := newSigner(testKey)
	buf := make([]byte, 0, maxDatagram)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = a.encode(buf[:0], s)
	}
	b.ReportMetric(float64(len(buf)), "bytes/datagram")
}

func BenchmarkDecodeVerify(b *testing.B) {
	a := sampleAnnouncement()
	dgram, _ := a.encode(nil, newSigner(testKey))
	v := newSigner(testKey)
	var out announcement
	b.ReportAllocs()
	for b.Loop() {
		if err := out.decode(dgram, v); err != nil {
			b.Fatal(err)
		}
	}
}
