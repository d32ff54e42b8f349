package vip

import (
	"slices"
	"testing"
)

func TestMissingIn(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   []string
		err    bool
	}{
		{"Name:\tcaddy\nCapEff:\t000001ffffffffff\n", nil, false},
		{"CapEff:\t0000000000000000\n", []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}, false},
		{"CapEff:\t0000000000002000\n", []string{"CAP_NET_ADMIN"}, false}, // CAP_NET_RAW only
		{"CapEff:\t0000000000001000\n", []string{"CAP_NET_RAW"}, false},   // CAP_NET_ADMIN only
		{"CapEff:\tzz\n", nil, true},
		{"Name:\tcaddy\n", nil, true},
	} {
		got, err := missingIn(tc.status)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("missingIn(%q) = %v, %v; want %v (error %v)", tc.status, got, err, tc.want, tc.err)
		}
	}
}
