package websocket

import (
	"net/http"
	"testing"

	"github.com/caddy-websocket/caddy-websocket/internal/terminate"
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// TestModeAnswers: what each mode puts in the client's answer (101 or, on
// an HTTP/2 or HTTP/3 stream, 200) from the backend's 101, and what it
// refuses.
func TestModeAnswers(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	for _, tc := range []struct {
		name     string
		m        mode
		h        Handler
		req      http.Header // the client's
		extended bool
		backend  http.Header // the backend's 101
		want     http.Header // in the client's answer ("" : absent)
		status   int         // of a refusal; 0: none
	}{
		{name: "tunnel passes the backend's 101 on", m: tunnelMode{},
			backend: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Accept": {"x"}, "Sec-Websocket-Protocol": {"chat"}, "Set-Cookie": {"b=2"}},
			want:    http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Accept": {"x"}, "Sec-Websocket-Protocol": {"chat"}, "Set-Cookie": {"a=1", "b=2"}}},
		{name: "tunnel over a stream drops the upgrade's headers", m: tunnelMode{}, extended: true,
			backend: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Accept": {"x"}, "Sec-Websocket-Protocol": {"chat"}},
			want:    http.Header{"Upgrade": {""}, "Connection": {""}, "Sec-Websocket-Accept": {""}, "Sec-Websocket-Protocol": {"chat"}}},
		{name: "terminate makes its own 101", m: terminateMode{},
			req:     http.Header{"Sec-Websocket-Key": {key}, "Sec-Websocket-Protocol": {"v1, v2"}, "Sec-Websocket-Extensions": {"permessage-deflate"}},
			backend: http.Header{"Sec-Websocket-Accept": {"backend's"}, "Sec-Websocket-Protocol": {"v2"}},
			want:    http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Accept": {upgrade.AcceptKey(key)}, "Sec-Websocket-Protocol": {"v2"}, "Sec-Websocket-Extensions": {terminate.DeflateResponse}}},
		{name: "terminate without compression", m: terminateMode{}, h: Handler{Compression: "off"},
			req:     http.Header{"Sec-Websocket-Key": {key}, "Sec-Websocket-Extensions": {"permessage-deflate"}},
			backend: http.Header{},
			want:    http.Header{"Sec-Websocket-Extensions": {""}}},
		{name: "terminate picks the first required subprotocol offered", m: terminateMode{}, h: Handler{Subprotocols: []string{"v3", "v2"}},
			req:     http.Header{"Sec-Websocket-Key": {key}, "Sec-Websocket-Protocol": {"v1, v2, v3"}},
			backend: http.Header{},
			want:    http.Header{"Sec-Websocket-Protocol": {"v3"}}},
		{name: "terminate over a stream: no accept key", m: terminateMode{}, extended: true,
			backend: http.Header{},
			want:    http.Header{"Upgrade": {""}, "Sec-Websocket-Accept": {""}}},
		{name: "terminate refuses a subprotocol the client did not offer", m: terminateMode{},
			req:     http.Header{"Sec-Websocket-Key": {key}, "Sec-Websocket-Protocol": {"v1"}},
			backend: http.Header{"Sec-Websocket-Protocol": {"v9"}},
			status:  http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: tc.req}
			if r.Header == nil {
				r.Header = http.Header{}
			}
			if tc.extended {
				// An HTTP/3 extended CONNECT, as quic-go hands it over.
				r.Method, r.ProtoMajor, r.Proto = http.MethodConnect, 3, "websocket"
			}
			res := &http.Response{StatusCode: http.StatusSwitchingProtocols, Header: tc.backend}
			out := http.Header{"Set-Cookie": {"a=1"}} // a cookie selection policy's
			_, rf := tc.m.answer(&tc.h, r, res, out)
			if tc.status != 0 {
				if rf == nil || rf.status != tc.status {
					t.Fatalf("refusal %v, want status %d", rf, tc.status)
				}
				return
			}
			if rf != nil {
				t.Fatalf("refused: %v", rf.reason)
			}
			for k, v := range tc.want {
				got := out.Values(k)
				if v[0] == "" {
					if len(got) != 0 {
						t.Errorf("%s: %q, want none", k, got)
					}
					continue
				}
				if len(got) != len(v) {
					t.Errorf("%s: %q, want %q", k, got, v)
					continue
				}
				for i := range v {
					if got[i] != v[i] {
						t.Errorf("%s: %q, want %q", k, got, v)
					}
				}
			}
		})
	}
}
