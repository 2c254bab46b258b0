package websocket

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("websocket", parseGlobalOption)
}

// App is Caddy app websocket: what every site of an instance shares, set
// with the global option of the same name. Today that is the fleet's
// message bus:
//
//	{
//		websocket {
//			bus redis://10.0.0.5:6379 {
//				prefix chat
//			}
//		}
//	}
type App struct {
	// BusRaw is the broker that carries the push API's messages between
	// the instances of a fleet (module websocket.bus.redis or
	// websocket.bus.nats): a publish or a push on any instance's admin API
	// reaches the connections of every instance. Default: none (they reach
	// this instance's connections only).
	BusRaw json.RawMessage `json:"bus,omitempty" caddy:"namespace=websocket.bus inline_key=broker"`

	bus *fleetBus
	key string
}

// activeApp is the websocket app of the running config; its bus is the
// one publishes go through and deliveries come from.
var activeApp atomic.Pointer[App]

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "websocket", New: func() caddy.Module { return new(App) }}
}

// Provision opens the bus, or takes the one the running config opened to
// the same broker: a reload keeps its connection and subscriptions.
func (a *App) Provision(ctx caddy.Context) error {
	if err := initMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if a.BusRaw == nil {
		return nil
	}
	mod, err := ctx.LoadModule(a, "BusRaw")
	if err != nil {
		return fmt.Errorf("loading bus: %v", err)
	}
	b := mod.(broker)
	key := b.brokerKey()
	v, _, err := fleetBuses.LoadOrNew(key, func() (caddy.Destructor, error) { return openBus(b) })
	if err != nil {
		return fmt.Errorf("bus %s: %v", b.redacted(), err)
	}
	a.bus, a.key = v.(*fleetBus), key
	return nil
}

// Start makes this config's bus the one in use, subscribed to what the
// live connections need.
func (a *App) Start() error {
	activate(a)
	return nil
}

// Stop leaves the bus to the config that replaced this one, if any.
func (a *App) Stop() error {
	activeApp.CompareAndSwap(a, nil)
	return nil
}

// Cleanup gives back this config's use of the bus: the last user closes
// it.
func (a *App) Cleanup() error {
	if a.key != "" {
		_, err := fleetBuses.Delete(a.key)
		return err
	}
	return nil
}

// parseGlobalOption reads the websocket global option:
//
//	websocket {
//		bus <url> {
//			prefix <prefix>
//		}
//	}
//
// The URL's scheme picks the broker: redis://, rediss:// (TLS) or unix://
// for Redis, nats:// or tls:// for NATS.
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	var app App
	d.Next() // websocket
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "bus":
			if app.BusRaw != nil {
				return nil, d.Err("bus: only one per instance")
			}
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			raw := d.Val()
			name, err := brokerFor(raw)
			if err != nil {
				return nil, d.Errf("bus: %v", err)
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			var prefix string
			for d.NextBlock(1) {
				switch d.Val() {
				case "prefix":
					if !d.AllArgs(&prefix) {
						return nil, d.ArgErr()
					}
				default:
					return nil, d.Errf("bus: unknown option %q (want prefix)", d.Val())
				}
			}
			var mod caddy.Module = &RedisBus{URL: raw, Prefix: prefix}
			if name == "nats" {
				mod = &NATSBus{URL: raw, Prefix: prefix}
			}
			app.BusRaw = caddyconfig.JSONModuleObject(mod, "broker", name, nil)
		default:
			return nil, d.Errf("unknown websocket global option %q (want bus)", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "websocket", Value: caddyconfig.JSON(app, nil)}, nil
}

// brokerFor is the broker module a bus URL's scheme names. Only the
// scheme is read here: the rest may hold placeholders ({env.REDIS_URL}'s
// password), replaced when the module is provisioned.
func brokerFor(raw string) (string, error) {
	scheme, _, _ := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		return "redis", nil
	case "nats", "tls":
		return "nats", nil
	}
	return "", fmt.Errorf("%q: want redis://, rediss://, unix:// (Redis) or nats://, tls:// (NATS)", raw)
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
