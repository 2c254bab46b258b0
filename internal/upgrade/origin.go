package upgrade

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Origins decides which browser origins may open a WebSocket. Browsers send
// cookies with a cross-site WebSocket handshake and the same-origin policy
// does not apply, so without this check any page a user visits could talk
// to the backend as that user (cross-site WebSocket hijacking).
//
// The zero value allows only origins on the same host as the request.
type Origins struct {
	any   bool
	exact map[string]bool // "scheme://host[:port]", default port removed
	hosts map[string]bool // "host[:port]" entries given without a scheme
}

// ParseOrigins builds a policy from configured entries: "*" allows every
// origin; "https://chat.example.com" allows that exact origin;
// "chat.example.com:8443" allows that host with any scheme; "null" allows
// the opaque origin of sandboxed frames and file: pages.
func ParseOrigins(entries []string) (Origins, error) {
	var o Origins
	for _, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "*":
			o.any = true
		case e == "null":
			if o.exact == nil {
				o.exact = map[string]bool{}
			}
			o.exact["null"] = true
		case strings.Contains(e, "://"):
			u, err := url.Parse(e)
			if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
				return o, fmt.Errorf("origin %q: want scheme://host[:port]", e)
			}
			if o.exact == nil {
				o.exact = map[string]bool{}
			}
			o.exact[strings.ToLower(u.Scheme)+"://"+stripDefaultPort(u.Scheme, u.Host)] = true
		case e == "" || strings.ContainsAny(e, "/?# "):
			return o, fmt.Errorf("origin %q: want *, null, scheme://host[:port] or host[:port]", e)
		default:
			if o.hosts == nil {
				o.hosts = map[string]bool{}
			}
			o.hosts[strings.ToLower(e)] = true
		}
	}
	return o, nil
}

// Check returns nil when r's Origin is allowed. A request without an Origin
// header is allowed: it does not come from a browser page, and a
// non-browser client can forge any Origin it likes anyway.
func (o Origins) Check(r *http.Request) *Error {
	origin := r.Header.Get("Origin")
	if origin == "" || o.any {
		return nil
	}
	if origin == "null" {
		if o.exact["null"] {
			return nil
		}
		return refuse(http.StatusForbidden, "origin", "Origin", origin, "origin null is not allowed")
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return refuse(http.StatusForbidden, "origin", "Origin", origin, "malformed Origin %q", origin)
	}
	scheme := strings.ToLower(u.Scheme)
	host := stripDefaultPort(scheme, u.Host)
	if o.exact[scheme+"://"+host] || o.hosts[host] {
		return nil
	}
	if host == stripDefaultPort(scheme, strings.ToLower(r.Host)) {
		return nil
	}
	return refuse(http.StatusForbidden, "origin", "Origin", origin,
		"origin %q is not allowed for host %q (list it in origins)", origin, r.Host)
}

func stripDefaultPort(scheme, host string) string {
	host = strings.ToLower(host)
	switch strings.ToLower(scheme) {
	case "http", "ws":
		return strings.TrimSuffix(host, ":80")
	case "https", "wss":
		return strings.TrimSuffix(host, ":443")
	}
	return host
}
