//go:build !linux

package quiet

import "net"

// Written is Linux's TCP_INFO; elsewhere nothing is known.
func Written(c net.Conn) (uint64, bool) { return 0, false }

// Acked is Linux's TCP_INFO; elsewhere nothing is known.
func Acked(c net.Conn) (uint64, bool) { return 0, false }
