//lint:file-ignore SA1019 x/net/http2.Transport is the only Go client that sends extended CONNECT (RFC 8441)

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

// The h2 and h3 schemes: the client leg is an HTTP/2 or HTTP/3 extended
// CONNECT stream (RFC 8441, RFC 9220) over TLS, many streams sharing a
// connection as browsers share one per origin. The load generator's
// WebSocket client (gorilla) speaks only HTTP/1.1 handshakes, so it is
// given a streamConn: the upgrade request it writes becomes the extended
// CONNECT, and the 101 it reads is made from the stream's 200. What the
// target does is the real extended CONNECT; only the client is adapted.

// streamsPerQUIC is how many WebSockets share one QUIC connection (the
// server allows 100 concurrent streams by default). HTTP/2 connections are
// pooled by x/net's Transport, which opens another when the server's
// stream limit is reached.
const streamsPerQUIC = 50

var streamTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MinVersion: tls.VersionTLS13,
	CurvePreferences: []tls.CurveID{tls.X25519}}

// streamDialer opens WebSocket streams to one target.
type streamDialer struct {
	proto, addr string
	h2          *http2.Transport

	mu    sync.Mutex
	qc    *http3.ClientConn
	quics []*quic.Conn
	n     int // streams opened on qc
}

func newStreamDialer(proto, addr string) *streamDialer {
	d := &streamDialer{proto: proto, addr: addr}
	if proto == "h2" {
		d.h2 = &http2.Transport{TLSClientConfig: streamTLS.Clone()}
	}
	return d
}

// close ends the dialer's connections.
func (d *streamDialer) close() {
	if d.h2 != nil {
		d.h2.CloseIdleConnections()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, qc := range d.quics {
		qc.CloseWithError(0, "")
	}
	d.quics, d.qc = nil, nil
}

// conn returns a net.Conn for gorilla's Dialer (NetDialContext): the
// stream is opened when the client writes its upgrade request.
func (d *streamDialer) conn(ctx context.Context, _, _ string) (net.Conn, error) {
	return &streamConn{d: d}, nil
}

// open sends the extended CONNECT with hdr's WebSocket headers and returns
// the stream's two directions and its close.
func (d *streamDialer) open(path string, hdr http.Header) (io.Reader, io.Writer, func() error, error) {
	h := http.Header{"Sec-Websocket-Version": {"13"}}
	if v := hdr.Get("Sec-WebSocket-Protocol"); v != "" {
		h.Set("Sec-WebSocket-Protocol", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if d.proto == "h2" {
		pr, pw := io.Pipe()
		rctx, rcancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(rctx, http.MethodConnect, "https://"+d.addr+path, pr)
		if err != nil {
			rcancel()
			return nil, nil, nil, err
		}
		req.Host = "localhost"
		req.Header = h
		req.Header.Set(":protocol", "websocket")
		res, err := d.h2.RoundTrip(req)
		if err != nil {
			rcancel()
			return nil, nil, nil, err
		}
		if res.StatusCode != http.StatusOK {
			res.Body.Close()
			rcancel()
			return nil, nil, nil, fmt.Errorf("extended CONNECT answered %s", res.Status)
		}
		return res.Body, pw, func() error { pw.Close(); res.Body.Close(); rcancel(); return nil }, nil
	}
	cc, err := d.quic(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	u := &url.URL{Scheme: "https", Host: "localhost", Path: path}
	req := &http.Request{Method: http.MethodConnect, Proto: "websocket", ProtoMajor: 3, URL: u, Host: "localhost", Header: h}
	if err := str.SendRequestHeader(req); err != nil {
		return nil, nil, nil, err
	}
	res, err := str.ReadResponse()
	if err != nil {
		return nil, nil, nil, err
	}
	if res.StatusCode != http.StatusOK {
		str.CancelRead(0)
		str.Close()
		return nil, nil, nil, fmt.Errorf("extended CONNECT answered %s", res.Status)
	}
	return str, str, func() error { str.CancelRead(0); return str.Close() }, nil
}

// quic returns a QUIC connection with room for one more stream.
func (d *streamDialer) quic(ctx context.Context) (*http3.ClientConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.qc == nil || d.n >= streamsPerQUIC {
		conf := streamTLS.Clone()
		conf.NextProtos = []string{http3.NextProtoH3}
		qc, err := quic.DialAddr(ctx, d.addr, conf, &quic.Config{MaxIdleTimeout: 5 * time.Minute, KeepAlivePeriod: 10 * time.Second})
		if err != nil {
			return nil, err
		}
		cc := (&http3.Transport{}).NewClientConn(qc)
		select {
		case <-cc.ReceivedSettings():
		case <-ctx.Done():
			qc.CloseWithError(0, "")
			return nil, errors.New("no SETTINGS from the server")
		}
		d.qc, d.n = cc, 0
		d.quics = append(d.quics, qc)
	}
	d.n++
	return d.qc, nil
}

// streamConn is one WebSocket stream as gorilla's net.Conn.
type streamConn struct {
	d       *streamDialer
	r       io.Reader
	w       io.Writer
	end     func() error
	pending []byte // the 101 made from the stream's 200, read first
}

func (c *streamConn) Write(p []byte) (int, error) {
	if c.w != nil {
		return c.w.Write(p)
	}
	// The upgrade request: open the stream instead.
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(p)))
	if err != nil {
		return 0, fmt.Errorf("the client's upgrade request: %w", err)
	}
	r, w, end, err := c.d.open(req.URL.Path, req.Header)
	if err != nil {
		return 0, err
	}
	c.r, c.w, c.end = r, w, end
	sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	c.pending = []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	return len(p), nil
}

func (c *streamConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.r == nil {
		return 0, errors.New("read before the upgrade request")
	}
	return c.r.Read(p)
}

func (c *streamConn) Close() error {
	if c.end != nil {
		return c.end()
	}
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (c *streamConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// Deadlines: an HTTP/3 stream has them; an HTTP/2 response body has none
// (the load generator then waits for the bytes, which the echo sends).
func (c *streamConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *streamConn) SetReadDeadline(t time.Time) error {
	if s, ok := c.r.(interface{ SetReadDeadline(time.Time) error }); ok {
		return s.SetReadDeadline(t)
	}
	return nil
}

func (c *streamConn) SetWriteDeadline(t time.Time) error {
	if s, ok := c.w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return s.SetWriteDeadline(t)
	}
	return nil
}
