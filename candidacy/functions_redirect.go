package candidacy

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The candidacy functions that answer with a redirect instead of proxying
// (mod_backhand 1.0.9's HTTP redirection). They act in the `backhand`
// directive, which answers 302 Found with the winner's address for GET and
// HEAD requests (other methods are proxied as usual, since a redirect would
// lose or repeat their body); in a plain reverse_proxy they change nothing.
// Put them last: they act on whichever candidate wins.

func init() {
	caddy.RegisterModule(new(HTTPRedirectToIP))
	caddy.RegisterModule(new(HTTPRedirectToName))
}

// HTTPRedirectToIP redirects the client to the winner's advertised
// address: http://10.0.0.5:8080/same/path?and=query (the request's scheme).
type HTTPRedirectToIP struct{ noArgs }

// CaddyModule returns the Caddy module information.
func (HTTPRedirectToIP) CaddyModule() caddy.ModuleInfo {
	return fnInfo("HTTPRedirectToIP", func() caddy.Module { return new(HTTPRedirectToIP) })
}

// Candidates applies the function.
func (f *HTTPRedirectToIP) Candidates(c *Candidates) { c.decision.redirect = f }

// redirectHost is the host[:port] to redirect to when x wins.
func (f *HTTPRedirectToIP) redirectHost(_ *Candidates, x *Candidate) string {
	return x.Peer.Advertise
}

// HTTPRedirectToName redirects the client to a host name built from the
// winner's node name and the request's host, so that clients stay with the
// machine whose name is in the URL (mod_backhand's example: www.example.com
// becomes www-1.datacenter-3.example.com). The format's escapes:
//
//	%S     the winner's node name
//	%nS    its n-th dot-separated label, from the left (1-based)
//	%-nS   its n-th label from the right
//	%H     the request's host, without the port
//	%nH    %-nH  its labels, likewise
//	%P     the port of the winner's advertised address
//	%%     a percent sign
//
// A label that does not exist is empty. With node name www-1.datacenter-3
// and request host www.example.com, "%S.%-2H.%-1H" gives
// www-1.datacenter-3.example.com; "%1S.example.net:%P" gives
// www-1.example.net:8080. `HTTPRedirectToName <format>`; default "%S".
type HTTPRedirectToName struct {
	// Format builds the host name. Default: "%S".
	Format string `json:"format,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (HTTPRedirectToName) CaddyModule() caddy.ModuleInfo {
	return fnInfo("HTTPRedirectToName", func() caddy.Module { return new(HTTPRedirectToName) })
}

// Validate checks the format's escapes.
func (f *HTTPRedirectToName) Validate() error {
	_, err := expandRedirectFormat(f.format(), "a", "b", "1")
	return err
}

func (f *HTTPRedirectToName) format() string {
	if f.Format == "" {
		return "%S"
	}
	return f.Format
}

// Candidates applies the function.
func (f *HTTPRedirectToName) Candidates(c *Candidates) { c.decision.redirect = f }

func (f *HTTPRedirectToName) redirectHost(c *Candidates, x *Candidate) string {
	reqHost := ""
	if c.req != nil {
		reqHost = c.req.Host
		if h, _, err := net.SplitHostPort(reqHost); err == nil {
			reqHost = h
		}
	}
	_, port, _ := net.SplitHostPort(x.Peer.Advertise)
	host, _ := expandRedirectFormat(f.format(), x.Peer.Name, reqHost, port)
	return host
}

// UnmarshalCaddyfile reads `HTTPRedirectToName [format]`.
func (f *HTTPRedirectToName) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return optionalArg(d, &f.Format)
}

// redirector is a function that turns the winner into a redirect.
type redirector interface {
	redirectHost(c *Candidates, x *Candidate) string
}

// expandRedirectFormat expands the escapes of HTTPRedirectToName.
func expandRedirectFormat(format, server, host, port string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			b.WriteByte(format[i])
			continue
		}
		j := i + 1
		if j < len(format) && format[j] == '-' {
			j++
		}
		for j < len(format) && format[j] >= '0' && format[j] <= '9' {
			j++
		}
		if j >= len(format) {
			return "", fmt.Errorf("HTTPRedirectToName: format %q ends inside an escape", format)
		}
		num := format[i+1 : j]
		switch verb := format[j]; {
		case verb == '%' && num == "":
			b.WriteByte('%')
		case verb == 'S':
			b.WriteString(labelOf(server, num))
		case verb == 'H':
			b.WriteString(labelOf(host, num))
		case verb == 'P' && num == "":
			b.WriteString(port)
		default:
			return "", fmt.Errorf("HTTPRedirectToName: format %q: unknown escape %q", format, format[i:j+1])
		}
		i = j
	}
	return b.String(), nil
}

// labelOf picks the label that num names ("" for all, "2" the second from
// the left, "-1" the last) from a dotted name.
func labelOf(name, num string) string {
	if num == "" {
		return name
	}
	n, err := strconv.Atoi(num)
	if err != nil || n == 0 {
		return ""
	}
	labels := strings.Split(name, ".")
	if n < 0 {
		n = len(labels) + n + 1
	}
	if n < 1 || n > len(labels) {
		return ""
	}
	return labels[n-1]
}

// Interface guards
var (
	_ Function        = (*HTTPRedirectToIP)(nil)
	_ Function        = (*HTTPRedirectToName)(nil)
	_ redirector      = (*HTTPRedirectToIP)(nil)
	_ redirector      = (*HTTPRedirectToName)(nil)
	_ caddy.Validator = (*HTTPRedirectToName)(nil)
)
