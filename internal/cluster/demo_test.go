package cluster

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDemoValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Demo)
		ok     bool
	}{
		{"default", func(*Demo) {}, true},
		{"work 0", func(d *Demo) { d.Work = 0 }, true},
		{"negative work", func(d *Demo) { d.Work = -time.Millisecond }, false},
		{"admin on the application port", func(d *Demo) { d.AdminPort = d.BasePort + 2 }, false},
		{"admin just above the application port", func(d *Demo) { d.AdminPort = d.BasePort + 3 }, true},
		{"admin ports reach the entry port", func(d *Demo) { d.AdminPort = d.BasePort - 2 }, false},
		{"no room for the application port", func(d *Demo) { d.BasePort = 65534 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := DefaultDemo()
			tc.modify(&d)
			if err := d.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// With Work the app sites proxy to the applications on BasePort+2 at each
// node's address; without it they respond themselves.
func TestDemoConfigsAppUpstream(t *testing.T) {
	for _, tc := range []struct {
		work     time.Duration
		upstream []string
		last     []string
	}{
		{20 * time.Millisecond,
			[]string{"127.0.0.1:8082", "127.0.0.2:8082", "127.0.0.3:8082"},
			[]string{"reverse_proxy 127.0.0.1:8082", "reverse_proxy 127.0.0.2:8082", "reverse_proxy 127.0.0.3:8082"}},
		{0,
			[]string{"", "", ""},
			[]string{`respond "served by node1"`, `respond "served by node2"`, `respond "served by node3"`}},
	} {
		d := DefaultDemo()
		d.Work = tc.work
		for i, c := range d.Configs() {
			if c.AppUpstream != tc.upstream[i] {
				t.Errorf("work %v: %s's AppUpstream = %q, want %q", tc.work, c.NodeName(), c.AppUpstream, tc.upstream[i])
			}
			if err := c.Validate(); err != nil {
				t.Errorf("work %v: %s: %v", tc.work, c.NodeName(), err)
			}
			// The app site's last line is its answer.
			site := c.Caddyfile()[strings.Index(c.Caddyfile(), ":8081 {"):]
			site = site[:strings.Index(site, "\n}")]
			lines := strings.Split(site, "\n")
			if got := strings.TrimSpace(lines[len(lines)-1]); got != tc.last[i] {
				t.Errorf("work %v: %s's app site ends with %q, want %q", tc.work, c.NodeName(), got, tc.last[i])
			}
		}
	}
}

func TestNodeConfigValidateAppUpstream(t *testing.T) {
	for _, tc := range []struct {
		upstream string
		ok       bool
	}{
		{"", true},
		{"127.0.0.2:8082", true},
		{"192.0.2.1:8082", false},
		{"127.0.0.2", false},
	} {
		c := NodeConfig{Index: 1, HTTPPort: 1, UDPPort: 1, AdminPort: 2, AppUpstream: tc.upstream}
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("AppUpstream %q: Validate() = %v, want ok %v", tc.upstream, err, tc.ok)
		}
	}
}

// An App answers with the body the tests and the README rely on, with
// and without work, and closes.
func TestApp(t *testing.T) {
	for _, work := range []time.Duration{0, time.Millisecond} {
		a, err := StartApp("127.0.0.1:0", "node7", work, 7)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			resp, err := http.Get("http://" + a.Addr() + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(body) != "served by node7" {
				t.Errorf("work %v: %d %q %v, want 200 \"served by node7\"", work, resp.StatusCode, body, err)
			}
		}
		if err := a.Close(time.Second); err != nil {
			t.Errorf("work %v: %v", work, err)
		}
		if _, err := http.Get("http://" + a.Addr() + "/"); err == nil {
			t.Errorf("work %v: still answering after Close", work)
		}
	}
}
