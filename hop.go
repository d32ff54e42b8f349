package backhand

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// What the backhand directive does with hop markers (internal/wire): it
// asks for one on every attempt to a peer, and honours one on a request it
// receives, from a peer's proxy (the HopHeader) or after a peer's redirect
// (the HopParam in the query).

// hopFor returns the marker the directive's forward of r will carry,
// without its receiver and time (set per attempt): this node, the client's
// address and the scheme the client used.
func hopFor(r *http.Request, self string) wire.Hop {
	h := wire.Hop{From: self, Scheme: requestScheme(r)}
	if ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ip != "" {
		if _, err := netip.ParseAddr(ip); err == nil {
			h.Client = ip
		}
	}
	return h
}

// markAttempt puts on r, the request reverse_proxy is about to send to
// the peer named to, the marker that the directive asked for: bound to
// that peer, to r's method and target, and to now. Every attempt marks
// anew, so a retry to another peer carries a marker for that one.
func markAttempt(r *http.Request, st *requestState, to string, keys *derivedKeys, now time.Time) {
	if st == nil || st.hop.From == "" {
		return
	}
	h := st.hop
	h.To, h.At = to, now
	r.Header.Set(wire.HopHeader, keys.hop.Mark(h, r.Method, r.URL.RequestURI()))
}

// receivedHop returns the marker r carries, if it is valid for this node
// (named self) on this request, and strips it from r either way: from the
// header a peer's proxy set, or from the query after a peer's redirect.
func receivedHop(r *http.Request, self string, keys *derivedKeys, now time.Time) (wire.Hop, bool, bool) {
	marker, target := r.Header.Get(wire.HopHeader), originalURI(r)
	if marker != "" {
		r.Header.Del(wire.HopHeader)
	} else if marker, target = takeHopParam(r); marker == "" {
		return wire.Hop{}, false, false
	}
	hop, ok := keys.hop.Check(marker, self, r.Method, target, now, keys.hopWindow)
	for _, s := range keys.acceptedHops {
		if ok {
			break
		}
		hop, ok = s.Check(marker, self, r.Method, target, now, keys.hopWindow)
	}
	return hop, ok, true
}

// originalURI is the request target as this node received it, before any
// rewrite: what the forwarding node's proxy sent and signed.
func originalURI(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.RequestURI != "" {
		return orig.RequestURI
	}
	return r.RequestURI
}

// restoreClient makes a request that a peer forwarded look, to the rest of
// this node's route, as it looked to that peer: the client's address
// (RemoteAddr and the client_ip variable, so logs, reverse_proxy's
// X-Forwarded-For and php_fastcgi's REMOTE_ADDR name the client, not the
// peer) and its scheme (a client that used https makes r.TLS non-nil, so
// X-Forwarded-Proto and php_fastcgi's HTTPS say so). Only an authenticated
// marker is trusted this far: without a cluster key nothing is restored.
func restoreClient(r *http.Request, hop wire.Hop, keys *derivedKeys) {
	if keys.hop == nil {
		return
	}
	if hop.Client != "" {
		r.RemoteAddr = net.JoinHostPort(hop.Client, "0")
		caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, hop.Client)
	}
	if hop.Scheme == "https" && r.TLS == nil {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	}
}

// takeHopParam takes the marker a redirect appended to r's query (the last
// parameter, HopParam), removes it from r, and returns it with the target
// it was signed for (the original target without it). It returns "" when
// the query carries none.
func takeHopParam(r *http.Request) (marker, target string) {
	raw := originalURI(r)
	i := strings.LastIndex(raw, wire.HopParam+"=")
	if i < 1 || (raw[i-1] != '?' && raw[i-1] != '&') || strings.ContainsRune(raw[i:], '&') {
		return "", ""
	}
	marker, err := url.QueryUnescape(raw[i+len(wire.HopParam)+1:])
	if err != nil {
		return "", ""
	}
	target = raw[:i-1]
	if j := strings.LastIndex(r.URL.RawQuery, wire.HopParam+"="); j >= 0 && !strings.ContainsRune(r.URL.RawQuery[j:], '&') {
		r.URL.RawQuery = strings.TrimSuffix(r.URL.RawQuery[:j], "&")
		r.RequestURI = r.URL.RequestURI()
	}
	return marker, target
}

// redirectLocation is where HTTPRedirectTo* sends the client: the winner's
// host with the request's parsed path and query (never the raw target,
// which a client could make name another host), over scheme, with a hop
// marker for the winner in the query so that it serves the request
// instead of redirecting it again.
func redirectLocation(r *http.Request, scheme, host, to, self string, keys *derivedKeys, now time.Time) string {
	u := url.URL{Scheme: scheme, Host: host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	target := u.RequestURI()
	hop := wire.Hop{From: self, To: to, Scheme: requestScheme(r), At: now}
	sep := "?"
	if u.RawQuery != "" {
		sep = "&"
	}
	return u.String() + sep + wire.HopParam + "=" + url.QueryEscape(keys.hop.Mark(hop, r.Method, target))
}
