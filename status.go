package websocket

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Status{})
	httpcaddyfile.RegisterHandlerDirective("websocket_status", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		var s Status
		return &s, s.UnmarshalCaddyfile(h.Dispenser)
	})
}

// Status is Caddy module http.handlers.websocket_status: the admin API's
// live page and JSON routes (admin.api.websocket) on a site route of your
// choosing, the way the metrics directive serves /metrics. Caddy's admin
// endpoint refuses browser navigations that carry no Origin or Referer (a
// defence against cross-site requests), so a page a person can type into
// the address bar has to live on a site; protect it like any other admin
// page (basic_auth, remote_ip).
//
// The route serves, below the path it is given: the page at "/", and
// "connections", "connections/{id}" (GET, DELETE) and "upstreams", and
// the push API: "connections/{id}/messages", "channels",
// "channels/{name}/messages" and "publish/" (POST: anyone who reaches the
// route can send to every client).
type Status struct{}

// CaddyModule returns the Caddy module information.
func (Status) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.websocket_status",
		New: func() caddy.Module { return new(Status) },
	}
}

// ServeHTTP serves the status routes below the last "/" of the matched
// path's root: /ws-status/ is the page, /ws-status/connections the list.
func (Status) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	rest := r.URL.Path
	for _, route := range []string{"/connections", "/upstreams", "/channels", "/publish"} {
		if i := strings.LastIndex(rest, route); i >= 0 {
			return apiError(serveStatus(w, r, rest[i+1:]), w)
		}
	}
	if !strings.HasSuffix(rest, "/") {
		// The page fetches relative URLs: it must sit under a slash.
		http.Redirect(w, r, rest+"/", http.StatusFound)
		return nil
	}
	return apiError(serveStatus(w, r, ""), w)
}

// apiError writes an admin-style error as a JSON response.
func apiError(err error, w http.ResponseWriter) error {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(ae.HTTPStatus)
		return writeJSON(w, map[string]string{"error": ae.Err.Error()})
	}
	return err
}

// UnmarshalCaddyfile sets up the handler. Syntax:
//
//	websocket_status [<matcher>]
func (s *Status) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("websocket_status takes no options")
	}
	return nil
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = Status{}
	_ caddyfile.Unmarshaler       = (*Status)(nil)
)
