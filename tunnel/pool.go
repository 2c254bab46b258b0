package tunnel

import "sync"

// bufSize is the read size of a busy leg. Buffers are borrowed per read and
// returned before the reader parks again, so their number follows the
// connections that are moving bytes right now, not the connections open.
const bufSize = 16 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }
