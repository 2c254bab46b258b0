package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// proc is a running target (or the echo backend).
type proc struct {
	cmd   *exec.Cmd
	addr  string
	admin string // Caddy's admin address, for go_goroutines
	pings bool   // the target sends keepalive pings (this module, default 20 s)
	tls   bool   // the target serves wss
	// streams opens the client legs as HTTP/2 or HTTP/3 streams (schemes
	// h2, h3); nil: HTTP/1.1 upgrades.
	streams *streamDialer
}

func (p *proc) stop() {
	if p.streams != nil {
		p.streams.close()
	}
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}

// pids returns the target's process and its descendants (nginx workers).
func (p *proc) pids() []int {
	root := p.cmd.Process.Pid
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) > 3 {
			pp, _ := strconv.Atoi(f[3])
			parent[pid] = pp
		}
	}
	out := []int{root}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if contains(out, pp) && !contains(out, pid) {
				out = append(out, pid)
				changed = true
			}
		}
	}
	return out
}

func contains(l []int, v int) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// statFields returns /proc/pid/stat split into fields, with the command
// name (which may hold spaces) as one field.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return nil
	}
	return append([]string{s[:open-1], s[open+1 : close]}, strings.Fields(s[close+1:])...)
}

// rssKiB is the resident memory of the target's process tree.
func (p *proc) rssKiB() int64 {
	var total int64
	for _, pid := range p.pids() {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += n
			}
		}
		f.Close()
	}
	return total
}

// cpu is the user+system CPU time of the target's process tree.
func (p *proc) cpu() time.Duration {
	const hz = 100 // USER_HZ on Linux
	var ticks int64
	for _, pid := range p.pids() {
		f := statFields(pid)
		if len(f) > 14 {
			u, _ := strconv.ParseInt(f[13], 10, 64)
			s, _ := strconv.ParseInt(f[14], 10, 64)
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / hz
}

// goroutines reads go_goroutines from a Caddy target's admin metrics.
func (p *proc) goroutines() int {
	if p.admin == "" {
		return -1
	}
	res, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until addr accepts connections.
func waitListening(addr string) error {
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("%s did not start listening", addr)
}

func start(addr, admin string, name string, args ...string) (*proc, error) {
	return startEnv(nil, addr, admin, name, args...)
}

// startEnv starts a target with env added to the bench's environment.
func startEnv(env []string, addr, admin string, name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	logf, _ := os.CreateTemp("", "wsbench-"+filepath.Base(name)+"-*.log")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, addr: addr, admin: admin}
	if err := waitListening(addr); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	return p, nil
}

func startEcho(bin, work string) (*proc, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	return start(addr, "", filepath.Join(bin, "echo"), "-addr", addr)
}

// targetSpec starts one kind of target in front of the echo backend.
type targetSpec struct {
	name  string
	start func(echo string) (*proc, error)
}

// caddyTarget runs Caddy with handler on a site as production runs one:
// an access log (discarded) and the metrics option on, and with wss, h2 or
// h3 the bench's certificate on HTTPS (which serves all three). The
// scheme is how the load generator's client legs come: HTTP/1.1 upgrades
// (ws, wss) or extended CONNECT streams (h2, h3).
func caddyTarget(bin, work, name, handler, scheme string) targetSpec {
	wss := scheme != "ws"
	return targetSpec{name: name, start: func(echo string) (*proc, error) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		admin := fmt.Sprintf("127.0.0.1:%d", freePort())
		site, tlsLine, auto := "http://"+addr, "", "auto_https off"
		if wss {
			site = "https://:" + addr[strings.LastIndex(addr, ":")+1:] // any Host: the load generator dials the address
			tlsLine = fmt.Sprintf("tls %s %s", certFile(work), keyFile(work))
			auto = "auto_https disable_redirects\n\tskip_install_trust\n\tdefault_bind 127.0.0.1"
		}
		cf := fmt.Sprintf(`{
	admin %s
	persist_config off
	%s
	metrics
	log {
		level ERROR
	}
}
%s {
	%s
	log {
		output discard
	}
	%s
}
`, admin, auto, site, tlsLine, strings.ReplaceAll(handler, "ECHO", echo))
		path := filepath.Join(work, name+".Caddyfile")
		os.WriteFile(path, []byte(cf), 0o644)
		var env []string
		if scheme == "h2" {
			// Go's HTTP/2 server takes extended CONNECT (RFC 8441) only
			// with this process-wide setting (README, HTTP/2).
			env = []string{"GODEBUG=http2xconnect=1"}
		}
		p, err := startEnv(env, addr, admin, filepath.Join(bin, "caddy"), "run", "--config", path, "--adapter", "caddyfile")
		if p != nil {
			p.pings = strings.HasPrefix(handler, "websocket")
			p.tls = wss
			if scheme == "h2" || scheme == "h3" {
				p.streams = newStreamDialer(scheme, addr)
				// The keepalive's cost is measured on sockets; an HTTP/2
				// response body has no read deadline to end that window.
				p.pings = false
			}
		}
		return p, err
	}}
}

// availableTargets lists what can run here: direct, the three Caddy
// configurations, and nginx and HAProxy when Debian's packages are
// installed.
func availableTargets(bin, work, echo string, schemes []string) []targetSpec {
	var ts []targetSpec
	for _, scheme := range schemes {
		if scheme == "h2" || scheme == "h3" {
			// Streams: Caddy's targets only (nginx does not take WebSockets
			// over HTTP/2 or HTTP/3; HAProxy's HTTP/3 is not in Debian's).
			sfx := "-" + scheme
			ts = append(ts,
				caddyTarget(bin, work, "caddy-stock"+sfx, "reverse_proxy ECHO", scheme),
				caddyTarget(bin, work, "tunnel"+sfx, "websocket ECHO", scheme),
				caddyTarget(bin, work, "terminate"+sfx, "websocket ECHO {\n\t\tmode terminate\n\t}", scheme))
			continue
		}
		wss := scheme == "wss"
		sfx := ""
		if wss {
			sfx = "-wss"
		} else {
			ts = append(ts, targetSpec{name: "direct", start: func(echo string) (*proc, error) {
				return startEcho(bin, work) // a fresh echo of its own: its cost is the baseline
			}})
		}
		ts = append(ts,
			caddyTarget(bin, work, "caddy-stock"+sfx, "reverse_proxy ECHO", scheme),
			caddyTarget(bin, work, "tunnel"+sfx, "websocket ECHO", scheme),
			caddyTarget(bin, work, "terminate"+sfx, "websocket ECHO {\n\t\tmode terminate\n\t}", scheme))
		if before != "" {
			// The same targets built from another commit (BENCH_BEFORE),
			// to compare a change in one run.
			ts = append(ts,
				caddyTarget(filepath.Dir(before), work, "tunnel@before"+sfx, "websocket ECHO", scheme),
				caddyTarget(filepath.Dir(before), work, "terminate@before"+sfx, "websocket ECHO {\n\t\tmode terminate\n\t}", scheme))
		}
		ts = append(ts, nginxTarget(work, echo, wss, sfx)...)
		ts = append(ts, haproxyTarget(work, echo, wss, sfx)...)
	}
	return ts
}

// before is a Caddy binary built from an earlier commit, whose targets run
// beside this checkout's (env BENCH_BEFORE=/path/to/dir/caddy).
var before = os.Getenv("BENCH_BEFORE")

func nginxTarget(work, echo string, wss bool, sfx string) []targetSpec {
	p, err := exec.LookPath("nginx")
	if err != nil {
		return nil
	}
	return []targetSpec{{name: "nginx" + sfx, start: func(echo string) (*proc, error) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		dir := filepath.Join(work, "nginx"+sfx)
		os.MkdirAll(filepath.Join(dir, "logs"), 0o755)
		listen := addr
		if wss {
			listen = addr + " ssl;\n\t\tssl_certificate " + certFile(work) + ";\n\t\tssl_certificate_key " + keyFile(work) +
				";\n\t\tssl_protocols TLSv1.3;\n\t\tssl_ecdh_curve X25519"
		}
		conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 100000;
error_log %[1]s/logs/error.log error;
pid %[1]s/nginx.pid;
events { worker_connections 50000; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s;
		location / {
			proxy_pass http://%[3]s;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection "upgrade";
			proxy_read_timeout 1h;
			proxy_send_timeout 1h;
		}
	}
}
`, dir, listen, echo)
		path := filepath.Join(dir, "nginx.conf")
		os.WriteFile(path, []byte(conf), 0o644)
		pr, err := start(addr, "", p, "-p", dir, "-c", path)
		if pr != nil {
			pr.tls = wss
		}
		return pr, err
	}}}
}

func haproxyTarget(work, echo string, wss bool, sfx string) []targetSpec {
	p, err := exec.LookPath("haproxy")
	if err != nil {
		return nil
	}
	return []targetSpec{{name: "haproxy" + sfx, start: func(echo string) (*proc, error) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		bind := addr
		if wss {
			bind = addr + " ssl crt " + pemFile(work) + " ssl-min-ver TLSv1.3 curves X25519"
		}
		conf := fmt.Sprintf(`global
	maxconn %d
defaults
	mode http
	timeout connect 5s
	timeout client 1h
	timeout server 1h
	timeout tunnel 1h
frontend f
	bind %s
	default_backend b
backend b
	server s1 %s
`, (fdLimit-200)/2, bind, echo)
		path := filepath.Join(work, "haproxy"+sfx+".cfg")
		os.WriteFile(path, []byte(conf), 0o644)
		pr, err := start(addr, "", p, "-db", "-f", path)
		if pr != nil {
			pr.tls = wss
		}
		return pr, err
	}}}
}

func certFile(work string) string { return filepath.Join(work, "cert.pem") }
func keyFile(work string) string  { return filepath.Join(work, "key.pem") }
func pemFile(work string) string  { return filepath.Join(work, "cert+key.pem") }

// writeCert makes the certificate every wss target serves (ECDSA P-256,
// for localhost), as PEM files in work.
func writeCert(work string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	c := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	for path, b := range map[string][]byte{certFile(work): c, keyFile(work): k, pemFile(work): append(append([]byte{}, c...), k...)} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
