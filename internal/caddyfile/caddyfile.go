// Package caddyfile parses the websocket directive of a Caddyfile into the
// handler's JSON configuration. It knows the grammar and the JSON names and
// checks every value as it reads it, so a mistake is reported with its file
// and line; the handler then decodes the JSON like any other config.
package caddyfile

import (
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Parse reads one websocket directive from d, which is positioned on the
// directive name (the matcher, if any, already taken off by Caddy), and
// returns the handler config as a JSON object without the "handler" key.
//
// The syntax is documented on the handler's UnmarshalCaddyfile.
func Parse(d *caddyfile.Dispenser) (map[string]any, error) {
	cfg := map[string]any{}
	var to []string
	d.Next() // the directive name
	to = append(to, d.RemainingArgs()...)
	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "to":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			to = append(to, args...)
		case "mode":
			v, err := oneOf(d, "tunnel", "terminate")
			if err != nil {
				return nil, err
			}
			cfg["mode"] = v
		case "lb_policy":
			v, err := oneOf(d, "first", "round_robin")
			if err != nil {
				return nil, err
			}
			cfg["lb_policy"] = v
		case "dial_timeout", "handshake_timeout", "max_lifetime", "reload_close_delay":
			v, err := duration(d, false)
			if err != nil {
				return nil, err
			}
			cfg[opt] = v
		case "max_connections", "max_connections_per_ip":
			v, err := count(d)
			if err != nil {
				return nil, err
			}
			cfg[opt] = v
		case "max_message_rate":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 {
				return nil, d.Errf("max_message_rate: bad rate %q (want messages per second, e.g. 50)", v)
			}
			cfg[opt] = n
		case "close_reason":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			cfg[opt] = v
		case "max_message_size":
			v, err := size(d)
			if err != nil {
				return nil, err
			}
			cfg[opt] = v
		case "compression":
			v, err := oneOf(d, "on", "off")
			if err != nil {
				return nil, err
			}
			cfg[opt] = v
		case "subprotocols":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			cfg[opt] = append(stringList(cfg[opt]), args...)
		case "origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			cfg["origins"] = append(stringList(cfg["origins"]), args...)
		case "client", "backend":
			if d.CountRemainingArgs() > 0 {
				return nil, d.Errf("%s takes a block, not arguments", opt)
			}
			side, err := parseSide(d, opt)
			if err != nil {
				return nil, err
			}
			cfg[opt] = side
		default:
			return nil, d.Errf("unrecognized websocket option %q", opt)
		}
	}
	if len(to) == 0 {
		return nil, d.Err("websocket needs at least one upstream: websocket [<matcher>] <upstreams...> or 'to <upstreams...>' in its block")
	}
	cfg["to"] = to
	return cfg, nil
}

func parseSide(d *caddyfile.Dispenser, name string) (map[string]any, error) {
	side := map[string]any{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "keepalive":
			if d.CountRemainingArgs() == 1 && d.NextArg() {
				if d.Val() == "auto" {
					side[opt] = "auto"
					continue
				}
				d.Prev()
			}
			v, err := duration(d, true)
			if err != nil {
				return nil, err
			}
			side[opt] = v
		case "idle_timeout", "write_timeout":
			v, err := duration(d, true)
			if err != nil {
				return nil, err
			}
			side[opt] = v
		case "keepalive_min", "keepalive_max":
			v, err := duration(d, false)
			if err != nil {
				return nil, err
			}
			side[opt] = v
		case "announce":
			if name != "client" {
				return nil, d.Errf("announce belongs in the client block")
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			side[opt] = true
		case "pong_timeout":
			v, err := duration(d, false)
			if err != nil {
				return nil, err
			}
			side[opt] = v
		case "on_close", "reconnect_attempts", "reconnect_window", "reconnect_buffer":
			if name != "backend" {
				return nil, d.Errf("%s belongs in the backend block", opt)
			}
			var v any
			var err error
			switch opt {
			case "on_close":
				v, err = oneOf(d, "close", "reconnect")
			case "reconnect_attempts":
				v, err = count(d)
			case "reconnect_window":
				v, err = duration(d, false)
			case "reconnect_buffer":
				v, err = size(d)
			}
			if err != nil {
				return nil, err
			}
			side[opt] = v
		default:
			return nil, d.Errf("unrecognized option %q in websocket %s block", opt, name)
		}
	}
	return side, nil
}

// duration reads exactly one duration argument, or "off" when allowed.
func duration(d *caddyfile.Dispenser, offOK bool) (string, error) {
	opt := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return "", err
	}
	if offOK && v == "off" {
		return v, nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		if offOK {
			if opt == "keepalive" {
				return "", d.Errf("%s: bad duration %q (want e.g. 20s, 1m30s, off or auto)", opt, v)
			}
			return "", d.Errf("%s: bad duration %q (want e.g. 20s, 1m30s, or off)", opt, v)
		}
		return "", d.Errf("%s: bad duration %q (want e.g. 10s, 1m30s)", opt, v)
	}
	if dur <= 0 {
		return "", d.Errf("%s: duration must be positive, got %q", opt, v)
	}
	return v, nil
}

// size reads one size argument ("1MiB", "64KB", "1000") as bytes.
func size(d *caddyfile.Dispenser) (int64, error) {
	opt := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("%s: bad size %q (want e.g. 1MiB, 64KB)", opt, v)
	}
	return int64(n), nil
}

// count reads one positive whole number.
func count(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, d.Errf("%s: bad count %q (want a positive whole number)", opt, v)
	}
	return n, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one value, got another: %q", opt, d.Val())
	}
	return v, nil
}

func oneOf(d *caddyfile.Dispenser, choices ...string) (string, error) {
	opt := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return "", err
	}
	for _, c := range choices {
		if v == c {
			return v, nil
		}
	}
	return "", d.Errf("%s: unknown value %q (want %s)", opt, v, strings.Join(choices, " or "))
}

func stringList(v any) []string {
	l, _ := v.([]string)
	return l
}
