package backhand

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Board is a peer table that the caller feeds instead of announcements
// arriving over UDP, with one decider's own counters: for simulators, tests
// and tools that run the real candidacy chains outside a running Caddy.
// Each entry proxy being simulated needs a Board of its own, since each
// counts only its own requests in flight. Not safe for concurrent use.
type Board struct {
	n *node
}

// NewBoard makes an empty board for a decider named self.
func NewBoard(self string) *Board {
	n := newNode()
	n.table.setLimits(&tableLimits{maxPeers: 1 << 20, selfName: self, maxAge: time.Hour, evictAfter: time.Hour, replayWindow: time.Hour})
	return &Board{n: n}
}

// Announce takes p as the latest announcement of its node, received at
// p.ReceivedAt. It returns an error if the table refuses it.
func (b *Board) Announce(p Peer) error {
	t := b.n.table
	if p.Self || p.Name == t.limits.Load().selfName {
		t.updateSelf(&p)
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.storeLocked(&p)
	return nil
}

// Refresh updates peer's announced busy figure in place, as a new
// announcement received at `at` would, without allocating: for simulators
// that refresh thousands of entries per simulated second. Unlike Announce
// it must not run while a chain runs over the board.
func (b *Board) Refresh(peer string, busy uint32, at time.Time) {
	s := b.n.table.lookupSlot(peer)
	if s == nil {
		return
	}
	p := s.cur.Load()
	p.Figures.Busy, p.ReceivedAt = busy, at
	s.local.announced(&p.Figures)
}

// Begin records that this decider sent a request to peer; End that it
// finished after d.
func (b *Board) Begin(peer string) {
	if s := b.n.table.lookupSlot(peer); s != nil {
		s.local.begin()
	}
}

// End records that a request to peer finished after d, at now.
func (b *Board) End(peer string, d time.Duration, now time.Time) {
	if s := b.n.table.lookupSlot(peer); s != nil {
		s.local.end(d, now, true)
	}
}

// Chain is a parsed candidacy chain that runs over a Board.
type Chain struct {
	s *Selection
}

// ParseChain reads a chain in the Caddyfile form, functions separated by
// newlines or semicolons, e.g. "byAge 6s; byRandom; byWindow 2; byWait",
// with the policy's options (predict, max_age) allowed too. An empty
// string gives DefaultChain.
func ParseChain(src string) (*Chain, error) {
	text := "backhand {\n" + strings.ReplaceAll(src, ";", "\n") + "\n}"
	s := new(Selection)
	if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(text)); err != nil {
		return nil, err
	}
	if err := s.provisionOffline(); err != nil {
		return nil, err
	}
	return &Chain{s: s}, nil
}

// provisionOffline loads the chain's functions without a Caddy config.
func (s *Selection) provisionOffline() error {
	s.maxAge = time.Duration(s.MaxAge)
	if s.maxAge == 0 {
		s.maxAge = time.Hour
	}
	var err error
	if s.predict, err = parsePredict(s.Predict); err != nil {
		return err
	}
	s.keep = defaultKeep
	if len(s.ChainRaw) == 0 {
		s.chain = DefaultChain()
		return nil
	}
	for _, raw := range s.ChainRaw {
		var head struct {
			Function string `json:"function"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return err
		}
		mod, err := caddy.GetModule("backhand.functions." + head.Function)
		if err != nil {
			return err
		}
		f := mod.New()
		if err := strictUnmarshalInto(raw, f); err != nil {
			return fmt.Errorf("%s: %v", head.Function, err)
		}
		if p, ok := f.(caddy.Provisioner); ok {
			if err := p.Provision(caddy.Context{}); err != nil {
				return err
			}
		}
		if v, ok := f.(caddy.Validator); ok {
			if err := v.Validate(); err != nil {
				return err
			}
		}
		s.chain = append(s.chain, f.(CandidacyFunction))
	}
	return nil
}

// Choose runs the chain over the board at now, drawing random numbers from
// rnd (uniform in [0, n)), and returns the winner's name; "" means the
// request would be served by the decider itself (empty list or off).
func (c *Chain) Choose(b *Board, r *http.Request, now time.Time, rnd func(n int) int) string {
	cs := c.s.evaluate(b.n, chainRun{req: r, now: now, rnd: rnd})
	defer cs.release()
	if w := cs.first(); w != nil {
		return w.Peer.Name
	}
	return ""
}

// strictUnmarshalInto decodes raw into v, rejecting unknown fields (the
// "function" key names the module and is not one of its fields).
func strictUnmarshalInto(raw []byte, v any) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	delete(m, "function")
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
