package tunnel

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
)

// FuzzRelay feeds arbitrary client bytes, cut at two arbitrary points, to
// the frame scanner. Whatever the bytes, nothing panics and the backend
// receives exactly what the client sent, up to an incomplete last unit: the only frames the tunnel drops
// are Pongs to its own pings, which carry a random per-process tag.
func FuzzRelay(f *testing.F) {
	f.Add(enc(true, true, frame.OpText, []byte("hello")), 3, 9)
	f.Add(append(enc(true, false, frame.OpText, bytes.Repeat([]byte("a"), 200)), enc(true, true, frame.OpPong, []byte("x"))...), 1, 150)
	f.Add(enc(true, true, frame.OpClose, []byte{3, 232, 'o', 'k'}), 2, 4)
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 1, 5, 5}, 5, 10)
	f.Fuzz(func(t *testing.T, in []byte, a, b int) {
		if bytes.Contains(in, ownPong()[:4]) {
			t.Skip("contains the gateway's ping tag")
		}
		cNear, cFar := net.Pipe()
		bNear, bFar := net.Pipe()
		defer cFar.Close()
		defer bFar.Close()
		c := New(cNear, bNear, Config{})
		out := make(chan []byte)
		go func() {
			got, _ := io.ReadAll(bFar)
			out <- got
		}()
		a, b = clamp(a, len(in)), clamp(b, len(in))
		if a > b {
			a, b = b, a
		}
		src := &c.legs.Client
		for _, chunk := range [][]byte{in[:a], in[a:b], in[b:]} {
			if len(chunk) > 0 {
				src.scan.scan(src, append([]byte(nil), chunk...))
			}
		}
		bNear.Close()
		got := <-out
		// An incomplete header or held frame at the end waits in the carry
		// for more bytes; a Close frame ends what may be relayed.
		want := in[:len(in)-src.scan.carryN]
		if !bytes.Equal(got, want) && !(src.CloseReceived() && bytes.HasPrefix(want, got)) {
			t.Fatalf("relayed %x\nsent    %x", got, in)
		}
	})
}

func clamp(v, n int) int {
	if v < 0 {
		v = -v
	}
	if n == 0 {
		return 0
	}
	return v % (n + 1)
}
