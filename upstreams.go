package backhand

import (
	"net/http"
	"regexp"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a dynamic upstream source for reverse_proxy that returns the
// live peers of the backhand app's table: those heard from within MaxAge
// and not draining, in the stable order of their names, with their
// advertised address as the dial address. It works with every selection
// policy; `lb_policy backhand` adds the candidacy functions.
//
// It needs the backhand app (the `backhand` global option).
type Upstreams struct {
	// MaxAge is how recently a peer must have announced to be returned.
	// Default: the app's max_age (3 intervals).
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Tags keeps only peers that carry every one of these tags.
	Tags []string `json:"tags,omitempty"`

	// Name keeps only peers whose node name matches this regular
	// expression (RE2 syntax), like mod_backhand's byHostname.
	Name string `json:"name,omitempty"`

	// ExcludeSelf leaves this node out, for a dedicated balancer that
	// should not serve requests itself (mod_backhand's removeSelf).
	ExcludeSelf bool `json:"exclude_self,omitempty"`

	table  *peerTable
	maxAge time.Duration
	name   *regexp.Regexp
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.backhand",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision finds the backhand app and compiles the filters.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	app, err := backhandApp(ctx, "dynamic backhand")
	if err != nil {
		return err
	}
	u.table = app.node.table
	u.maxAge = time.Duration(u.MaxAge)
	if u.maxAge == 0 {
		u.maxAge = time.Duration(app.MaxAge)
	}
	if u.maxAge < 0 {
		return errOption("dynamic backhand", "max_age must be positive, got %v", u.maxAge)
	}
	if u.Name != "" {
		re, err := regexp.Compile(u.Name)
		if err != nil {
			return errOption("dynamic backhand", "name %q: %v", u.Name, err)
		}
		u.name = re
	}
	return nil
}

// GetUpstreams returns fresh upstreams for the live peers: reverse_proxy
// writes into each Upstream it is given, so sharing them between requests
// would race. One allocation holds them all.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	now := time.Now()
	view := u.table.peers()
	n := 0
	for _, s := range view {
		if u.keep(s.cur.Load(), now) {
			n++
		}
	}
	ups := make([]reverseproxy.Upstream, n)
	out := make([]*reverseproxy.Upstream, 0, n)
	for _, s := range view {
		p := s.cur.Load()
		if len(out) < n && u.keep(p, now) {
			ups[len(out)].Dial = p.Advertise
			out = append(out, &ups[len(out)])
		}
	}
	markBackhanded(r, u.table)
	return out, nil
}

// keep reports whether p is a live candidate under this source's filters.
func (u *Upstreams) keep(p *Peer, now time.Time) bool {
	switch {
	case p.Figures.Draining, p.Age(now) > u.maxAge, p.Advertise == "":
		return false
	case p.Self && u.ExcludeSelf:
		return false
	case len(u.Tags) > 0 && !p.HasTags(u.Tags):
		return false
	case u.name != nil && !u.name.MatchString(p.Name):
		return false
	}
	return true
}

// backhandedVar marks, in the request's variables, that its upstreams came
// from the peer table, so backhand_track can tell a forward to a peer from
// a reverse_proxy to anything else.
const backhandedVar = "backhand.table"

func markBackhanded(r *http.Request, t *peerTable) {
	if r != nil {
		caddyhttp.SetVar(r.Context(), backhandedVar, t)
	}
}

// forwardedToPeer reports whether r was proxied to a peer other than this
// node, through a backhand source.
func forwardedToPeer(r *http.Request) bool {
	t, ok := caddyhttp.GetVar(r.Context(), backhandedVar).(*peerTable)
	if !ok {
		return false
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	hostport, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	return hostport != "" && hostport != t.selfAdvertise()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
)
