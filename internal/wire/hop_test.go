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
	m := HopMarker(key, "node1", "203.0.113.7", at)

	if from, client, ok := CheckHop(key, m, at.Add(time.Second)); !ok || from != "node1" || client != "203.0.113.7" {
		t.Fatalf("valid marker: from %q client %q ok %v", from, client, ok)
	}
	// signed makes a correctly signed marker of any body, so that the
	// parsing after the MAC check is tested too.
	signed := func(body string) string {
		var sum [sha256.Size]byte
		return body + ";" + hex.EncodeToString(key.sum([]byte(body), &sum))
	}
	bad := map[string]string{
		"signed v2":          signed("v2;node1;x;1800000000000"),
		"signed empty node":  signed("v1;;x;1800000000000"),
		"signed extra field": signed("v1;node1;x;y;1800000000000"),
		"signed bad time":    signed("v1;node1;x;soon"),
		"signed short":       signed("v1;node1"),
		"short MAC":          m[:len(m)-2],
		"non-hex MAC":        m[:len(m)-2] + "zz",
		"wrong key":          m,
		"tampered client":    strings.Replace(m, "203.0.113.7", "203.0.113.8", 1),
		"tampered node":      strings.Replace(m, "node1", "node2", 1),
		"unsigned forgery":   "v1;node1;203.0.113.7;1800000000000;-",
		"no MAC":             "v1;node1;203.0.113.7;1800000000000",
		"garbage":            "hello",
		"empty":              "",
		"future version MAC": HopMarker(key, "node1", "x", at)[:0] + "v2;node1;x;1800000000000;00",
	}
	for name, marker := range bad {
		k := key
		if name == "wrong key" {
			k = other
		}
		if _, _, ok := CheckHop(k, marker, at); ok {
			t.Errorf("%s: accepted %q", name, marker)
		}
	}
	if _, _, ok := CheckHop(key, m, at.Add(hopWindow+time.Second)); ok {
		t.Error("expired marker accepted")
	}
	// Without a cluster key, markers are unsigned and accepted as such.
	if _, _, ok := CheckHop(nil, HopMarker(nil, "n", "c", at), at); !ok {
		t.Error("unsigned marker rejected by a node without a key")
	}
}

func BenchmarkHopMarker(b *testing.B) {
	s := NewHopSigner([]byte("cluster-secret-for-the-test"))
	at := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		m := HopMarker(s, "node1", "203.0.113.7", at)
		if _, _, ok := CheckHop(s, m, at); !ok {
			b.Fatal("rejected")
		}
	}
}
