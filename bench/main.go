// Command bench measures the gateway against stock Caddy reverse_proxy (and
// nginx and HAProxy when installed), all in front of the same Go echo
// backend, on loopback. Targets run as their own processes; the figures are
// the targets' own costs (RSS of the process, CPU time from /proc), taken in
// interleaved repetitions with the order rotated, each printed beside stock
// Caddy's from the same repetition.
//
//	go run ./bench            # full run, ws and wss, writes bench/results/latest.md
//	go run ./bench -quick     # a few minutes
//	BENCH_BEFORE=/tmp/old/caddy go run ./bench   # also the module's targets from another build
//	go run ./bench -fanout    # the push API's fan-out, without a bus and over Redis and NATS
//	go run ./bench -keepalive-cost 5000   # CPU per keepalive ping round, beside a minimal Go server's
//	go run ./bench -schemes h2,h3         # the client legs as HTTP/2 or HTTP/3 streams
//
// Every Caddy target runs as production sites do, with an access log and
// the metrics option on; the wss targets (HAProxy and nginx too) serve the
// same certificate with TLS 1.3 and X25519.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type settings struct {
	idleConns int
	dur       time.Duration
	reps      int
	cases     string // comma-separated; empty: all
	// keepaliveWindow is how long idle connections are held, answering
	// pings, to measure the keepalive's cost (module targets only).
	keepaliveWindow time.Duration
}

// runs reports whether the case named is to run.
func (s settings) runs(name string) bool {
	return s.cases == "" || strings.Contains(","+s.cases+",", ","+name+",")
}

func main() {
	quick := flag.Bool("quick", false, "a short run (about a minute)")
	out := flag.String("out", "", "write the report here (default bench/results/latest.md for a full run)")
	only := flag.String("targets", "", "comma-separated targets to run (default: all available)")
	cases := flag.String("cases", "", "comma-separated cases to run: idle, handshake, echo, pipelined (default: all)")
	idleN := flag.Int("idle", 0, "idle connections (default 10000, or 1000 with -quick)")
	reps := flag.Int("reps", 0, "repetitions (default 2, or 1 with -quick)")
	schemes := flag.String("schemes", "ws,wss", "comma-separated: ws (plaintext), wss (TLS on the client leg), h2 and h3 (the client legs as HTTP/2 or HTTP/3 extended CONNECT streams, Caddy targets only)")
	kaCost := flag.Int("keepalive-cost", 0, "measure the keepalive's CPU per ping round with this many connections, beside the floor of a minimal Go server, instead of the targets")
	fan := flag.Bool("fanout", false, "measure the push API's fan-out (no bus, Redis, NATS) instead of the targets")
	subscribers := flag.Int("subscribers", 1000, "fan-out: subscribers of the channel")
	publishes := flag.Int("publishes", 50, "fan-out: publishes timed one at a time")
	burst := flag.Int("burst", 50, "fan-out: publishes back to back for the delivery rate")
	flag.Parse()
	if *pingerAddr != "" {
		runPinger(*pingerAddr)
		return
	}
	log.SetFlags(0)
	s := settings{idleConns: 10000, dur: 3 * time.Second, reps: 2, keepaliveWindow: 22 * time.Second}
	if *quick {
		s = settings{idleConns: 1000, dur: 700 * time.Millisecond, reps: 1}
	}
	if *idleN > 0 {
		s.idleConns = *idleN
	}
	s.cases = *cases
	if *reps > 0 {
		s.reps = *reps
	}
	limit := raiseFDLimit(max(4*s.idleConns+1000, 65536))
	// A proxy holds two sockets per connection: N is what the limit allows.
	if n := (limit - 1000) / 2; n < s.idleConns {
		log.Printf("open-file limit %d: %d idle connections instead of %d", limit, n, s.idleConns)
		s.idleConns = n
	}
	fdLimit = limit

	root := repoRoot()
	bin := filepath.Join(root, "bin")
	for _, b := range [][2]string{{"caddy", "./cmd/caddy"}, {"echo", "./examples/echo"}} {
		log.Printf("building %s", b[0])
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b[0]), b[1])
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Fatal(err)
		}
	}
	work, err := os.MkdirTemp("", "wsbench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)

	if *fan {
		emit(runFanout(bin, work, *subscribers, *publishes, *burst), *out)
		return
	}

	echo, err := startEcho(bin, work)
	if err != nil {
		log.Fatal(err)
	}
	defer echo.stop()

	if *kaCost > 0 {
		emit(runKeepaliveCost(bin, work, echo.addr, *kaCost), *out)
		return
	}

	if err := writeCert(work); err != nil {
		log.Fatal(err)
	}
	targets := availableTargets(bin, work, echo.addr, strings.Split(*schemes, ","))
	if *only != "" {
		var sel []targetSpec
		for _, t := range targets {
			if strings.Contains(","+*only+",", ","+t.name+",") {
				sel = append(sel, t)
			}
		}
		targets = sel
	}
	rep := newReport(s, targets)
	for r := 0; r < s.reps; r++ {
		// Rotate the order so no target always runs first (or last).
		order := append(targets[r%len(targets):], targets[:r%len(targets)]...)
		for _, spec := range order {
			log.Printf("repetition %d: %s", r+1, spec.name)
			res, err := runTarget(spec, echo.addr, s)
			if err != nil {
				log.Printf("  %s: %v", spec.name, err)
				continue
			}
			rep.add(r, spec.name, res)
		}
	}
	text := rep.render()
	fmt.Print(text)
	path := *out
	if path == "" && !*quick && *only == "" && *cases == "" && *idleN == 0 && before == "" {
		path = filepath.Join(root, "bench", "results", "latest.md")
	}
	if path != "" {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			log.Fatal(err)
		}
		log.Printf("report written to %s", path)
	}
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	if file != "" {
		if d := filepath.Dir(filepath.Dir(file)); fileExists(filepath.Join(d, "go.mod")) {
			return d
		}
	}
	wd, _ := os.Getwd()
	return wd
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// fdLimit is the open-file limit the targets inherit.
var fdLimit int

// raiseFDLimit lifts the open-file limit for this process and the targets
// it starts (they inherit it) as far as allowed, and returns it.
func raiseFDLimit(want int) int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	if l.Cur < uint64(want) {
		up := l
		up.Cur, up.Max = uint64(want), max(l.Max, uint64(want))
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) != nil {
			l.Cur = l.Max // not allowed past the hard limit
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
		}
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return int(l.Cur)
}

// emit prints a measurement's report and writes it to out, if set.
func emit(text, out string) {
	fmt.Print(text)
	if out == "" {
		return
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.WriteFile(out, []byte(text), 0o644); err != nil {
		log.Fatal(err)
	}
}
