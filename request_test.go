package websocket

import (
	"context"
	"net/http/httptest"
	"testing"

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
