package backhand

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Track{})
	httpcaddyfile.RegisterHandlerDirective("backhand_track", parseTrack)
	httpcaddyfile.RegisterDirectiveOrder("backhand_track", httpcaddyfile.Before, "tracing")
}

// Track counts the requests this node serves, for the Busy (in flight) and
// latency figures that the backhand app announces, and the requests it
// forwards to peers through the `dynamic backhand` source. Put it first in
// every site whose requests should count (the `backhand_track` directive is
// ordered before all standard directives); it needs the backhand app.
type Track struct {
	node *node
}

// CaddyModule returns the Caddy module information.
func (Track) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backhand_track",
		New: func() caddy.Module { return new(Track) },
	}
}

// Provision finds the backhand app.
func (t *Track) Provision(ctx caddy.Context) error {
	app, err := backhandApp(ctx, "backhand_track")
	if err != nil {
		return err
	}
	t.node = app.node
	return nil
}

// ServeHTTP counts the request while the rest of the route serves it.
func (t *Track) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rs := ensureState(r)
	if rs.claimCounting(roleTrack) != roleTrack {
		return next.ServeHTTP(w, r)
	}
	st := &t.node.stats
	if rs != nil {
		rs.handlerEnds()
		rs.holdBusy(&st.busy) // a backhand directive after this releases it while a peer serves
	} else {
		st.busy.Add(1)
	}
	start := time.Now()
	failed := true // until the route returns without an error (not on a panic)
	defer func() {
		now := time.Now()
		if rs != nil {
			rs.releaseBusy()
			rs.finish(now, failed)
		} else {
			st.busy.Add(-1)
		}
		if forwardedToPeer(r) {
			// A peer served it: its time is the peer's latency, not ours.
			st.forwarded.Add(1)
			return
		}
		t.node.served(now.Sub(start), now)
	}()
	err := next.ServeHTTP(w, r)
	failed = err != nil
	return err
}

// parseTrack sets up the handler from Caddyfile tokens. Syntax:
//
//	backhand_track
func parseTrack(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	t := new(Track)
	err := t.UnmarshalCaddyfile(h.Dispenser)
	return t, err
}

// UnmarshalCaddyfile takes no arguments.
func (t *Track) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("backhand_track takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Track)(nil)
	_ caddyhttp.MiddlewareHandler = (*Track)(nil)
	_ caddyfile.Unmarshaler       = (*Track)(nil)
)
