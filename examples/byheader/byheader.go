// Package byheader is an example of a third-party candidacy function for
// caddy-backhand, the analogue of mod_backhand's BackhandFromSO: a Caddy
// module in the backhand.functions namespace that implements
// candidacy.Function. Build it in with
// `xcaddy build --with github.com/caddy-backhand/backhand --with <this package>`
// and write it as a line of the chain:
//
//	lb_policy backhand {
//		byHeader X-Tier
//		byRandom
//		byWindow 2
//		byWait
//	}
//
// It keeps the peers that carry, as a tag, the value of a request header:
// with `X-Tier: gold`, only peers tagged `gold`. Without the header the list
// is left as it is.
package byheader

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/candidacy"
)

func init() {
	caddy.RegisterModule(ByHeader{})
}

// ByHeader keeps the peers tagged with the value of the request header
// Header.
type ByHeader struct {
	// Header is the request header whose value names the tag. Required.
	Header string `json:"header"`
}

// CaddyModule returns the Caddy module information.
func (ByHeader) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "backhand.functions.byHeader",
		New: func() caddy.Module { return new(ByHeader) },
	}
}

// Candidates filters the list.
func (f *ByHeader) Candidates(c *candidacy.Candidates) {
	r := c.Request()
	if r == nil {
		return
	}
	tag := r.Header.Get(f.Header)
	if tag == "" {
		return
	}
	c.Filter(func(x *candidacy.Candidate) bool { return x.Peer.HasTags([]string{tag}) })
}

// UnmarshalCaddyfile reads `byHeader <header>`.
func (f *ByHeader) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the function's name
	if !d.NextArg() {
		return d.ArgErr()
	}
	f.Header = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ candidacy.Function    = (*ByHeader)(nil)
	_ caddyfile.Unmarshaler = (*ByHeader)(nil)
)
