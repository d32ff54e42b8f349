package bench

import (
	"strings"
	"testing"
)

// Only the informed profile tells a node what the harness knows; the peers
// profile balances on the node with the directive alone, and lets bypass
// traffic through unbalanced but counted.
func TestNodeCaddyfileProfiles(t *testing.T) {
	cfg := AppConfig{Addr: "127.0.0.11:18000", Workers: 8, Speed: 2}
	informedOnly := []string{"capacity 8", "speed 2000", "app_report url http://127.0.0.11:18000/__report"}
	for _, tc := range []struct {
		p        Profile
		bypass   bool
		has, not []string
	}{
		{ProfileMinimal, false, []string{"tags app", "\tbackhand_track\n", "reverse_proxy 127.0.0.11:18000"}, append([]string{"\tbackhand\n"}, informedOnly...)},
		{ProfileInformed, false, append([]string{"tags app", "\tbackhand_track\n"}, informedOnly...), []string{"\tbackhand\n"}},
		{ProfilePeers, false, []string{"tags app", "\tbackhand\n\treverse_proxy 127.0.0.11:18000"}, append([]string{"backhand_track"}, informedOnly...)},
		{ProfilePeers, true, []string{"backhand_track @bypass", "backhand @balanced", "@balanced not header " + bypassHeader}, informedOnly},
	} {
		cf := nodeCaddyfile(1, cfg, "k", 4, 3, tc.p, tc.bypass)
		for _, s := range tc.has {
			if !strings.Contains(cf, s) {
				t.Errorf("%s (bypass %v) lacks %q:\n%s", tc.p, tc.bypass, s, cf)
			}
		}
		for _, s := range tc.not {
			if strings.Contains(cf, s) {
				t.Errorf("%s (bypass %v) has %q:\n%s", tc.p, tc.bypass, s, cf)
			}
		}
	}
}

// Every default contender names a node profile that fits its kind.
func TestContendersCheck(t *testing.T) {
	for _, c := range DefaultContenders() {
		if err := c.check(); err != nil {
			t.Error(err)
		}
	}
	if err := (Contender{Name: "x", Kind: KindBackhand}).check(); err == nil {
		t.Error("a contender without a node profile passed")
	}
}
