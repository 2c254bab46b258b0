package websocket

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	websocket [<matcher>] [<upstreams...>] {
//	    to <upstreams...>
//	    mode tunnel|terminate|http
//	    dynamic <source> [<args...>]
//	    lb_policy <name> [<options...>]
//	    lb_retries <n>
//	    lb_try_duration <duration>
//	    lb_try_interval <duration>
//	    health_uri <uri>
//	    health_interval <duration>
//	    health_timeout <duration>
//	    health_passes <n>
//	    health_fails <n>
//	    fail_duration <duration>
//	    max_fails <n>
//	    unhealthy_status <codes...>
//	    dial_timeout <duration>
//	    handshake_timeout <duration>
//	    request_timeout <duration>
//	    max_pending <size>
//	    origins <origins...>
//	    max_message_size <size>
//	    compression on|off
//	    subprotocols <names...>
//	    max_lifetime <duration>
//	    close_reason <text>
//	    reload_close_delay <duration>
//	    drain_window <duration>|off
//	    max_connections <n>
//	    max_connections_per_ip <n>
//	    max_message_rate <n>
//	    tls
//	    tls_server_name <name>
//	    tls_insecure_skip_verify
//	    tls_trust_pool <module> [...]
//	    tls_trusted_ca_certs <pem files...>
//	    tls_client_auth <cert file> <key file>
//	    tls_timeout <duration>
//	    client {
//	        keepalive <interval>|off|auto
//	        keepalive_min <duration>
//	        keepalive_max <duration>
//	        pong_timeout <duration>
//	        idle_timeout <duration>|off
//	        write_timeout <duration>|off
//	        announce
//	        on_close close|resume
//	        resume_window <duration>
//	        resume_buffer <size>
//	    }
//	    backend {
//	        keepalive <interval>|off|auto
//	        keepalive_min <duration>
//	        keepalive_max <duration>
//	        pong_timeout <duration>
//	        idle_timeout <duration>|off
//	        write_timeout <duration>|off
//	        discover probe [<uri>]|drops
//	        on_close close|reconnect
//	        reconnect_attempts <n>
//	        reconnect_window <duration>
//	        reconnect_buffer <size>
//	    }
//	}
//
// Upstreams may be given on the directive line, with to, or both. Values
// are checked as they are read, with the same checks Validate applies, so
// a mistake is reported with its file and line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	h.To = append(h.To, d.RemainingArgs()...)
	for d.NextBlock(0) {
		opt := d.Val()
		var err error
		switch opt {
		case "to":
			err = strings1(d, &h.To)
		case "mode":
			err = choice(d, &h.Mode, checkMode)
		case "lb_policy", "lb_retries", "lb_try_duration", "lb_try_interval":
			err = h.lbOption(d, opt)
		case "dynamic":
			err = h.dynamicOption(d)
		case "health_uri", "health_interval", "health_timeout", "health_passes", "health_fails",
			"fail_duration", "max_fails", "unhealthy_status":
			err = h.healthOption(d, opt)
		case "compression":
			err = choice(d, &h.Compression, checkCompression)
		case "dial_timeout":
			err = duration(d, &h.DialTimeout)
		case "handshake_timeout":
			err = duration(d, &h.HandshakeTimeout)
		case "request_timeout":
			err = duration(d, &h.RequestTimeout)
		case "max_pending":
			err = size(d, &h.MaxPending)
		case "max_lifetime":
			err = duration(d, &h.MaxLifetime)
		case "reload_close_delay":
			err = duration(d, &h.ReloadCloseDelay)
		case "drain_window":
			err = timeoutArg(d, &h.DrainWindow, true, false)
		case "max_connections":
			err = count(d, &h.MaxConnections)
		case "max_connections_per_ip":
			err = count(d, &h.MaxConnectionsPerIP)
		case "max_message_rate":
			err = rate(d, &h.MaxMessageRate)
		case "close_reason":
			err = oneArg(d, &h.CloseReason)
		case "max_message_size":
			err = size(d, &h.MaxMessageSize)
		case "subprotocols":
			err = strings1(d, &h.Subprotocols)
		case "origins":
			err = strings1(d, &h.Origins)
		case "tls", "tls_server_name", "tls_insecure_skip_verify", "tls_trust_pool", "tls_trusted_ca_certs", "tls_client_auth", "tls_timeout":
			err = h.tlsOption(d, opt)
		case "client":
			h.Client, err = legBlock(d, opt)
		case "backend":
			h.Backend, err = legBlock(d, opt)
		default:
			return d.Errf("unrecognized websocket option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	if len(h.To) == 0 && h.DynamicUpstreamsRaw == nil {
		return d.Err("websocket needs at least one upstream: websocket [<matcher>] <upstreams...>, 'to <upstreams...>' or 'dynamic <source>' in its block")
	}
	return nil
}

// lbOption reads a load-balancing option, as reverse_proxy's: lb_policy
// takes any http.reverse_proxy.selection_policies module with its own
// Caddyfile syntax.
func (h *Handler) lbOption(d *caddyfile.Dispenser, opt string) error {
	if h.LoadBalancing == nil {
		h.LoadBalancing = new(LoadBalancing)
	}
	lb := h.LoadBalancing
	switch opt {
	case "lb_policy":
		if !d.NextArg() {
			return d.ArgErr()
		}
		if lb.SelectionPolicyRaw != nil {
			return d.Err("lb_policy given twice")
		}
		name := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.selection_policies."+name)
		if err != nil {
			return err
		}
		sel, ok := unm.(reverseproxy.Selector)
		if !ok {
			return d.Errf("module %s is not a selection policy", name)
		}
		lb.SelectionPolicyRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
	case "lb_retries":
		return count(d, &lb.Retries)
	case "lb_try_duration":
		return duration(d, &lb.TryDuration)
	case "lb_try_interval":
		return duration(d, &lb.TryInterval)
	}
	return nil
}

// dynamicOption reads dynamic <source> ..., an http.reverse_proxy.upstreams
// module with its own Caddyfile syntax.
func (h *Handler) dynamicOption(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	if h.DynamicUpstreamsRaw != nil {
		return d.Err("dynamic given twice")
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.upstreams."+name)
	if err != nil {
		return err
	}
	src, ok := unm.(reverseproxy.UpstreamSource)
	if !ok {
		return d.Errf("module %s is not an upstream source", name)
	}
	h.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(src, "source", name, nil)
	return nil
}

// healthOption reads an active or passive health check option.
func (h *Handler) healthOption(d *caddyfile.Dispenser, opt string) error {
	if h.HealthChecks == nil {
		h.HealthChecks = new(HealthChecks)
	}
	hc := h.HealthChecks
	if strings.HasPrefix(opt, "health_") {
		if hc.Active == nil {
			hc.Active = new(ActiveHealthChecks)
		}
	} else if hc.Passive == nil {
		hc.Passive = new(PassiveHealthChecks)
	}
	switch opt {
	case "health_uri":
		return oneArg(d, &hc.Active.URI)
	case "health_interval":
		return duration(d, &hc.Active.Interval)
	case "health_timeout":
		return duration(d, &hc.Active.Timeout)
	case "health_passes":
		return count(d, &hc.Active.Passes)
	case "health_fails":
		return count(d, &hc.Active.Fails)
	case "fail_duration":
		return duration(d, &hc.Passive.FailDuration)
	case "max_fails":
		return count(d, &hc.Passive.MaxFails)
	case "unhealthy_status":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		for _, a := range args {
			n, err := strconv.Atoi(a)
			if err != nil || n < 100 || n > 599 || n == 101 {
				return d.Errf("unhealthy_status: bad status %q (want e.g. 502 503)", a)
			}
			hc.Passive.UnhealthyStatus = append(hc.Passive.UnhealthyStatus, n)
		}
	}
	return nil
}

// tlsOption reads one of the backend TLS options, named as in
// reverse_proxy's http transport.
func (h *Handler) tlsOption(d *caddyfile.Dispenser, opt string) error {
	if h.TLS == nil {
		h.TLS = new(reverseproxy.TLSConfig)
	}
	switch opt {
	case "tls", "tls_insecure_skip_verify":
		if d.NextArg() {
			return d.ArgErr()
		}
		if opt == "tls_insecure_skip_verify" {
			h.TLS.InsecureSkipVerify = true
		}
	case "tls_server_name":
		return oneArg(d, &h.TLS.ServerName)
	case "tls_timeout":
		return duration(d, &h.TLS.HandshakeTimeout)
	case "tls_trusted_ca_certs":
		// reverse_proxy's older name for a file trust pool.
		if h.TLS.CARaw != nil {
			return d.Err("cannot specify both 'tls_trust_pool' and 'tls_trusted_ca_certs'")
		}
		var files []string
		if err := strings1(d, &files); err != nil {
			return err
		}
		raw, err := json.Marshal(map[string]any{"provider": "file", "pem_files": files})
		if err != nil {
			return err
		}
		h.TLS.CARaw = raw
	case "tls_client_auth":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("tls_client_auth: want <cert file> <key file>, got %d values", len(args))
		}
		h.TLS.ClientCertificateFile, h.TLS.ClientCertificateKeyFile = args[0], args[1]
	case "tls_trust_pool":
		if !d.NextArg() {
			return d.ArgErr()
		}
		if h.TLS.CARaw != nil {
			return d.Err("tls_trust_pool given twice, or beside tls_trusted_ca_certs")
		}
		stem := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+stem)
		if err != nil {
			return err
		}
		ca, ok := unm.(caddytls.CA)
		if !ok {
			return d.Errf("module tls.ca_pool.source.%s is not a CA pool source", stem)
		}
		h.TLS.CARaw = caddyconfig.JSONModuleObject(ca, "provider", stem, nil)
	}
	return nil
}

// legBlock reads a client or backend block.
func legBlock(d *caddyfile.Dispenser, name string) (*LegConfig, error) {
	if d.CountRemainingArgs() > 0 {
		return nil, d.Errf("%s takes a block, not arguments", name)
	}
	l := &LegConfig{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if where := legOptionSide[opt]; where != "" && where != name {
			return nil, d.Errf("%s belongs in the %s block", opt, where)
		}
		var err error
		switch opt {
		case "keepalive":
			err = timeoutArg(d, &l.Keepalive, true, true)
		case "idle_timeout":
			err = timeoutArg(d, &l.IdleTimeout, true, false)
		case "write_timeout":
			err = timeoutArg(d, &l.WriteTimeout, true, false)
		case "pong_timeout":
			err = timeoutArg(d, &l.PongTimeout, false, false)
		case "keepalive_min":
			err = duration(d, &l.KeepaliveMin)
		case "keepalive_max":
			err = duration(d, &l.KeepaliveMax)
		case "announce":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			l.Announce = true
		case "on_close":
			check := checkOnClose
			if name == "client" {
				check = func(v string) error { return oneOf(v, "close", "resume") }
			}
			err = choice(d, &l.OnClose, check)
		case "resume_window":
			err = duration(d, &l.ResumeWindow)
		case "resume_buffer":
			err = size(d, &l.ResumeBuffer)
		case "discover":
			// discover probe [<uri>]: the URI is where the backend's
			// WebSockets are (the probe joins there, as a user would).
			args := d.RemainingArgs()
			switch {
			case len(args) == 0 || len(args) > 2:
				err = d.ArgErr()
			case oneOf(args[0], "probe", "drops") != nil:
				err = d.Errf("discover: %v", oneOf(args[0], "probe", "drops"))
			case len(args) == 2 && args[0] != "probe":
				err = d.Errf("discover drops takes no URI")
			case len(args) == 2 && !strings.HasPrefix(args[1], "/"):
				err = d.Errf("discover probe: the URI %q must start with /", args[1])
			default:
				l.Discover = args[0]
				if len(args) == 2 {
					l.ProbeURI = args[1]
				}
			}
		case "reconnect_attempts":
			err = count(d, &l.ReconnectAttempts)
		case "reconnect_window":
			err = duration(d, &l.ReconnectWindow)
		case "reconnect_buffer":
			err = size(d, &l.ReconnectBuffer)
		default:
			return nil, d.Errf("unrecognized option %q in websocket %s block", opt, name)
		}
		if err != nil {
			return nil, err
		}
	}
	return l, nil
}

// legOptionSide names the one block an option belongs in.
var legOptionSide = map[string]string{
	"discover":           "backend",
	"announce":           "client",
	"resume_window":      "client",
	"resume_buffer":      "client",
	"reconnect_attempts": "backend",
	"reconnect_window":   "backend",
	"reconnect_buffer":   "backend",
}

func strings1(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*dst = append(*dst, args...)
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	opt := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes one value, got another: %q", opt, d.Val())
	}
	*dst = v
	return nil
}

// choice reads one value that check accepts.
func choice(d *caddyfile.Dispenser, dst *string, check func(string) error) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	if err := check(v); err != nil {
		return d.Errf("%s: %v", opt, err)
	}
	*dst = v
	return nil
}

func duration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s: bad duration %q (want e.g. 10s, 1m30s)", opt, v)
	}
	if dur <= 0 {
		return d.Errf("%s: duration must be positive, got %q", opt, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// timeoutArg reads a Timeout: a duration, "off" when offOK, "auto" when
// autoOK.
func timeoutArg(d *caddyfile.Dispenser, dst *Timeout, offOK, autoOK bool) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	switch {
	case v == "off" && offOK:
		*dst = Off
		return nil
	case v == "auto" && autoOK:
		*dst = Auto
		return nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		switch {
		case autoOK:
			return d.Errf("%s: bad duration %q (want e.g. 20s, 1m30s, off or auto)", opt, v)
		case offOK:
			return d.Errf("%s: bad duration %q (want e.g. 20s, 1m30s, or off)", opt, v)
		}
		return d.Errf("%s: bad duration %q (want e.g. 10s, 1m30s)", opt, v)
	}
	if dur <= 0 {
		return d.Errf("%s: duration must be positive, got %q", opt, v)
	}
	*dst = Timeout(dur)
	return nil
}

// size reads a size ("1MiB", "64KB", "1000") as bytes.
func size(d *caddyfile.Dispenser, dst *int64) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > 1<<40 {
		return d.Errf("%s: bad size %q (want e.g. 1MiB, 64KB)", opt, v)
	}
	*dst = int64(n)
	return nil
}

// count reads a positive whole number.
func count(d *caddyfile.Dispenser, dst *int) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return d.Errf("%s: bad count %q (want a positive whole number)", opt, v)
	}
	*dst = n
	return nil
}

func rate(d *caddyfile.Dispenser, dst *float64) error {
	opt := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n <= 0 {
		return d.Errf("%s: bad rate %q (want messages per second, e.g. 50)", opt, v)
	}
	*dst = n
	return nil
}

// The checks of enumerated options, shared by the Caddyfile and Validate.

func checkMode(v string) error { return oneOf(v, "tunnel", "terminate", "http") }

func checkCompression(v string) error { return oneOf(v, "on", "off") }

func checkOnClose(v string) error { return oneOf(v, "close", "reconnect") }

// oneOf accepts one of choices, or "" (not set).
func oneOf(v string, choices ...string) error {
	if v == "" {
		return nil
	}
	for _, c := range choices {
		if v == c {
			return nil
		}
	}
	return fmt.Errorf("unknown value %q (want %s)", v, strings.Join(choices, " or "))
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var ws Handler
	err := ws.UnmarshalCaddyfile(h.Dispenser)
	return &ws, err
}
