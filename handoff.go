package backhand

import (
	"net"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/internal/handoff"
)

func init() {
	caddy.RegisterModule(HandoffListener{})
}

// HandoffListener (`backhand_handoff` in a server's `listener_wrappers`)
// keeps a config reload from dropping requests. Caddy's reload starts the
// new config's servers beside the old ones and then shuts the old ones
// down; Go's HTTP server, once shutting down, closes a connection without
// an answer when it reads its next request, even the first on a
// connection it has just accepted, and no client resends on a connection
// it has just opened (the fault harness's reload storm lost 1-6 GETs in
// three minutes this way). With this wrapper, such a connection and the
// request read from it move to the newest server listening on the same
// address, which answers it. Connections that wrote anything close as
// before. It works on plain HTTP; a TLS connection (whose handshake is
// already written) passes through untouched, so place it after `tls` (the
// default position).
//
//	{
//		servers {
//			listener_wrappers {
//				backhand_handoff
//			}
//		}
//	}
type HandoffListener struct{}

// CaddyModule returns the Caddy module information.
func (HandoffListener) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.backhand_handoff",
		New: func() caddy.Module { return new(HandoffListener) },
	}
}

// WrapListener wraps ln so that its unanswered connections move to the
// next config's listener on the same address when its server shuts down.
func (HandoffListener) WrapListener(ln net.Listener) net.Listener { return handoff.Wrap(ln) }

// UnmarshalCaddyfile reads `backhand_handoff`, which takes no arguments.
func (*HandoffListener) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.ListenerWrapper = (*HandoffListener)(nil)
	_ caddyfile.Unmarshaler = (*HandoffListener)(nil)
)
