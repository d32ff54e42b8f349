package backhand

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// running is the most recently started backhand app, which the admin API
// reports on. During a reload the new app starts before the old one stops.
var running atomic.Pointer[App]

// AdminAPI is a module that serves this node's view of its cluster on
// Caddy's admin endpoint:
//
//	GET /backhand/peers    the PeersView as JSON
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
	return []caddy.AdminRoute{{
		Pattern: "/backhand/peers",
		Handler: caddy.AdminHandlerFunc(handlePeers),
	}}
}

func handlePeers(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	app := running.Load()
	if app == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("the backhand app is not running")}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(peersView(app, time.Now()))
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
