package websocket

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

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
		{Handler{To: to, Mode: "terminate", Client: &LegConfig{OnClose: "reconnect"}}, "a client is resumed, not reconnected"},
		{Handler{To: to, Client: &LegConfig{OnClose: "resume"}}, "client on_close resume needs mode terminate or http"},
		{Handler{To: to, Mode: "terminate", Client: &LegConfig{ResumeWindow: caddy.Duration(time.Second)}}, "need on_close resume"},
		{Handler{To: to, Mode: "terminate", Backend: &LegConfig{ResumeBuffer: 10}}, "belong in the client block"},
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
