package websocket_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddy-websocket/caddy-websocket/examples/legacychat"
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
// a backend that refuses the probe, the gateway says so, learns from
// drops, and its users ping it every keepalive_min, what is known to be
// safe, until something is learned: none is dropped.
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
	for _, path := range []string{"/probe", "/probe", "/refusing", "/refusing"} {
		p, res := wstest.Dial(t, addr, wstest.UpgradeRequest(addr, path, wstest.Key()))
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
	refused := wstest.LogEntries(t, "websocket probe refused")
	if len(refused) != 1 {
		t.Fatalf("refused probe log lines: %v", refused)
	}
	t.Logf("refused: %v", refused[0])
	// Its users stayed at keepalive_min, what is known to be safe: none
	// was dropped to learn (the drops check above covers both routes).
	unproven := wstest.LogEntries(t, "websocket probe ended without a result; users ping every keepalive_min until a timeout is learned")
	if len(unproven) != 1 || unproven[0]["keepalive"] != 0.5 {
		t.Fatalf("unproven probe log lines: %v", unproven)
	}
}

// TestProbeInBroadcastingRoom: the seed's own backend, never seen before:
// a chat room (examples/legacychat) that drops a member after 2 s without a
// frame from it and broadcasts every line to every member — the probe is a
// member too. Two members join while the probe runs, each says a line
// (which the room sends the probe as well), then both are silent for three
// times the room's timeout. In tunnel and terminate mode: the probe learns
// the room's timeout from the time since it last sent, not from the time
// since the room last wrote to it (which the broadcast reset), and no
// member is dropped, the room having been pinged every keepalive_min
// while the probe ran.
func TestProbeInBroadcastingRoom(t *testing.T) {
	const idle = 2 * time.Second
	var sites string
	for i, mode := range []string{"tunnel", "terminate"} {
		room := httptest.NewServer(legacychat.New(idle))
		t.Cleanup(room.Close)
		sites += fmt.Sprintf(`http://127.0.0.1:{PORT%[3]d} {
		websocket /ws %[2]s {
			mode %[1]s
			client {
				keepalive off
			}
			backend {
				keepalive auto
				discover probe /ws
			}
		}
	}
	`, mode, hostOf(room), i+1)
	}
	addrs := wstest.StartCaddyPorts(t, sites, 2)
	time.Sleep(idle * 2 / 3) // the members join while the probe runs
	type member struct {
		name string
		p    *wstest.Peer
	}
	var members []member
	for i, mode := range []string{"tunnel", "terminate"} {
		for _, name := range []string{"alice", "bob"} {
			p, res := wstest.Dial(t, addrs[i], wstest.UpgradeRequest(addrs[i], "/ws", wstest.Key()))
			if p == nil {
				t.Fatalf("%s: upgrade: %d", mode, res.StatusCode)
			}
			members = append(members, member{mode + "-" + name, p})
		}
	}
	say := func(m member, line string) {
		if err := m.p.WriteFrame(frame.OpText, []byte(m.name+":"+line)); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
	// hears reads m's frames until it has line, skipping others.
	hears := func(m member, line string) {
		for {
			f, err := m.p.ReadFrame(3 * time.Second)
			if err != nil {
				t.Fatalf("%s waiting for %q: %v", m.name, line, err)
			}
			if string(f.Payload) == line {
				return
			}
		}
	}
	// Each says hello once in the room: alice first (her own line back
	// says the room has her), then bob, whom both hear.
	for i := 0; i < len(members); i += 2 {
		alice, bob := members[i], members[i+1]
		say(alice, "hello")
		hears(alice, alice.name+":hello")
		say(bob, "hello")
		hears(alice, bob.name+":hello")
		hears(bob, bob.name+":hello")
	}
	time.Sleep(3 * idle)
	for i := 0; i < len(members); i += 2 {
		alice, bob := members[i], members[i+1]
		say(alice, "still here")
		hears(bob, alice.name+":still here")
		say(bob, "still here")
		hears(alice, bob.name+":still here")
	}
	if drops := wstest.LogEntries(t, "websocket learned backend idle timeout"); len(drops) != 0 {
		t.Fatalf("a member was dropped to learn: %v", drops)
	}
	learned := wstest.LogEntries(t, "websocket probe learned backend idle timeout")
	if len(learned) != 2 {
		t.Fatalf("probe log lines: %v", learned)
	}
	for _, l := range learned {
		t.Logf("probe: %v", l)
		it, _ := l["idle_timeout"].(float64)
		sinceBackend, _ := l["since_backend_sent"].(float64)
		if it < 1.9 || it > 2.5 || l["counts"] != "received" {
			t.Errorf("probe learned %vs counting %v, want about 2s counting what the room receives", it, l["counts"])
		}
		if sinceBackend > 1.6 {
			t.Errorf("the room's broadcast did not reach the probe (%vs since the room last wrote to it)", sinceBackend)
		}
	}
}
