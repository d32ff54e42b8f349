package wire

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"reflect"
	"testing"
	"time"
)

var testKey = AnnounceKey([]byte("0123456789abcdef-test-secret"))

func sampleAnnouncement() Announcement {
	return Announcement{
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
		b, err := in.Encode(nil, NewSigner(key))
		if err != nil {
			t.Fatal(err)
		}
		var out Announcement
		if err := out.Decode(b, NewSigner(key)); err != nil {
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

// The bytes on the wire, the derived keys and the hop marker are pinned:
// nodes of different versions must keep understanding each other, so any
// change to them needs a new version, not an edit here.
func TestWireGolden(t *testing.T) {
	a := sampleAnnouncement()
	signed, _ := a.Encode(nil, NewSigner(testKey))
	unsigned, _ := a.Encode(nil, nil)
	secret := []byte("0123456789abcdef-test-secret")
	const body = "424801%02x1122334455667788000000000000002a18ebe51f867780000464656d6f117765622d312e6578616d706c652e6e65740d31302e302e302e343a38303830020363676906696d61676573000005f000001f4002c9000000080000000000000003000000000000001100000100000030390000000000000063000004120702ee0000012c"
	for _, tt := range []struct{ name, got, want string }{
		{"signed", hex.EncodeToString(signed), fmt.Sprintf(body, 1) + "5bde15a02e5e37824dfb37513945f22666a4fdb8ec9ee5e4dce5ea4fd206154f"},
		{"unsigned", hex.EncodeToString(unsigned), fmt.Sprintf(body, 0)},
		{"announce key", hex.EncodeToString(AnnounceKey(secret)), "49db7ac776f57e4bb2712cb61e6fbfa05af79f9ff1c07c4924e0af2f2407369a"},
		{"cookie key", hex.EncodeToString(CookieKey(secret)), "b3ed949765816c9c20f3af3b2afb4af732fddb1e32fa303bb622dace7b3bd525"},
		{"hop marker", NewHopSigner(secret).Mark(Hop{From: "node1", To: "node2", Client: "203.0.113.7", Scheme: "https", At: time.UnixMilli(1800000000000)}, "GET", "/p?q=1"), "v2;node1;node2;203.0.113.7;https;1800000000000;1516b5b71f64b9e239555b90f461f9e5"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, tt.got, tt.want)
		}
	}
}

// The reasons' names label metrics and the status page.
func TestReasonNames(t *testing.T) {
	var got []string
	for r := range NumReasons + 1 {
		got = append(got, r.String())
	}
	want := []string{"truncated", "oversized", "bad_magic", "bad_version", "malformed", "unsigned", "auth_mismatch", "bad_mac", "bad_advertise", "unknown"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// Every single-bit change anywhere in a signed datagram must be rejected:
// the MAC covers every byte, and the header bytes are checked before it.
func TestWireTamperedByteRejected(t *testing.T) {
	a := sampleAnnouncement()
	b, err := a.Encode(nil, NewSigner(testKey))
	if err != nil {
		t.Fatal(err)
	}
	v := NewSigner(testKey)
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			var out Announcement
			if err := out.Decode(c, v); err == nil {
				t.Fatalf("flipping bit %#x of byte %d was accepted", bit, i)
			}
		}
	}
}

func TestWireRejections(t *testing.T) {
	a := sampleAnnouncement()
	signed, _ := a.Encode(nil, NewSigner(testKey))
	unsigned, _ := a.Encode(nil, nil)
	otherKey := AnnounceKey([]byte("another-secret-of-enough-length"))
	tests := []struct {
		name string
		b    []byte
		key  []byte
		want Reason
	}{
		{"wrong key", signed, otherKey, BadMAC},
		{"unsigned to a keyed node", unsigned, testKey, Unsigned},
		{"signed to a keyless node", signed, nil, AuthMismatch},
		{"empty", nil, testKey, Truncated},
		{"header only", signed[:4], testKey, Truncated},
		{"oversized", make([]byte, MaxDatagram+1), testKey, Oversized},
		{"bad magic", append([]byte("XX"), signed[2:]...), testKey, BadMagic},
		{"future version", append([]byte{'B', 'H', 2}, signed[3:]...), testKey, BadVersion},
		{"unknown flag", append([]byte{'B', 'H', 1, 0x81}, signed[4:]...), testKey, Malformed},
		{"trailing byte (unsigned)", append(bytes.Clone(unsigned), 0), nil, Malformed},
		{"cut short (unsigned)", unsigned[:len(unsigned)-1], nil, Truncated},
		{"cut short (signed)", signed[:len(signed)-1], testKey, BadMAC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out Announcement
			err := out.Decode(tt.b, NewSigner(tt.key))
			if err == nil {
				t.Fatal("accepted")
			}
			if got := ReasonOf(err); got != tt.want {
				t.Errorf("reason %v, want %v", got, tt.want)
			}
		})
	}
}

// Every prefix of a datagram is rejected, never accepted or panicking.
func TestWireEveryTruncationRejected(t *testing.T) {
	a := sampleAnnouncement()
	for _, key := range [][]byte{nil, testKey} {
		b, _ := a.Encode(nil, NewSigner(key))
		for n := range len(b) {
			var out Announcement
			if err := out.Decode(b[:n], NewSigner(key)); err == nil {
				t.Fatalf("signed=%v: prefix of %d/%d bytes accepted", key != nil, n, len(b))
			}
		}
	}
}

func TestWireEncodeLimits(t *testing.T) {
	a := sampleAnnouncement()
	a.Node = ""
	if _, err := a.Encode(nil, nil); err == nil {
		t.Error("empty node name encoded")
	}
	a = sampleAnnouncement()
	a.Tags = make([]string, MaxTags+1)
	if _, err := a.Encode(nil, nil); err == nil {
		t.Error("too many tags encoded")
	}
	a = sampleAnnouncement()
	a.Advertise = string(bytes.Repeat([]byte("a"), MaxAddrLen+1))
	if _, err := a.Encode(nil, nil); err == nil {
		t.Error("overlong advertise encoded")
	}
}

func FuzzDecode(f *testing.F) {
	a := sampleAnnouncement()
	signed, _ := a.Encode(nil, NewSigner(testKey))
	unsigned, _ := a.Encode(nil, nil)
	f.Add(signed)
	f.Add(unsigned)
	f.Add([]byte("BH\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out Announcement
		if err := out.Decode(b, nil); err == nil {
			// Whatever is accepted must encode back to the same bytes:
			// the format has exactly one encoding per announcement.
			again, err := out.Encode(nil, nil)
			if err != nil {
				t.Fatalf("accepted datagram does not re-encode: %v", err)
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
			}
		}
		_ = out.Decode(b, NewSigner(testKey))
	})
}

func BenchmarkEncode(b *testing.B) {
	a := sampleAnnouncement()
	s := NewSigner(testKey)
	buf := make([]byte, 0, MaxDatagram)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = a.Encode(buf[:0], s)
	}
	b.ReportMetric(float64(len(buf)), "bytes/datagram")
}

func BenchmarkDecodeVerify(b *testing.B) {
	a := sampleAnnouncement()
	dgram, _ := a.Encode(nil, NewSigner(testKey))
	v := NewSigner(testKey)
	var out Announcement
	b.ReportAllocs()
	for b.Loop() {
		if err := out.Decode(dgram, v); err != nil {
			b.Fatal(err)
		}
	}
}
