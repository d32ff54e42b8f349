package candidacytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/candidacy"
)

// Chain is a parsed candidacy chain that runs over a Board.
type Chain struct {
	chain candidacy.Chain
}

// ParseChain reads a chain in the Caddyfile form, functions separated by
// newlines or semicolons, e.g. "byAge 6s; byRandom; byWindow 2; byWait",
// with the chain's options (predict, max_age) allowed too. An empty
// string gives candidacy.DefaultChain.
func ParseChain(src string) (*Chain, error) {
	d := caddyfile.NewTestDispenser("backhand {\n" + strings.ReplaceAll(src, ";", "\n") + "\n}")
	var cfg candidacy.ChainConfig
	d.Next() // the block's name
	for d.NextBlock(0) {
		if err := cfg.UnmarshalLine(d); err != nil {
			return nil, err
		}
	}
	ch, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	return &Chain{chain: ch}, nil
}

// load makes the chain of cfg without a Caddy config: its functions are
// decoded from their JSON, provisioned and validated as Caddy would.
func load(cfg *candidacy.ChainConfig) (candidacy.Chain, error) {
	ch := candidacy.Chain{MaxAge: time.Duration(cfg.MaxAge)}
	if ch.MaxAge == 0 {
		ch.MaxAge = time.Hour
	}
	var err error
	if ch.Predict, err = candidacy.ParsePredict(cfg.Predict); err != nil {
		return ch, err
	}
	if len(cfg.ChainRaw) == 0 {
		ch.Functions = candidacy.DefaultChain()
		return ch, nil
	}
	for _, raw := range cfg.ChainRaw {
		var head struct {
			Function string `json:"function"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return ch, err
		}
		mod, err := caddy.GetModule("backhand.functions." + head.Function)
		if err != nil {
			return ch, err
		}
		f := mod.New()
		if err := strictUnmarshalInto(raw, f); err != nil {
			return ch, fmt.Errorf("%s: %v", head.Function, err)
		}
		if p, ok := f.(caddy.Provisioner); ok {
			if err := p.Provision(caddy.Context{}); err != nil {
				return ch, err
			}
		}
		if v, ok := f.(caddy.Validator); ok {
			if err := v.Validate(); err != nil {
				return ch, err
			}
		}
		fn, ok := f.(candidacy.Function)
		if !ok {
			return ch, fmt.Errorf("module %s is not a candidacy function", head.Function)
		}
		ch.Functions = append(ch.Functions, fn)
	}
	return ch, nil
}

// Choose runs the chain over the board at now, drawing random numbers from
// rnd (uniform in [0, n)), and returns the winner's name; "" means the
// request would be served by the decider itself (empty list or off).
func (c *Chain) Choose(b *Board, r *http.Request, now time.Time, rnd func(n int) int) string {
	cs := c.chain.Evaluate(b.table, &candidacy.Run{Request: r, Now: now, Rand: rnd, Busy: &b.busy, Cookies: unsignedCookies{}})
	defer cs.Release()
	if w := cs.First(); w != nil {
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
