package terminate

import (
	"testing"
	"unicode/utf8"
)

// FuzzUTF8Stream: cutting text anywhere gives the verdict of utf8.Valid on
// the whole.
func FuzzUTF8Stream(f *testing.F) {
	f.Add([]byte("κόσμε"), 3, 5)
	f.Add([]byte{0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64}, 12, 13)
	f.Add([]byte{0xf4, 0x90, 0x80, 0x80}, 1, 2)
	f.Add([]byte{0xf0, 0x9f, 0x98}, 1, 1)
	f.Fuzz(func(t *testing.T, b []byte, i, j int) {
		if len(b) == 0 {
			return
		}
		n := uint(len(b) + 1)
		i, j = int(uint(i)%n), int(uint(j)%n)
		if i > j {
			i, j = j, i
		}
		var v utf8Stream
		ok := v.write(b[:i]) && v.write(b[i:j]) && v.write(b[j:]) && v.done()
		if ok != utf8.Valid(b) {
			t.Fatalf("%x cut at %d,%d: stream says %v", b, i, j, ok)
		}
	})
}
