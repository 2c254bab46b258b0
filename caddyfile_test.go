package websocket_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, body string) (map[string]any, error) {
	t.Helper()
	cf := ":8080 {\n" + body + "\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		return nil, err
	}
	// Find the websocket handler in the adapted config.
	var cfg any
	json.Unmarshal(out, &cfg)
	var found map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "websocket" && found == nil {
				found = v
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(cfg)
	if found == nil {
		t.Fatalf("no websocket handler in %s", out)
	}
	return found, nil
}

func TestFullSyntax(t *testing.T) {
	h, err := adapt(t, `	websocket /ws 127.0.0.1:9000 {
		to 127.0.0.1:9001 ws://127.0.0.1:9002
		mode tunnel
		lb_policy round_robin
		dial_timeout 2s
		handshake_timeout 3s
		origins https://app.example.com
		origins partner.example
		client {
			keepalive 25s
			pong_timeout 10s
			idle_timeout off
			write_timeout 5s
		}
		backend {
			keepalive off
			idle_timeout 5m
		}
	}
	reverse_proxy 127.0.0.1:9000`)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(h)
	want := `{"backend":{"idle_timeout":"5m0s","keepalive":"off"},` +
		`"client":{"idle_timeout":"off","keepalive":"25s","pong_timeout":"10s","write_timeout":"5s"},` +
		`"dial_timeout":2000000000,"handler":"websocket","handshake_timeout":3000000000,"load_balancing":{"selection_policy":{"policy":"round_robin"}},"mode":"tunnel",` +
		`"origins":["https://app.example.com","partner.example"],"to":["127.0.0.1:9000","127.0.0.1:9001","ws://127.0.0.1:9002"]}`
	if string(got) != want {
		t.Fatalf("adapted to\n%s\nwant\n%s", got, want)
	}
}

// TestDiscoverProbeURI: discover probe takes the URI its probe joins at.
func TestDiscoverProbeURI(t *testing.T) {
	h, err := adapt(t, "\twebsocket 127.0.0.1:9000 {\n\t\tbackend {\n\t\t\tkeepalive auto\n\t\t\tdiscover probe /ws?room=1\n\t\t}\n\t}")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(h["backend"]); string(got) != `{"discover":"probe","keepalive":"auto","probe_uri":"/ws?room=1"}` {
		t.Fatalf("%s", got)
	}
}

func TestShortForm(t *testing.T) {
	h, err := adapt(t, "\twebsocket 127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(h); string(got) != `{"handler":"websocket","to":["127.0.0.1:9000"]}` {
		t.Fatalf("%s", got)
	}
}

func TestErrorsNameTheLine(t *testing.T) {
	cases := []struct{ body, want string }{
		{"\twebsocket", "at least one upstream"},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tkeepalive 20s\n\t}", `unrecognized websocket option "keepalive", at Caddyfile:3`},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tclient {\n\t\t\tkeepalive soon\n\t\t}\n\t}", `keepalive: bad duration "soon"`},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tclient {\n\t\t\tpong_timeout off\n\t\t}\n\t}", "Caddyfile:4"},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tmode bridge\n\t}", `mode: unknown value "bridge"`},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tdial_timeout\n\t}", "Caddyfile:3"},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tbackend {\n\t\t\tping 1s\n\t\t}\n\t}", `unrecognized option "ping" in websocket backend block, at Caddyfile:4`},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tdial_timeout -1s\n\t}", "must be positive"},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tbackend {\n\t\t\tdiscover probe ws\n\t\t}\n\t}", `the URI "ws" must start with /, at Caddyfile:4`},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tbackend {\n\t\t\tdiscover drops /ws\n\t\t}\n\t}", "discover drops takes no URI"},
		{"\twebsocket 127.0.0.1:9000 {\n\t\tbackend {\n\t\t\tdiscover sometimes\n\t\t}\n\t}", `unknown value "sometimes"`},
	}
	for _, c := range cases {
		_, err := adapt(t, c.body)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.body, err, c.want)
		}
	}
}

// TestBusGlobalOption: the websocket global option becomes the websocket
// app, the URL's scheme picking the broker module; mistakes name the line.
func TestBusGlobalOption(t *testing.T) {
	adaptGlobal := func(global string) (string, error) {
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n"+global+"\n}\n:8080 {\n\trespond ok\n}\n"), nil)
		if err != nil {
			return "", err
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		json.Unmarshal(out, &cfg)
		return string(cfg.Apps["websocket"]), nil
	}
	for global, want := range map[string]string{
		"\twebsocket {\n\t\tbus redis://:secret@10.0.0.5:6379/0\n\t}":                 `{"bus":{"broker":"redis","url":"redis://:secret@10.0.0.5:6379/0"}}`,
		"\twebsocket {\n\t\tbus rediss://cache:6380 {\n\t\t\tprefix chat\n\t\t}\n\t}": `{"bus":{"broker":"redis","prefix":"chat","url":"rediss://cache:6380"}}`,
		"\twebsocket {\n\t\tbus nats://10.0.0.6:4222\n\t}":                            `{"bus":{"broker":"nats","url":"nats://10.0.0.6:4222"}}`,
	} {
		got, err := adaptGlobal(global)
		if err != nil || got != want {
			t.Errorf("%q: %s %v, want %s", global, got, err, want)
		}
	}
	for global, want := range map[string]string{
		"\twebsocket {\n\t\tbus http://10.0.0.5\n\t}":                              `want redis://, rediss://, unix:// (Redis) or nats://, tls:// (NATS), at Caddyfile:3`,
		"\twebsocket {\n\t\tbus\n\t}":                                              "Caddyfile:3",
		"\twebsocket {\n\t\tbus redis://a:1\n\t\tbus redis://b:1\n\t}":             "only one per instance, at Caddyfile:4",
		"\twebsocket {\n\t\tbus redis://a:1 {\n\t\t\tchannel_prefix x\n\t\t}\n\t}": `unknown option "channel_prefix"`,
		"\twebsocket {\n\t\tfleet redis://a:1\n\t}":                                `unknown websocket global option "fleet"`,
	} {
		if _, err := adaptGlobal(global); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", global, err, want)
		}
	}
}
