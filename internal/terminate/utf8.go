package terminate

import "unicode/utf8"

// utf8Stream validates UTF-8 that arrives in pieces (frames, reads),
// failing as soon as a byte makes the text invalid rather than at the end
// of the message: a peer can't make the gateway buffer a long message that
// was doomed from its first bytes.
type utf8Stream struct {
	pend [utf8.UTFMax]byte
	n    int
}

// write feeds p and reports whether the text is still valid.
func (v *utf8Stream) write(p []byte) bool {
	// Finish a rune split by the previous piece.
	for v.n > 0 && len(p) > 0 {
		v.pend[v.n] = p[0]
		v.n++
		p = p[1:]
		if !utf8.FullRune(v.pend[:v.n]) {
			continue
		}
		// FullRune treats an invalid sequence as a whole (error) rune.
		if r, size := utf8.DecodeRune(v.pend[:v.n]); r == utf8.RuneError && size <= 1 || size != v.n {
			return false
		}
		v.n = 0
	}
	if len(p) == 0 {
		return true
	}
	// Keep a trailing incomplete rune for the next piece. A sequence that
	// FullRune calls incomplete is a valid prefix, so waiting loses nothing.
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		return false
	}
	v.n = copy(v.pend[:], p[cut:])
	return true
}

// done reports whether the text ended on a rune boundary, and resets v.
func (v *utf8Stream) done() bool {
	ok := v.n == 0
	v.n = 0
	return ok
}
