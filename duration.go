package websocket

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Timeout is a duration that can also be switched off. In JSON it is a
// duration string ("20s", "1m30s"), an integer of nanoseconds, or "off". The
// zero value means "not set": the option's default applies.
type Timeout time.Duration

// Off is the Timeout value of "off"; Auto, of "auto" (keepalive only: the
// interval is learned).
const (
	Off  Timeout = -1
	Auto Timeout = -2
)

// UnmarshalJSON accepts "off", "auto", a duration string or integer
// nanoseconds.
func (t *Timeout) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		n, nerr := strconv.ParseInt(string(b), 10, 64)
		if nerr != nil || n < 0 {
			return fmt.Errorf("timeout: want a duration string, nanoseconds or \"off\", got %s", b)
		}
		*t = Timeout(n)
		return nil
	}
	switch s {
	case "off":
		*t = Off
		return nil
	case "auto":
		*t = Auto
		return nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil || d <= 0 {
		return fmt.Errorf("timeout: want a positive duration or \"off\", got %q", s)
	}
	*t = Timeout(d)
	return nil
}

// MarshalJSON writes "off", "auto" or a duration string.
func (t Timeout) MarshalJSON() ([]byte, error) {
	switch t {
	case Off:
		return []byte(`"off"`), nil
	case Auto:
		return []byte(`"auto"`), nil
	}
	return json.Marshal(time.Duration(t).String())
}

// or returns the duration t stands for, with def when t is not set and zero
// when it is off.
func (t Timeout) or(def time.Duration) time.Duration {
	switch {
	case t == Off:
		return 0
	case t == 0 || t == Auto:
		return def
	}
	return time.Duration(t)
}
