package websocket_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddy-websocket/caddy-websocket/internal/wstest"
)

// tlsEcho is a WebSocket echo backend on TLS with a certificate of ca's,
// optionally requiring a client certificate from ca.
func tlsEcho(t *testing.T, ca *wstest.TestCA, clientAuth bool) string {
	srv := httptest.NewUnstartedServer(echoHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server}}
	if clientAuth {
		srv.TLS.ClientAuth, srv.TLS.ClientCAs = tls.RequireAndVerifyClientCert, ca.Pool
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://")
}

// TestTLSBackends: wss:// upstreams with a certificate from a test CA,
// trusted through tls_trusted_ca_certs or a tls_trust_pool module, with a
// client certificate, in both modes; a wrong name or an untrusted CA is a
// 502 whose body says why.
func TestTLSBackends(t *testing.T) {
	ca := wstest.NewCA(t)
	plain := tlsEcho(t, ca, false)
	mtls := tlsEcho(t, ca, true)
	port := func(hostport string) string { return hostport[strings.LastIndex(hostport, ":")+1:] }
	addr := wstest.StartCaddy(t, fmt.Sprintf(`http://127.0.0.1:{PORT} {
		websocket /files wss://localhost:%[1]s {
			tls_trusted_ca_certs %[3]s
		}
		websocket /pool wss://localhost:%[1]s {
			mode terminate
			tls_trust_pool file %[3]s
		}
		websocket /mtls wss://localhost:%[2]s {
			tls_trusted_ca_certs %[3]s
			tls_client_auth %[4]s %[5]s
		}
		websocket /ip 127.0.0.1:%[1]s {
			tls
			tls_server_name localhost
			tls_trusted_ca_certs %[3]s
		}
		websocket /wrongname wss://127.0.0.1:%[1]s {
			tls_server_name chat.example
			tls_trusted_ca_certs %[3]s
		}
		websocket /untrusted wss://localhost:%[1]s
	}`, port(plain), port(mtls), ca.CAFile, ca.CertFile, ca.KeyFile))
	for _, path := range []string{"/files", "/pool", "/mtls", "/ip"} {
		c := dialWS(t, "ws://"+addr+path)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, []byte("over TLS")); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.ReadMessage(); err != nil || string(got) != "over TLS" {
			t.Fatalf("%s: %q %v", path, got, err)
		}
		c.Close()
	}
	for path, want := range map[string]string{
		"/wrongname": "backend TLS handshake failed: tls: failed to verify certificate: x509: certificate is valid for localhost, not chat.example",
		"/untrusted": "backend TLS handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority",
	} {
		_, res, err := websocket.DefaultDialer.Dial("ws://"+addr+path, nil)
		if err == nil {
			t.Fatalf("%s: upgraded", path)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), want) {
			t.Fatalf("%s: %d %q, want 502 %q", path, res.StatusCode, body, want)
		}
		if e := wstest.LogEntries(t, "websocket backend handshake failed"); len(e) == 0 {
			t.Fatalf("%s: refusal not logged", path)
		}
	}
}
