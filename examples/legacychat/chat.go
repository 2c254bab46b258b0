// Package legacychat is the example backend: a chat room modelled on the
// Jetty 7.0.1 WebSocket demo of 2009. Members send text frames
// "user:message"; every frame is broadcast to every member, the sender
// included. It serves its own page on GET / and the room on GET /ws, and it
// behaves like the legacy servers the gateway stands in front of: a
// connection that carries no frame for IdleTimeout is dropped abruptly,
// without a Close frame.
package legacychat

import (
	"bytes"
	_ "embed"
	"html"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

//go:embed chat.html
var page []byte

// Server is the chat backend. Its zero value is not usable; use New.
type Server struct {
	// IdleTimeout drops a member after this long without any frame from it
	// (Ping, Pong and data frames all count), the way a servlet container's
	// HTTP idle timeout did.
	IdleTimeout time.Duration
	// Name, when set, is shown on the page ("Legacy chat: Name"), so that
	// two rooms side by side are told apart.
	Name string
	// Logf, when set, logs each member's arrival and departure, as the
	// legacy servers' access logs did.
	Logf func(format string, args ...any)

	upgrader websocket.Upgrader
	mu       sync.Mutex
	members  map[*member]bool
}

type member struct {
	conn *websocket.Conn
	wmu  sync.Mutex
}

// New returns a chat server with the given idle timeout.
func New(idle time.Duration) *Server {
	return &Server{
		IdleTimeout: idle,
		// The legacy backend accepts any origin: checking it is the
		// gateway's job.
		upgrader: websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
		members:  map[*member]bool{},
	}
}

// ServeHTTP serves the page and the room.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/", "/index.html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if s.Name == "" {
			w.Write(page)
			return
		}
		w.Write(bytes.Replace(page, []byte("<h1>Legacy chat</h1>"),
			[]byte("<h1>Legacy chat: "+html.EscapeString(s.Name)+"</h1>"), 1))
	case "/ws":
		s.join(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Members returns how many members are in the room.
func (s *Server) Members() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.members)
}

// Drop closes every member's connection abruptly, as a crash or a restart
// of the process would.
func (s *Server) Drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for m := range s.members {
		m.conn.UnderlyingConn().Close()
	}
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an error status
	}
	m := &member{conn: conn}
	s.mu.Lock()
	s.members[m] = true
	n := len(s.members)
	s.mu.Unlock()
	s.logf("member %s joined (%d in the room)", conn.RemoteAddr(), n)
	defer func() {
		s.mu.Lock()
		delete(s.members, m)
		n := len(s.members)
		s.mu.Unlock()
		s.logf("member %s left (%d in the room)", conn.RemoteAddr(), n)
		// Abrupt, as the legacy servers did: no Close frame.
		conn.UnderlyingConn().Close()
	}()

	alive := func() { conn.SetReadDeadline(time.Now().Add(s.IdleTimeout)) }
	alive()
	conn.SetPingHandler(func(data string) error {
		alive()
		m.wmu.Lock()
		defer m.wmu.Unlock()
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	conn.SetPongHandler(func(string) error { alive(); return nil })
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		alive()
		if typ != websocket.TextMessage {
			continue
		}
		user, _, ok := strings.Cut(string(msg), ":")
		if !ok || user == "" {
			continue // not "user:message"
		}
		s.broadcast(msg)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

func (s *Server) broadcast(msg []byte) {
	s.mu.Lock()
	all := make([]*member, 0, len(s.members))
	for m := range s.members {
		all = append(all, m)
	}
	s.mu.Unlock()
	for _, m := range all {
		m.wmu.Lock()
		m.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		m.conn.WriteMessage(websocket.TextMessage, msg)
		m.wmu.Unlock()
	}
}
