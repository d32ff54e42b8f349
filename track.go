package backhand

import (
	"math"
	"net/http"
	"sync/atomic"
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

// localStats counts this node's own requests; the announcer turns them into
// the Busy, LatencyMicros and Forwarded figures.
type localStats struct {
	busy          atomic.Int64  // requests in flight now
	done          atomic.Uint64 // requests completed
	latencyMicros atomic.Uint64 // their response times summed
	forwarded     atomic.Uint64 // requests proxied to a peer other than self
	sent          atomic.Uint64 // announcements sent
}

// served counts a request that this node served itself, which took d:
// into the latency it announces, and into what it knows of its own speed
// (its slot's response times, as it learns each peer's).
func (n *node) served(d time.Duration, now time.Time) {
	n.stats.latencyMicros.Add(uint64(max(d, 0).Microseconds()))
	n.stats.done.Add(1)
	if s := n.table.self.Load(); s != nil {
		s.local.times.observe(d, now)
	}
}

// latencyEWMA smooths the mean response time of each interval with a time
// constant of latencyTau, so that one slow interval moves the figure but
// does not define it. An interval without requests leaves it unchanged.
type latencyEWMA struct {
	prevDone, prevSum uint64
	at                time.Time
	micros            float64
}

const latencyTau = decay(5 * time.Second)

func (e *latencyEWMA) update(st *localStats, now time.Time) uint32 {
	done, sum := st.done.Load(), st.latencyMicros.Load()
	if !e.at.IsZero() && done > e.prevDone {
		mean := float64(sum-e.prevSum) / float64(done-e.prevDone)
		if e.micros == 0 {
			e.micros = mean
		} else {
			e.micros = ewma(e.micros, mean, latencyTau.alpha(now.Sub(e.at)))
		}
	}
	e.prevDone, e.prevSum, e.at = done, sum, now
	return uint32(min(e.micros, math.MaxUint32))
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
	defer func() {
		now := time.Now()
		if rs != nil {
			rs.releaseBusy()
			rs.finish(now)
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
	return next.ServeHTTP(w, r)
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

// backhandApp returns the configured backhand app, or an error that tells
// the user of module what is missing.
func backhandApp(ctx caddy.Context, module string) (*App, error) {
	v, err := ctx.AppIfConfigured("backhand")
	if err != nil {
		return nil, errOption(module, "needs the backhand app: add the `backhand` global option (apps.backhand in JSON): %v", err)
	}
	return v.(*App), nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Track)(nil)
	_ caddyhttp.MiddlewareHandler = (*Track)(nil)
	_ caddyfile.Unmarshaler       = (*Track)(nil)
)
