package backhand

import (
	"encoding/json"
	"errors"

	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-backhand/backhand/candidacy"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("backhand", parseHandler)
	// Before every handler that may answer (respond, file_server, reverse_proxy,
	// handle blocks ...): the decision where to serve comes first.
	httpcaddyfile.RegisterDirectiveOrder("backhand", httpcaddyfile.Before, "invoke")
}

// Handler makes this node an entry point of the cluster, as mod_backhand
// made every Apache: for each request it runs the candidacy chain over the
// live peers; when this node wins (or the list ends empty) the rest of the
// route serves the request here, when a peer wins the request is proxied
// there through Caddy's reverse_proxy, and after HTTPRedirectToIP/Name the
// client is redirected there instead.
//
// A forwarded request carries an authenticated hop marker, so the peer
// serves it itself and never forwards it again; a marker a client forged
// is stripped and ignored. When the chosen peer fails before the response
// starts, reverse_proxy tries the next candidate (dial errors always, GET
// requests also after a connection was made); when every try fails before
// anything was written, this node serves the request itself.
//
// The handler also counts the requests this node serves, as
// backhand_track does.
type Handler struct {
	// Proxy is the reverse_proxy handler that forwards to peers: its
	// upstreams are `dynamic backhand` and its selection policy is
	// `backhand` with the candidacy chain; any other reverse_proxy option
	// (transport, headers, retries, health checks) applies. Default
	// retries: 3, without waiting between tries.
	ProxyRaw json.RawMessage `json:"proxy,omitempty"`

	proxy      *reverseproxy.Handler
	peerScheme string // how the proxy reaches peers, and where redirects send clients: http, or https with a TLS transport
	policy     *Selection
	node       *node
	app        *App
	logger     *zap.Logger
}

const defaultRetries = 3

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backhand",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the embedded reverse_proxy with the backhand source
// and policy.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := backhandApp(ctx, "backhand")
	if err != nil {
		return err
	}
	h.app, h.node, h.logger = app, app.node, ctx.Logger()
	raw, err := withBackhandDefaults(h.ProxyRaw)
	if err != nil {
		return err
	}
	mod, err := ctx.LoadModuleByID("http.handlers.reverse_proxy", raw)
	if err != nil {
		return fmt.Errorf("backhand: %v", err)
	}
	h.proxy = mod.(*reverseproxy.Handler)
	h.peerScheme = "http"
	if t, ok := h.proxy.Transport.(*reverseproxy.HTTPTransport); ok && t.TLS != nil {
		h.peerScheme = "https"
	}
	h.policy, _ = h.proxy.LoadBalancing.SelectionPolicy.(*Selection)
	if h.policy == nil {
		return errModule("backhand", "the proxy's selection policy must be backhand")
	}
	return nil
}

// withBackhandDefaults fills the proxy config's upstreams, policy and
// retries, and rejects upstreams of other kinds: the directive balances
// over the cluster's peers only.
func withBackhandDefaults(raw json.RawMessage) (json.RawMessage, error) {
	rp := new(reverseproxy.Handler)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, rp); err != nil {
			return nil, fmt.Errorf("backhand: proxy: %v", err)
		}
	}
	if len(rp.Upstreams) > 0 {
		return nil, errModule("backhand", "proxy: static upstreams are not allowed; requests go to the cluster's peers")
	}
	if rp.DynamicUpstreamsRaw == nil {
		rp.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(&Upstreams{}, "source", "backhand", nil)
	}
	if rp.LoadBalancing == nil {
		rp.LoadBalancing = new(reverseproxy.LoadBalancing)
	}
	if rp.LoadBalancing.SelectionPolicyRaw == nil {
		rp.LoadBalancing.SelectionPolicyRaw = caddyconfig.JSONModuleObject(&Selection{}, "policy", "backhand", nil)
	}
	if rp.LoadBalancing.Retries == 0 && rp.LoadBalancing.TryDuration == 0 {
		rp.LoadBalancing.Retries = defaultRetries
	}
	return json.Marshal(rp)
}

// ServeHTTP balances the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	now := time.Now()
	keys := h.node.keys.Load()
	if hop, ok, carried := receivedHop(r, h.app.Name, keys, now); ok {
		restoreClient(r, hop, keys)
		h.node.decisions.record(outcomeLocal)
		return h.serveLocally(w, r, next)
	} else if carried {
		h.logger.Debug("ignoring an invalid hop marker", zap.String("remote", r.RemoteAddr))
	}

	st := ensureState(r)
	route, target := h.decide(w, r, st, now)
	switch route {
	case routeRedirect:
		h.node.decisions.record(outcomeRedirected)
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusFound)
		return nil
	case routePeer:
		st.claimRecording(roleDirective) // the policy leaves the outcome to the directive
		return h.forward(w, r, next, st, keys)
	}
	h.node.decisions.record(outcomeLocal)
	return h.serveLocally(w, r, next)
}

// route is where the directive sends a request.
type route uint8

const (
	routeHere     route = iota // the rest of this node's route serves it
	routePeer                  // reverse_proxy forwards it to the planned peers
	routeRedirect              // the client is redirected to the winner
)

// decide runs the chain and returns where the request goes: for a peer,
// the chain's best candidates are planned in st for the source; for a
// redirect, the target host. byCookie's cookie is set here.
func (h *Handler) decide(w http.ResponseWriter, r *http.Request, st *requestState, now time.Time) (route, string) {
	c := h.policy.evaluate(candidacy.Run{Request: r, Now: now})
	defer c.Release()
	winner := c.First()
	h.setCookie(w, r, c.Cookie(), winner)
	if winner == nil || winner.Peer.Self {
		return routeHere, ""
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if to, ok := c.Redirect(winner); ok {
			scheme := h.peerScheme
			if to.Named {
				scheme = requestScheme(r) // a name is the site's own; keep the client's scheme
			}
			return routeRedirect, redirectLocation(r, scheme, to.Host, winner.Peer.Name, h.app.Name, h.node.keys.Load(), now)
		}
	}
	if st == nil {
		return routeHere, "" // not a request from Caddy's server: nowhere to plan
	}
	st.plan(c.Head(h.policy.keep))
	return routePeer, ""
}

// forward proxies the request to the planned peers, and serves it here if
// every try failed before a response started.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, st *requestState, keys *derivedKeys) error {
	st.hop = hopFor(r, h.app.Name) // each attempt marks the request for its peer (markAttempt)
	counter := st.claimCounting(roleDirective)
	st.handlerEnds()
	st.releaseBusy() // backhand_track's count: a peer serves it, not this node
	tw := &startedWriter{ResponseWriter: w}
	err := h.proxyOnce(tw, r, next, st)
	if err != nil && !tw.started && r.Context().Err() == nil && mayRepeat(r, err) {
		h.logger.Warn("every peer tried failed; serving locally", zap.Error(err))
		st.servedHere()
		h.node.decisions.record(outcomeFailedOver)
		return h.serveLocally(w, r, next)
	}
	if fwd, _ := st.forwarded(); fwd {
		h.node.decisions.record(outcomeForwarded)
		if counter == roleDirective {
			h.node.stats.forwarded.Add(1)
		}
	}
	return err
}

// mayRepeat reports whether a request whose forward failed with err may
// be served here after all: when repeating it is harmless (a safe or
// idempotent method), or when it never reached a peer (the last attempt
// failed to connect: reverse_proxy retries a request with a body only
// after such errors, so none before it reached a peer either). A POST
// that a peer may have served is not served a second time: the client
// gets the proxy's error.
func mayRepeat(r *http.Request, err error) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	var dial reverseproxy.DialError
	if errors.As(err, &dial) {
		return true
	}
	// No peer was available to try at all (reverse_proxy's unexported
	// errNoUpstream, a 503).
	var herr caddyhttp.HandlerError
	return errors.As(err, &herr) && herr.StatusCode == http.StatusServiceUnavailable && strings.Contains(herr.Error(), "no upstreams available")
}

// proxyOnce runs reverse_proxy over the planned peers and finishes the
// request's count at the peer that served it, or failed: also when the
// proxy panics (http.ErrAbortHandler when a peer breaks off a response).
func (h *Handler) proxyOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, st *requestState) (err error) {
	failed := true
	defer func() { st.finish(time.Now(), failed) }()
	err = h.proxy.ServeHTTP(w, r, next)
	failed = err != nil
	return err
}

// serveLocally hands the request to the rest of the route, counting it as
// one this node serves unless backhand_track does.
func (h *Handler) serveLocally(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if st := stateOf(r); st.claimCounting(roleDirective) != roleDirective {
		// backhand_track counts it, and ends the count; after a failed
		// forward its busy count must be taken again.
		st.holdBusy(&h.node.stats.busy)
		return next.ServeHTTP(w, r)
	}
	busy := &h.node.stats.busy
	busy.Add(1)
	start := time.Now()
	defer func() {
		busy.Add(-1)
		now := time.Now()
		h.node.served(now.Sub(start), now)
	}()
	return next.ServeHTTP(w, r)
}

// setCookie sets byCookie's cookie (named name) when the winner differs
// from it.
func (h *Handler) setCookie(w http.ResponseWriter, r *http.Request, name string, winner *candidacy.Candidate) {
	if name == "" || winner == nil {
		return
	}
	value := h.node.cookieValueFor(winner.Peer.Name)
	if ck, err := r.Cookie(name); err == nil && ck.Value == value {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil})
}

// requestScheme is the scheme the client used.
func requestScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// startedWriter notes whether a response has started, so that a failed
// forward can still be served locally when it has not.
type startedWriter struct {
	http.ResponseWriter
	started bool
}

func (w *startedWriter) WriteHeader(code int) {
	w.started = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *startedWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *startedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// parseHandler sets up the handler from Caddyfile tokens. Syntax:
//
//	backhand [<matcher>] {
//		<candidacy function> [<args...>]    # one per line, in order
//		max_age | keep | predict | fallback # the policy's options
//		<reverse_proxy subdirectives>       # transport, header_up, lb_retries, ...
//	}
//
// An empty block (or none) runs candidacy.DefaultChain.
func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	policy := new(Selection)
	for d.Next() {
		for d.NextBlock(0) {
			name := d.Val()
			if !isPolicyLine(name) {
				continue
			}
			seg := d.NextSegment()
			d.DeleteN(len(seg))
			sd := caddyfile.NewDispenser(seg)
			sd.Next()
			if err := policy.unmarshalLine(sd); err != nil {
				return nil, err
			}
		}
	}
	d.Reset()
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, explainSubdirective(err)
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	if len(rp.Upstreams) > 0 || rp.DynamicUpstreamsRaw != nil {
		return nil, d.Errf("backhand: upstreams are the cluster's peers; use reverse_proxy for other upstreams")
	}
	if rp.LoadBalancing != nil && rp.LoadBalancing.SelectionPolicyRaw != nil {
		return nil, d.Errf("backhand: lb_policy is the candidacy chain; write the functions in the block instead")
	}
	if rp.LoadBalancing == nil {
		rp.LoadBalancing = new(reverseproxy.LoadBalancing)
	}
	rp.LoadBalancing.SelectionPolicyRaw = caddyconfig.JSONModuleObject(policy, "policy", "backhand", nil)
	raw, err := json.Marshal(rp)
	if err != nil {
		return nil, err
	}
	return &Handler{ProxyRaw: raw}, nil
}

// explainSubdirective turns reverse_proxy's "unrecognized subdirective
// byRandm" for a line of the directive's block into what the user meant:
// a candidacy function, named, with the closest known one.
func explainSubdirective(err error) error {
	msg := err.Error()
	i := strings.Index(msg, "unrecognized subdirective ")
	if i < 0 {
		return err
	}
	name, _, _ := strings.Cut(msg[i+len("unrecognized subdirective "):], ",")
	if s := candidacy.Suggest(name); s != "" {
		return fmt.Errorf("backhand: unknown candidacy function %q (did you mean %s?): %w", name, s, err)
	}
	return fmt.Errorf("backhand: %q is neither a candidacy function, a policy option (max_age, keep, predict, fallback) nor a reverse_proxy subdirective: %w", name, err)
}

// isPolicyLine reports whether a line of the directive's block belongs to
// the policy (a candidacy function or one of its options) rather than to
// reverse_proxy.
func isPolicyLine(name string) bool {
	switch name {
	case "keep", "fallback":
		return true
	}
	return candidacy.IsChainLine(name)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
