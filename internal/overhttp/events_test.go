package overhttp

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The encodings of the spec's own examples
// (https://pushpin.org/docs/protocols/websocket-over-http/).
func TestSpecExamples(t *testing.T) {
	for _, tc := range []struct {
		wire string
		e    Event
	}{
		{"TEXT B\r\nhello world\r\n", Event{Type: Text, Content: []byte("hello world")}},
		{"OPEN\r\n", Event{Type: Open}},
		{"TEXT 5\r\nhello\r\n", Event{Type: Text, Content: []byte("hello")}},
		{"CLOSE 2\r\n\x03\xe8\r\n", Event{Type: Close, Content: CloseContent(1000, "")}},
		{"DISCONNECT\r\n", Event{Type: Disconnect}},
		{"PING\r\n", Event{Type: Ping}},
		{"TEXT 0\r\n\r\n", Event{Type: Text, Content: []byte{}}},
	} {
		if got := string(Append(nil, tc.e)); got != tc.wire {
			t.Errorf("Append(%v) = %q, want %q", tc.e, got, tc.wire)
		}
		got, err := Decode([]byte(tc.wire), 0)
		if err != nil || len(got) != 1 || got[0].Type != tc.e.Type || !bytes.Equal(got[0].Content, tc.e.Content) ||
			(got[0].Content == nil) != (tc.e.Content == nil) {
			t.Errorf("Decode(%q) = %v, %v", tc.wire, got, err)
		}
	}
	// A request body of several events, as the gateway batches them.
	body := "TEXT 5\r\nhello\r\nBINARY 3\r\n\x00\x01\x02\r\nCLOSE 7\r\n\x03\xe8 done\r\n"
	got, err := Decode([]byte(body), 0)
	if err != nil || len(got) != 3 || got[2].Type != Close {
		t.Fatalf("Decode(%q) = %v, %v", body, got, err)
	}
	if code, reason, ok := ParseClose(got[2].Content); !ok || code != 1000 || reason != " done" {
		t.Fatalf("ParseClose: %d %q %v", code, reason, ok)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"TEXT 5\r\nhel", "cut short"},
		{"TEXT 5\r\nhelloXY", "no CRLF after its 5 bytes"},
		{"TEXT zz\r\nhello\r\n", "bad content size"},
		{"TEXT \r\n", "bad content size"},
		{"open\r\n", "bad event name"},
		{"OPEN", "no CRLF"},
		{"TEXT 7fffffff\r\n", "cut short"},
	} {
		_, err := Decode([]byte(tc.in), 0)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q): %v, want %q", tc.in, err, tc.want)
		}
	}
	if _, err := Decode([]byte("TEXT 10\r\n"+strings.Repeat("x", 16)+"\r\n"), 8); !errors.Is(err, ErrTooBig) {
		t.Errorf("over the limit: %v", err)
	}
}

func TestParseGrip(t *testing.T) {
	for _, tc := range []struct {
		in     []string
		prefix string
		ok     bool
	}{
		{[]string{"grip"}, "m:", true},
		{[]string{`permessage-deflate, grip; message-prefix=""`}, "", true},
		{[]string{"grip; message-prefix=msg:"}, "msg:", true},
		{[]string{"permessage-deflate"}, "", false},
		{nil, "", false},
	} {
		g, ok := ParseGrip(tc.in)
		if ok != tc.ok || g.Prefix != tc.prefix {
			t.Errorf("ParseGrip(%q) = %q %v", tc.in, g.Prefix, ok)
		}
	}
	g := Grip{Prefix: "m:"}
	if msg, ctl, err := g.Split([]byte(`c:{"type":"subscribe","channel":"news"}`)); err != nil || ctl == nil || ctl.Channel != "news" || msg != nil {
		t.Errorf("control: %q %v %v", msg, ctl, err)
	}
	if msg, ctl, _ := g.Split([]byte("m:hi")); string(msg) != "hi" || ctl != nil {
		t.Errorf("message: %q", msg)
	}
	if msg, ctl, _ := g.Split([]byte("hi")); msg != nil || ctl != nil {
		t.Errorf("unprefixed: %q", msg)
	}
	if _, _, err := g.Split([]byte(`c:{"type":"subscribe"}`)); err == nil {
		t.Error("subscribe without a channel accepted")
	}
}

// FuzzDecode: Decode never panics, and what it decodes encodes back to the
// same bytes when the input was in canonical form.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("TEXT B\r\nhello world\r\n"))
	f.Add([]byte("OPEN\r\nTEXT 0\r\n\r\nCLOSE 2\r\n\x03\xe8\r\n"))
	f.Add([]byte("BINARY 3\r\n\x00\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		events, err := Decode(in, 1<<16)
		if err != nil {
			return
		}
		var out []byte
		for _, e := range events {
			out = Append(out, e)
		}
		again, err := Decode(out, 1<<16)
		if err != nil || len(again) != len(events) {
			t.Fatalf("re-decoding %q: %v", out, err)
		}
		for i := range events {
			if again[i].Type != events[i].Type || !bytes.Equal(again[i].Content, events[i].Content) {
				t.Fatalf("event %d changed: %v → %v", i, events[i], again[i])
			}
		}
	})
}
