package bus

import (
	"bytes"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, m := range []Message{
		{Kind: Text, Payload: []byte("alice:hello")},
		{Kind: Binary, Payload: []byte{0, 1, 2, 255}},
		{Kind: Text},
		{Kind: Close, Code: 4000, Reason: "room closed"},
		{Kind: Close, Code: 1000},
	} {
		got, err := Decode(m.Encode())
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if got.Kind != m.Kind || got.Code != m.Code || got.Reason != m.Reason || !bytes.Equal(got.Payload, m.Payload) {
			t.Errorf("round trip: %+v, want %+v", got, m)
		}
	}
}

func TestEnvelopeRefusesBadInput(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":          nil,
		"header only":    {version},
		"other version":  {2, byte(Text), 'x'},
		"unknown kind":   {version, 9},
		"close, no code": {version, byte(Close), 3},
	} {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// FuzzDecode: any bytes from the broker decode or are refused, without a
// panic; what decodes encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(Message{Kind: Text, Payload: []byte("a:b")}.Encode())
	f.Add(Message{Kind: Close, Code: 1001, Reason: "bye"}.Encode())
	f.Add([]byte{version})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		if again := m.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("re-encoded %x, want %x", again, b)
		}
	})
}
