package websocket_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// idleBackend echoes text and answers Pings, and hangs up (no Close) after
// idle without a frame: a legacy backend's idle timeout. With refuseProbe,
// it answers the gateway's probe with 403.
func idleBackend(t *testing.T, idle time.Duration, refuseProbe bool) *wstest.Backend {
	respond := func(r *http.Request) string {
		if refuseProbe && r.Header.Get("X-Websocket-Probe") != "" {
			return "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
		}
		return wstest.Switch(r)
	}
	return wstest.NewBackend(t, respond, func(p *wstest.Peer) {
		for {
			f, err := p.ReadFrame(idle)
			if err != nil {
				return
			}
			switch f.Op {
			case frame.OpText:
				p.WriteFrame(frame.OpText, f.Payload)
			case frame.OpPing:
				p.WriteFrame(frame.OpPong, f.Payload)
			case frame.OpClose:
				p.WriteFrame(frame.OpClose, f.Payload)
				return
			}
		}
	})
}

// TestDiscoveryProbe: a backend with a 2 s idle timeout, never seen before.
// With keepalive auto and discover probe, the gateway's probe finds the
// timeout, not the users: two clients that connect at once and stay silent
// for 6 s both survive, and the log has the probe's learned value. Against
// a backend that refuses the probe, the gateway says so and learns from
// drops as before.
func TestDiscoveryProbe(t *testing.T) {
	backend := idleBackend(t, 2*time.Second, false)
	refusing := idleBackend(t, 2*time.Second, true)
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /probe %s {
			backend {
				keepalive auto
				keepalive_min 500ms
				keepalive_max 20s
				discover probe
			}
		}
		websocket /refusing %s {
			backend {
				keepalive auto
				keepalive_min 500ms
				discover probe
			}
		}
	}`, backend.Addr, refusing.Addr))
	var peers []*wstest.Peer
	for range 2 {
		p, res := wstest.Dial(t, addr, wstest.UpgradeRequest(addr, "/probe", wstest.Key()))
		if p == nil {
			t.Fatalf("upgrade: %d", res.StatusCode)
		}
		peers = append(peers, p)
	}
	time.Sleep(6 * time.Second)
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprint("still here ", i)
			if err := p.WriteFrame(frame.OpText, []byte(msg)); err != nil {
				t.Errorf("client %d after 6 s: %v", i, err)
				return
			}
			for {
				f, err := p.ReadFrame(3 * time.Second)
				if err != nil {
					t.Errorf("client %d after 6 s of silence: %v", i, err)
					return
				}
				if f.Op == frame.OpPing {
					p.WriteFrame(frame.OpPong, f.Payload)
					continue
				}
				if f.Op != frame.OpText || string(f.Payload) != msg {
					t.Errorf("client %d: %v %q", i, f.Op, f.Payload)
				}
				return
			}
		}()
	}
	wg.Wait()
	learned := wstest.LogEntries(t, "websocket probe learned backend idle timeout")
	if len(learned) != 1 {
		t.Fatalf("probe log lines: %v", learned)
	}
	t.Logf("probe: %v", learned[0])
	if it, _ := learned[0]["idle_timeout"].(float64); it < 1.8 || it > 2.5 {
		t.Fatalf("probe learned %vs, want about 2s", it)
	}
	if drops := wstest.LogEntries(t, "websocket learned backend idle timeout"); len(drops) != 0 {
		t.Fatalf("a user connection was dropped to learn: %v", drops)
	}
	refused := wstest.LogEntries(t, "websocket probe refused; learning from drops instead")
	if len(refused) != 1 {
		t.Fatalf("refused probe log lines: %v", refused)
	}
	t.Logf("refused: %v", refused[0])
}
