package terminate

import (
	"bytes"
	"io"
	"net"
	"testing"
	"unicode/utf8"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

func clientFrame(fin bool, rsv byte, op frame.Opcode, p []byte) []byte {
	h := frame.Header{Fin: fin, Rsv: rsv, Op: op, Masked: true, Mask: [4]byte{1, 2, 3, 4}, Length: int64(len(p))}
	b := make([]byte, h.Size(), h.Size()+len(p))
	frame.PutHeader(b, h)
	b = append(b, p...)
	frame.Mask(h.Mask, 0, b[h.Size():])
	return b
}

// FuzzEndpoint feeds arbitrary client bytes, cut at two points, to the
// terminating endpoint (permessage-deflate on). Nothing panics, and
// whatever reaches the backend is well-formed: masked single frames, text
// that is valid UTF-8, nothing over the size limit.
func FuzzEndpoint(f *testing.F) {
	f.Add(clientFrame(true, 0, frame.OpText, []byte("hello")), 2, 7)
	f.Add(append(clientFrame(false, 0, frame.OpText, []byte("κό")), clientFrame(true, 0, frame.OpContinuation, []byte("σμε"))...), 3, 12)
	f.Add(clientFrame(true, frame.Rsv1, frame.OpText, []byte{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}), 1, 5)
	f.Add(clientFrame(true, 0, frame.OpPing, []byte("p")), 0, 3)
	f.Add(clientFrame(true, 0, frame.OpClose, []byte{3, 232}), 1, 2)
	f.Add(clientFrame(true, 0, frame.OpText, []byte{0xed, 0xa0, 0x80}), 1, 2)
	const limit = 4096
	f.Fuzz(func(t *testing.T, in []byte, a, b int) {
		cNear, cFar := net.Pipe()
		bNear, bFar := net.Pipe()
		defer cFar.Close()
		go io.Copy(io.Discard, cFar)
		out := make(chan []byte)
		go func() {
			got, _ := io.ReadAll(bFar)
			out <- got
		}()
		c := New(cNear, bNear, Config{MaxMessageSize: limit, Deflate: true})
		n := uint(len(in) + 1)
		a, b = int(uint(a)%n), int(uint(b)%n)
		if a > b {
			a, b = b, a
		}
		for _, chunk := range [][]byte{in[:a], in[a:b], in[b:]} {
			c.client.Load().feed(append([]byte(nil), chunk...))
		}
		bNear.Close()
		cNear.Close()
		got := <-out
		for len(got) > 0 {
			h, hs, err := frame.ParseHeader(got)
			if err != nil || hs == 0 || !h.Masked || !h.Fin || int64(len(got)-hs) < h.Length {
				t.Fatalf("malformed frame to the backend: %x", got[:min(len(got), 20)])
			}
			p := append([]byte(nil), got[hs:hs+int(h.Length)]...)
			frame.Mask(h.Mask, 0, p)
			got = got[hs+int(h.Length):]
			switch {
			case h.Op == frame.OpText && !utf8.Valid(p):
				t.Fatalf("invalid UTF-8 reached the backend: %x", p)
			case !h.Op.IsControl() && len(p) > limit:
				t.Fatalf("a %d-byte message passed the %d limit", len(p), limit)
			case h.Op == frame.OpClose && len(p) == 1, bytes.Equal(p, []byte{0x03, 0xed}):
				t.Fatalf("bad close to the backend: %x", p)
			}
		}
	})
}
