package wire

import "testing"

// Names and tags: Encode refuses exactly what Decode rejects (an empty tag
// was once decoded but not encodable), and a node name cannot carry the
// hop marker's separator.
func TestNamesAndTagsBothWays(t *testing.T) {
	for _, tt := range []struct {
		name string
		a    Announcement
		ok   bool
	}{
		{"plain", Announcement{Cluster: "c", Node: "web-1.dc_2"}, true},
		{"semicolon in the node name", Announcement{Cluster: "c", Node: "web;1"}, false},
		{"space in the node name", Announcement{Cluster: "c", Node: "web 1"}, false},
		{"semicolon in the cluster name", Announcement{Cluster: "c;d", Node: "n"}, false},
		{"empty tag", Announcement{Cluster: "c", Node: "n", Tags: []string{"app", ""}}, false},
		{"tag with a space", Announcement{Cluster: "c", Node: "n", Tags: []string{"a b"}}, false},
		{"tags", Announcement{Cluster: "c", Node: "n", Tags: []string{"app", "php;8"}}, true},
	} {
		_, err := tt.a.Encode(nil, nil)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Encode: %v, want ok %v", tt.name, err, tt.ok)
		}
		// The same announcement built byte by byte, as a hostile sender would.
		b := appendRaw(&tt.a)
		var got Announcement
		if err := got.Decode(b, nil); (err == nil) != tt.ok || (!tt.ok && ReasonOf(err) != Malformed) {
			t.Errorf("%s: Decode: %v, want ok %v (else malformed)", tt.name, err, tt.ok)
		}
	}
}

// appendRaw encodes a without Encode's checks.
func appendRaw(a *Announcement) []byte {
	b := append([]byte{}, wireMagic[0], wireMagic[1], wireVersion, 0)
	b = appendU64(b, a.Incarnation)
	b = appendU64(b, a.Seq)
	b = appendU64(b, uint64(a.SentAt))
	b = appendString(b, a.Cluster)
	b = appendString(b, a.Node)
	b = appendString(b, a.Advertise)
	b = append(b, byte(len(a.Tags)))
	for _, t := range a.Tags {
		b = appendString(b, t)
	}
	return appendFigures(b, &a.Figures)
}

func appendU64(b []byte, v uint64) []byte {
	for i := 7; i >= 0; i-- {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}
