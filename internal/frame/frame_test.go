package frame

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Fin: true, Op: OpText, Length: 0},
		{Fin: true, Op: OpBinary, Length: 125},
		{Fin: false, Op: OpText, Length: 126, Masked: true, Mask: [4]byte{1, 2, 3, 4}},
		{Fin: true, Op: OpContinuation, Length: 65535},
		{Fin: true, Op: OpBinary, Length: 65536, Rsv: Rsv1},
		{Fin: true, Op: OpBinary, Length: 1<<63 - 1, Masked: true, Mask: [4]byte{9, 9, 9, 9}},
		{Fin: true, Op: OpPing, Length: 5, Rsv: Rsv1 | Rsv2 | Rsv3},
	} {
		var b [MaxHeaderSize]byte
		n := PutHeader(b[:], h)
		if n != h.Size() || n != HeaderSize(b[0], b[1]) {
			t.Fatalf("%+v: wrote %d, Size %d, HeaderSize %d", h, n, h.Size(), HeaderSize(b[0], b[1]))
		}
		for short := 0; short < n; short++ {
			if _, m, err := ParseHeader(b[:short]); m != 0 || err != nil {
				t.Fatalf("%+v: a %d-byte prefix parsed as %d bytes, %v", h, short, m, err)
			}
		}
		got, m, err := ParseHeader(b[:n])
		if err != nil || m != n || got != h {
			t.Fatalf("round trip of %+v: %+v, %d, %v", h, got, m, err)
		}
	}
}

func TestParseHeaderRejectsTopBit(t *testing.T) {
	b := []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1}
	if _, _, err := ParseHeader(b); err != ErrLengthOverflow {
		t.Fatalf("got %v", err)
	}
}

func TestMaskPiecewise(t *testing.T) {
	key := [4]byte{0xde, 0xad, 0xbe, 0xef}
	data := make([]byte, 1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	want := append([]byte(nil), data...)
	for i := range want {
		want[i] ^= key[i%4]
	}
	// Every split point, so every rotation of the key is exercised.
	for split := 0; split <= 40; split++ {
		got := append([]byte(nil), data...)
		pos := Mask(key, 0, got[:split])
		if pos != split {
			t.Fatalf("pos %d", pos)
		}
		Mask(key, pos, got[split:])
		if !bytes.Equal(got, want) {
			t.Fatalf("split at %d differs", split)
		}
	}
}

func TestClose(t *testing.T) {
	f := AppendClose(nil, CloseGoingAway, "idle timeout", false, [4]byte{})
	h, n, err := ParseHeader(f)
	if err != nil || h.Op != OpClose || !h.Fin || int(h.Length) != len(f)-n {
		t.Fatalf("%+v %v", h, err)
	}
	code, reason, ok := ParseClose(f[n:])
	if !ok || code != 1001 || reason != "idle timeout" {
		t.Fatalf("%d %q %v", code, reason, ok)
	}
	// Masked, and a reason too long is cut at a rune boundary.
	long := bytes.Repeat([]byte("é"), 100)
	key := [4]byte{1, 2, 3, 4}
	f = AppendClose(nil, 4000, string(long), true, key)
	h, n, _ = ParseHeader(f)
	p := f[n:]
	Mask(h.Mask, 0, p)
	code, reason, ok = ParseClose(p)
	if !ok || code != 4000 || len(reason) != 122 || h.Length > MaxControlPayload {
		t.Fatalf("%d %d %v len %d", code, len(reason), ok, h.Length)
	}
	for _, bad := range [][]byte{{3}, {0x03, 0xed}, {0x03, 0xe8, 0xff}, binary.BigEndian.AppendUint16(nil, 1005)} {
		if _, _, ok := ParseClose(bad); ok {
			t.Fatalf("%x accepted", bad)
		}
	}
	if c, _, ok := ParseClose(nil); !ok || c != CloseNoStatus {
		t.Fatal("empty close payload")
	}
}

// FuzzParseHeader: any bytes either parse to a header that encodes back to
// the same bytes (when minimal), or are reported short or invalid; nothing
// panics.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x05})
	f.Add([]byte{0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4})
	f.Add([]byte{0x02, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0x88, 0x80, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		if err != nil || n == 0 {
			return
		}
		if n != HeaderSize(b[0], b[1]) || n > MaxHeaderSize || h.Length < 0 {
			t.Fatalf("n=%d len=%d", n, h.Length)
		}
		var out [MaxHeaderSize]byte
		m := PutHeader(out[:], h)
		if m == n && !bytes.Equal(out[:m], b[:n]) {
			t.Fatalf("re-encoding %x gave %x", b[:n], out[:m])
		}
		again, _, err := ParseHeader(out[:m])
		if err != nil || again != h {
			t.Fatalf("re-parse: %+v vs %+v", again, h)
		}
	})
}
