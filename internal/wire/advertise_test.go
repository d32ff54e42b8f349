package wire

import "testing"

// An advertised address is exactly host:port with an IP address or a DNS
// name: what reverse_proxy would read as another network type or expand
// as a placeholder (the audit's SSRF inputs) is refused by the sender's
// check and by Decode, counted as bad_advertise.
func TestCheckAdvertise(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.5:8080", true},
		{"[2001:db8::1]:80", true},
		{"www-1.example.com:443", true},
		{"node_2.local:80", true},
		{"unix//var/run/docker.sock", false},
		{"unix//var/run/docker.sock:80", false},
		{"{http.request.header.X-Dial}", false},
		{"{http.request.header.X-Dial}:80", false},
		{"tcp/10.0.0.5:80", false},
		{"10.0.0.5", false},
		{"10.0.0.5:0", false},
		{"10.0.0.5:65536", false},
		{":80", false},
		{"[fe80::1%eth0]:80", false},
		{"a b:80", false},
		{"-bad.example:80", false},
	} {
		if err := CheckAdvertise(tt.addr); (err == nil) != tt.ok {
			t.Errorf("CheckAdvertise(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
		a := Announcement{Cluster: "c", Node: "n", Advertise: tt.addr}
		// Encode refuses what Decode would refuse, so the two agree.
		b, err := a.Encode(nil, nil)
		if (err == nil) != tt.ok {
			t.Errorf("Encode with advertise %q: %v, want ok %v", tt.addr, err, tt.ok)
		}
		if !tt.ok {
			// Build the datagram as a hostile sender would: a valid one with
			// the address spliced in.
			good := Announcement{Cluster: "c", Node: "n", Advertise: "1.2.3.4:5"}
			if b, err = good.Encode(nil, nil); err != nil {
				t.Fatal(err)
			}
			b = spliceAdvertise(t, b, "1.2.3.4:5", tt.addr)
		}
		var got Announcement
		err = got.Decode(b, nil)
		switch {
		case tt.ok && err != nil:
			t.Errorf("Decode with advertise %q: %v", tt.addr, err)
		case !tt.ok && ReasonOf(err) != BadAdvertise:
			t.Errorf("Decode with advertise %q: %v, want bad_advertise", tt.addr, err)
		}
	}
}

// spliceAdvertise replaces the length-prefixed string old in an unsigned
// datagram b by s.
func spliceAdvertise(t *testing.T, b []byte, old, s string) []byte {
	t.Helper()
	for i := 0; i+1+len(old) <= len(b); i++ {
		if int(b[i]) == len(old) && string(b[i+1:i+1+len(old)]) == old {
			out := append([]byte{}, b[:i]...)
			out = append(out, byte(len(s)))
			out = append(out, s...)
			return append(out, b[i+1+len(old):]...)
		}
	}
	t.Fatalf("%q not found in the datagram", old)
	return nil
}
