package candidacytest_test

import (
	"math/rand/v2"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/candidacy/candidacytest"
)

// A chain parsed from its Caddyfile form chooses over a board as it would
// in Caddy: the least busy of the window, never a draining or silent
// peer; the requests the decider sends count until they end.
func TestChainOverBoard(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	b := candidacytest.NewBoard("proxy")
	for _, p := range []candidacy.Peer{
		{Name: "a", Advertise: "sim:1", Figures: candidacy.Figures{Capacity: 1, Busy: 3}},
		{Name: "b", Advertise: "sim:2", Figures: candidacy.Figures{Capacity: 1, Busy: 1}},
		{Name: "c", Advertise: "sim:3", Figures: candidacy.Figures{Capacity: 1, Draining: true}},
		{Name: "d", Advertise: "sim:4", ReceivedAt: now.Add(-time.Minute)},
	} {
		if p.ReceivedAt.IsZero() {
			p.ReceivedAt = now
		}
		if err := b.Announce(p); err != nil {
			t.Fatal(err)
		}
	}
	ch, err := candidacytest.ParseChain("byAge 10s; byBusyChildren; predict blend")
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2)).IntN
	if got := ch.Choose(b, nil, now, rnd); got != "b" {
		t.Errorf("chose %q, want the least busy b", got)
	}
	b.Begin("b")
	b.Begin("b")
	b.Begin("b") // b is at 1 + 3 now, with prediction
	if got := ch.Choose(b, nil, now, rnd); got != "a" {
		t.Errorf("chose %q after three requests to b, want a", got)
	}
	b.Refresh("a", 9, 0, now)
	if got := ch.Choose(b, nil, now, rnd); got != "b" {
		t.Errorf("chose %q after a announced 9, want b", got)
	}
	if _, err := candidacytest.ParseChain("byAge 10s; noSuchFunction"); err == nil || !strings.Contains(err.Error(), "noSuchFunction") {
		t.Errorf("unknown function: error %v", err)
	}
	if _, err := candidacytest.ParseChain("predict sometimes"); err == nil {
		t.Error("predict sometimes: accepted")
	}
}

// NewCandidates starts from every peer that takes requests, whatever its
// age, in name order.
func TestNewCandidates(t *testing.T) {
	now := time.Now()
	c := candidacytest.NewCandidates(httptest.NewRequest("GET", "/", nil), now,
		&candidacy.Peer{Name: "z", Advertise: "127.0.0.2:80", ReceivedAt: now.Add(-time.Hour)},
		&candidacy.Peer{Name: "a", Advertise: "127.0.0.3:80", ReceivedAt: now},
		&candidacy.Peer{Name: "drained", Advertise: "127.0.0.4:80", ReceivedAt: now, Figures: candidacy.Figures{Draining: true}},
		&candidacy.Peer{Name: "me", Advertise: "127.0.0.1:80", Self: true})
	if got := c.Names(); !slices.Equal(got, []string{"a", "me", "z"}) {
		t.Errorf("got %v, want [a me z]", got)
	}
	(&candidacy.RemoveSelf{}).Candidates(c)
	if got := c.Names(); !slices.Equal(got, []string{"a", "z"}) {
		t.Errorf("after removeSelf: got %v, want [a z]", got)
	}
}
