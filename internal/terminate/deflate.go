package terminate

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// permessage-deflate (RFC 7692) on the client leg. Both directions run
// without context takeover: every message is compressed and decompressed
// on its own, so an idle connection holds no flate state, and the
// compressor and decompressor are borrowed from pools per message.

// DeflateResponse is the extension the gateway answers with when the client
// offers permessage-deflate: it always asks for no context takeover both
// ways, whatever the offer's parameters (window sizes only constrain the
// compressor, and 32 KiB windows are what every inflater accepts).
const DeflateResponse = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// OffersDeflate reports whether the client offered permessage-deflate.
func OffersDeflate(h http.Header) bool {
	for _, v := range h.Values("Sec-WebSocket-Extensions") {
		for _, ext := range strings.Split(v, ",") {
			name, _, _ := strings.Cut(ext, ";")
			if strings.EqualFold(strings.TrimSpace(name), "permessage-deflate") {
				return true
			}
		}
	}
	return false
}

// minCompress is the smallest payload worth compressing: below it, the
// deflate framing costs more than it saves.
const minCompress = 64

var (
	writers = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed)
		return w
	}}
	readers = sync.Pool{New: func() any { return flate.NewReader(nil) }}
)

// deflateTail ends every compressed message on the wire (RFC 7692 §7.2.1),
// and must be put back before inflating.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// compress appends the compressed form of p to dst.
func compress(dst, p []byte) []byte {
	buf := bytes.NewBuffer(dst)
	w := writers.Get().(*flate.Writer)
	w.Reset(buf)
	w.Write(p)
	w.Flush()
	writers.Put(w)
	out := buf.Bytes()
	return bytes.TrimSuffix(out, deflateTail)
}

var errTooBig = errors.New("message too big")

// decompress appends the inflated form of p to dst, failing with errTooBig
// once the output would pass limit: a small compressed message can't make
// the gateway allocate more than limit (a zip bomb).
func decompress(dst, p []byte, limit int64) ([]byte, error) {
	// The final empty stored block lets the reader end cleanly.
	src := io.MultiReader(bytes.NewReader(p), bytes.NewReader(deflateTail), bytes.NewReader([]byte{0x01, 0x00, 0x00, 0xff, 0xff}))
	fr := readers.Get().(io.ReadCloser)
	defer readers.Put(fr)
	fr.(flate.Resetter).Reset(src, nil)
	buf := bytes.NewBuffer(dst)
	n, err := io.Copy(buf, io.LimitReader(fr, limit+1))
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, err
	}
	if n > limit {
		return nil, errTooBig
	}
	return buf.Bytes(), nil
}
