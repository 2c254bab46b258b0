package websocket

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestForwardedFor: the client's address is appended to X-Forwarded-For
// only when Caddy trusts the peer as a proxy; otherwise a client's own
// X-Forwarded-* headers are replaced, so it cannot spoof them.
func TestForwardedFor(t *testing.T) {
	for _, tc := range []struct {
		trusted            bool
		wantXFF, wantProto string
		wantHost           string
	}{
		{false, "10.0.0.9", "http", "chat.example"},
		{true, "1.2.3.4, 10.0.0.9", "https", "outer.example"},
	} {
		r := httptest.NewRequest("GET", "http://chat.example/ws", nil)
		r.RemoteAddr = "10.0.0.9:5555"
		r.Header.Set("X-Forwarded-For", "1.2.3.4")
		r.Header.Set("X-Forwarded-Proto", "https")
		r.Header.Set("X-Forwarded-Host", "outer.example")
		r.Header.Set("Connection", "Upgrade, X-Hop")
		r.Header.Set("X-Hop", "secret")
		r.Header.Set("Upgrade", "websocket")
		ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.TrustedProxyVarKey: tc.trusted})
		hdr := forwardHeaders(r.WithContext(ctx))
		if got := hdr.Get("X-Forwarded-For"); got != tc.wantXFF {
			t.Errorf("trusted=%v: X-Forwarded-For %q, want %q", tc.trusted, got, tc.wantXFF)
		}
		if got := hdr.Get("X-Forwarded-Proto"); got != tc.wantProto {
			t.Errorf("trusted=%v: X-Forwarded-Proto %q, want %q", tc.trusted, got, tc.wantProto)
		}
		if got := hdr.Get("X-Forwarded-Host"); got != tc.wantHost {
			t.Errorf("trusted=%v: X-Forwarded-Host %q, want %q", tc.trusted, got, tc.wantHost)
		}
		if hdr.Get("X-Hop") != "" || hdr.Get("Connection") != "Upgrade" {
			t.Errorf("hop-by-hop headers forwarded: %v", hdr)
		}
	}
}

// TestParseUpstream covers every accepted form and the refusals.
func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]upstream{
		"127.0.0.1:9000":      {"tcp", "127.0.0.1:9000", "127.0.0.1:9000", false},
		"ws://chat.internal":  {"tcp", "chat.internal:80", "ws://chat.internal", false},
		"http://[::1]:81":     {"tcp", "[::1]:81", "http://[::1]:81", false},
		"wss://chat.internal": {"tcp", "chat.internal:443", "wss://chat.internal", true},
		"https://chat:8443":   {"tcp", "chat:8443", "https://chat:8443", true},
		"unix//run/chat.sock": {"unix", "/run/chat.sock", "unix//run/chat.sock", false},
	} {
		got, err := parseUpstream(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"ws://chat/path": "a path is not allowed",
		"ftp://chat:21":  "unknown scheme",
		"chat":           "want host:port",
	} {
		if _, err := parseUpstream(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// TestValidate: every combination the handler refuses, with its reason.
func TestValidate(t *testing.T) {
	to := []string{"127.0.0.1:9000"}
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{}, "no upstream"},
		{Handler{To: to, Mode: "bridge"}, `mode: unknown value "bridge"`},
		{Handler{To: to, MaxMessageSize: 10}, "need mode terminate"},
		{Handler{To: to, Compression: "off"}, "need mode terminate"},
		{Handler{To: to, MaxMessageRate: 5}, "needs mode terminate"},
		{Handler{To: to, Mode: "terminate", Compression: "max"}, `compression: unknown value "max"`},
		{Handler{To: to, Mode: "terminate", Client: &LegConfig{OnClose: "reconnect"}}, "on_close belongs in the backend block"},
		{Handler{To: to, Mode: "terminate", Backend: &LegConfig{OnClose: "retry"}}, `on_close: unknown value "retry"`},
		{Handler{To: to, Client: &LegConfig{PongTimeout: Auto}}, "only keepalive can be auto"},
		{Handler{To: to, Backend: &LegConfig{KeepaliveMin: caddy.Duration(time.Minute), KeepaliveMax: caddy.Duration(time.Second)}}, "keepalive_min 1m0s is above keepalive_max 1s"},
		{Handler{To: to, Backend: &LegConfig{Announce: true}}, "announce belongs in the client block"},
		{Handler{To: to, MaxConnections: -1}, "must be positive"},
	} {
		err := tc.h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.h, err, tc.want)
		}
	}
	ok := Handler{To: to, Mode: "terminate", Compression: "off", Backend: &LegConfig{OnClose: "reconnect", Keepalive: Auto}}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}
