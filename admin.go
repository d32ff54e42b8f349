package backhand

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// latestApp is the most recently started backhand app, which the admin API
// and the metrics report on. During a reload the new app starts before the
// old one stops.
var latestApp atomic.Pointer[App]

// AdminAPI is a module that serves this node's view of its cluster on
// Caddy's admin endpoint, and drains or undrains this node:
//
//	GET  /backhand/peers[?slow_start=<duration>]   the PeersView as JSON
//	POST /backhand/drain                           announce this node as draining
//	POST /backhand/undrain                         stop announcing it as draining
//
// With slow_start (e.g. ?slow_start=30s), live peers first heard within
// that window are shown in state "slow-start". Drain and undrain take
// effect with the next announcement (within one interval), survive config
// reloads, and answer with the node's drain state as JSON:
// {"node": ..., "draining": ..., "admin_drain": ..., "config_drain": ...}.
// `draining` stays true after an undrain while the config's `drain`
// option is set.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.backhand",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes of the backhand app.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/backhand/peers", Handler: caddy.AdminHandlerFunc(handlePeers)},
		{Pattern: "/backhand/drain", Handler: caddy.AdminHandlerFunc(handleDrain(true))},
		{Pattern: "/backhand/undrain", Handler: caddy.AdminHandlerFunc(handleDrain(false))},
	}
}

func handlePeers(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	app, err := runningApp()
	if err != nil {
		return err
	}
	var opts viewOptions
	if s := r.URL.Query().Get("slow_start"); s != "" {
		d, err := caddy.ParseDuration(s)
		if err != nil || d < 0 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("slow_start: not a duration: %q", s)}
		}
		opts.slowStart = d
	}
	return writeJSON(w, peersViewWith(app, time.Now(), opts))
}

// DrainState is the answer of POST /backhand/drain and /backhand/undrain.
type DrainState struct {
	Node string `json:"node"`
	// Draining is what the node announces from its next announcement on.
	Draining bool `json:"draining"`
	// AdminDrain is the flag the admin API sets and clears.
	AdminDrain bool `json:"admin_drain"`
	// ConfigDrain is the config's `drain` option, which the admin API
	// cannot clear.
	ConfigDrain bool `json:"config_drain"`
}

// handleDrain sets or clears this node's admin drain flag; the announcer
// ORs it into the Draining figure at every interval.
func handleDrain(drain bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPost {
			return methodNotAllowed(w, http.MethodPost)
		}
		app, err := runningApp()
		if err != nil {
			return err
		}
		was := app.node.draining.Swap(drain)
		if app.vip != nil {
			// Announce at once: the peers start taking the node's
			// virtual addresses over now, not within an interval.
			kickAnnouncer(app.node)
		}
		st := DrainState{Node: app.Name, Draining: app.Drain || drain, AdminDrain: drain, ConfigDrain: app.Drain}
		app.logger.Info("drain set through the admin API",
			zap.String("node", app.Name),
			zap.Bool("admin_drain", drain),
			zap.Bool("was", was),
			zap.Bool("draining", st.Draining),
			zap.Bool("config_drain", app.Drain),
			zap.String("remote", r.RemoteAddr))
		return writeJSON(w, st)
	}
}

// runningApp returns the running app, or a 404 for the admin API.
func runningApp() (*App, error) {
	app := latestApp.Load()
	if app == nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("the backhand app is not running")}
	}
	return app, nil
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed; use %s", allow)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
