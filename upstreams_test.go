package websocket

import (
	"strings"
	"testing"
)

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
