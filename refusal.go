package websocket

import (
	"github.com/caddy-websocket/caddy-websocket/internal/upgrade"
)

// refusal is why the gateway will not take an upgrade: a status for the
// client, a one-line reason, and what to log and count.
type refusal struct {
	status int
	// code is the metrics label (websocket_upgrades_total{result}).
	code   string
	reason string
	// header and value name the offending request header, if one.
	header, value string
	// upstream is the backend that failed the handshake, for the log;
	// empty before one was reached.
	upstream string
}

func (r *refusal) Error() string { return r.reason }

// refused converts a handshake check's verdict.
func refused(e *upgrade.Error) *refusal {
	if e == nil {
		return nil
	}
	return &refusal{status: e.Status, code: e.Code, reason: e.Reason, header: e.Header, value: e.Value}
}
