package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestHopMarker(t *testing.T) {
	key := NewHopSigner([]byte("cluster-secret-for-the-test"))
	other := NewHopSigner([]byte("another-cluster-secret-xx"))
	at := time.Unix(1_800_000_000, 0)
	const window = 10 * time.Second
	hop := Hop{From: "node1", To: "node2", Client: "203.0.113.7", Scheme: "https", At: at}
	m := key.Mark(hop, "GET", "/p?q=1")

	got, ok := key.Check(m, "node2", "GET", "/p?q=1", at.Add(time.Second), window)
	if !ok || got != hop {
		t.Fatalf("valid marker: %+v ok %v, want %+v", got, ok, hop)
	}
	// signed makes a correctly signed marker of any body for GET /p?q=1, so
	// that the parsing after the MAC check is tested too.
	signed := func(body string) string {
		var sum [sha256.Size]byte
		return body + ";" + hex.EncodeToString(key.sum([]byte(body), "GET", "/p?q=1", &sum))
	}
	bad := map[string]string{
		"signed v1":            signed("v1;node1;203.0.113.7;1800000000000"),
		"signed empty from":    signed("v2;;node2;203.0.113.7;https;1800000000000"),
		"signed extra field":   signed("v2;node1;node2;203.0.113.7;https;x;1800000000000"),
		"signed bad time":      signed("v2;node1;node2;203.0.113.7;https;soon"),
		"signed short":         signed("v2;node1;node2"),
		"signed client not IP": signed("v2;node1;node2;not an ip;https;1800000000000"),
		"signed bad scheme":    signed("v2;node1;node2;203.0.113.7;ftp;1800000000000"),
		"short MAC":            m[:len(m)-2],
		"non-hex MAC":          m[:len(m)-2] + "zz",
		"wrong key":            m,
		"tampered client":      strings.Replace(m, "203.0.113.7", "203.0.113.8", 1),
		"tampered from":        strings.Replace(m, "node1", "node3", 1),
		"tampered to":          strings.Replace(m, "node2", "node3", 1),
		"unsigned forgery":     "v2;node1;node2;203.0.113.7;https;1800000000000;-",
		"no MAC":               "v2;node1;node2;203.0.113.7;https;1800000000000",
		"garbage":              "hello",
		"empty":                "",
	}
	for name, marker := range bad {
		k := key
		if name == "wrong key" {
			k = other
		}
		if _, ok := k.Check(marker, "node2", "GET", "/p?q=1", at, window); ok {
			t.Errorf("%s: accepted %q", name, marker)
		}
	}
	// A marker authorises one request at one node, for a short while.
	for name, check := range map[string]func() bool{
		"another node":   func() bool { _, ok := key.Check(m, "node3", "GET", "/p?q=1", at, window); return ok },
		"another method": func() bool { _, ok := key.Check(m, "node2", "POST", "/p?q=1", at, window); return ok },
		"another target": func() bool { _, ok := key.Check(m, "node2", "GET", "/admin", at, window); return ok },
		"expired": func() bool {
			_, ok := key.Check(m, "node2", "GET", "/p?q=1", at.Add(window+time.Second), window)
			return ok
		},
		"from the future": func() bool {
			_, ok := key.Check(m, "node2", "GET", "/p?q=1", at.Add(-window-time.Second), window)
			return ok
		},
	} {
		if check() {
			t.Errorf("marker accepted for %s", name)
		}
	}
	// Without a cluster key, markers are unsigned and accepted as such.
	var none *HopSigner
	if _, ok := none.Check(none.Mark(hop, "GET", "/"), "node2", "GET", "/", at, window); !ok {
		t.Error("unsigned marker rejected by a node without a key")
	}
}

func BenchmarkHopMarker(b *testing.B) {
	s := NewHopSigner([]byte("cluster-secret-for-the-test"))
	at := time.Now()
	hop := Hop{From: "node1", To: "node2", Client: "203.0.113.7", Scheme: "http", At: at}
	b.ReportAllocs()
	for b.Loop() {
		m := s.Mark(hop, "GET", "/index.php?page=1")
		if _, ok := s.Check(m, "node2", "GET", "/index.php?page=1", at, 10*time.Second); !ok {
			b.Fatal("rejected")
		}
	}
}
