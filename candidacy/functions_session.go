package candidacy

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The candidacy functions that keep a client with one server: bySession
// (mod_backhand's, keyed by the application's session id) and byCookie
// (a cookie that backhand sets and signs itself).

func init() {
	caddy.RegisterModule(new(BySession))
	caddy.RegisterModule(new(ByCookie))
}

// BySession sends a session back to the server that created it, as
// mod_backhand's bySession (by Martin Domig): the application puts the
// server's IPv4 address, as 8 hex digits, at the start of its session id
// (e.g. PHPSESSID=7f000001...). bySession reads the id from the first Cookie
// header, or else from the query argument of the same name, decodes the
// address, and if a candidate's advertised address has that IP, it becomes
// the only candidate; otherwise the list is left as it is. A peer that
// advertises a DNS name matches by the address its announcements come
// from. `bySession [name]`.
type BySession struct {
	// Name is the cookie or query argument. Default: PHPSESSID.
	Name string `json:"name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (BySession) CaddyModule() caddy.ModuleInfo {
	return fnInfo("bySession", func() caddy.Module { return new(BySession) })
}

// Candidates applies the function.
func (f *BySession) Candidates(c *Candidates) {
	ip, ok := sessionAddr(c.req, f.name())
	if !ok {
		return
	}
	for i, x := range c.All() {
		if peerIP(x.Peer) == ip {
			c.list[0] = c.list[i]
			c.list = c.list[:1]
			return
		}
	}
}

// peerIP is the IP address a peer advertises, or, when it advertises a
// DNS name, the one its announcements come from (zero for this node).
func peerIP(p *Peer) netip.Addr {
	if a := hostIP(p.Advertise); a.IsValid() {
		return a
	}
	return p.Source.Addr().Unmap()
}

func (f *BySession) name() string {
	if f.Name == "" {
		return "PHPSESSID"
	}
	return f.Name
}

// UnmarshalCaddyfile reads `bySession [name]`.
func (f *BySession) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return optionalArg(d, &f.Name)
}

// sessionAddr finds the session id named name and decodes the IPv4 address
// in its first 8 hex digits.
func sessionAddr(r *http.Request, name string) (netip.Addr, bool) {
	if r == nil {
		return netip.Addr{}, false
	}
	v, ok := "", false
	if cookies := r.Header.Values("Cookie"); len(cookies) > 0 {
		v, ok = cookieValue(cookies[0], name)
	}
	if !ok {
		v = r.URL.Query().Get(name)
	}
	if len(v) < 8 {
		return netip.Addr{}, false
	}
	var b [4]byte
	if _, err := hex.Decode(b[:], []byte(v[:8])); err != nil {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(b), true
}

// cookieValue finds name in one Cookie header's value.
func cookieValue(header, name string) (string, bool) {
	for part := range strings.SplitSeq(header, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && k == name {
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1] // a quoted cookie value (RFC 6265)
			}
			return v, true
		}
	}
	return "", false
}

// hostIP is the IP address in a host:port, or the zero Addr for a name.
func hostIP(hostport string) netip.Addr {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// ByCookie keeps a client with the node that served it first, by a cookie
// that backhand sets and signs itself (HMAC-SHA256 with a key derived from
// the cluster key): when the request carries a valid cookie naming a
// candidate, that candidate becomes the only one. A client cannot make up
// a cookie for a node; but a node's cookie is the same for every client
// and never expires, so a client can return to (or share) any node whose
// cookie it was once given. The `backhand` directive sets the cookie
// (HttpOnly, SameSite=Lax, Path=/) whenever the winner differs from it; in
// a plain reverse_proxy it is only read, so the application or another
// handler must set it (with this node's signing, which needs the
// directive). `byCookie [name]`.
type ByCookie struct {
	// Name is the cookie's name. Default: backhand.
	Name string `json:"name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ByCookie) CaddyModule() caddy.ModuleInfo {
	return fnInfo("byCookie", func() caddy.Module { return new(ByCookie) })
}

func (f *ByCookie) name() string {
	if f.Name == "" {
		return "backhand"
	}
	return f.Name
}

// Candidates applies the function.
func (f *ByCookie) Candidates(c *Candidates) {
	c.decision.cookie = f.name()
	if c.req == nil || c.cookies == nil {
		return
	}
	ck, err := c.req.Cookie(c.decision.cookie)
	if err != nil {
		return
	}
	node, ok := c.cookies.CookieNode(ck.Value)
	if !ok {
		return
	}
	for i, x := range c.All() {
		if x.Peer.Name == node {
			c.list[0] = c.list[i]
			c.list = c.list[:1]
			return
		}
	}
}

// Validate checks that the name is a cookie name (an HTTP token), which
// http.SetCookie would otherwise drop silently.
func (f *ByCookie) Validate() error {
	if err := (&http.Cookie{Name: f.name(), Value: "x"}).Valid(); err != nil {
		return fmt.Errorf("byCookie: name %q is not a cookie name: %v", f.name(), err)
	}
	return nil
}

// UnmarshalCaddyfile reads `byCookie [name]`.
func (f *ByCookie) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return optionalArg(d, &f.Name)
}

// Interface guards
var (
	_ Function        = (*BySession)(nil)
	_ Function        = (*ByCookie)(nil)
	_ caddy.Validator = (*ByCookie)(nil)
)
