package main

import (
	"fmt"
	"math"
	"runtime"
	"strings"
	"time"
)

const baseline = "caddy-stock"

// baselineOf is the target a target's ratios are to: stock Caddy over the
// same scheme (a wss target's, over wss).
func baselineOf(target string) string {
	for _, sfx := range []string{"-wss", "-h2", "-h3"} {
		if strings.HasSuffix(target, sfx) {
			return baseline + sfx
		}
	}
	return baseline
}

// report collects results per repetition and renders each figure as its
// mean over repetitions, with its ratio to stock Caddy averaged over the
// repetitions in which both ran (so a noisy repetition skews both alike).
type report struct {
	s       settings
	targets []string
	reps    []map[string]result // repetition → target → figures
	started time.Time
}

func newReport(s settings, specs []targetSpec) *report {
	r := &report{s: s, started: time.Now()}
	for _, t := range specs {
		r.targets = append(r.targets, t.name)
	}
	for range s.reps {
		r.reps = append(r.reps, map[string]result{})
	}
	return r
}

func (r *report) add(rep int, target string, res result) { r.reps[rep][target] = res }

// rows are the figures in report order.
var rows = []struct{ key, label string }{
	{"idle_rss_kib_per_conn", "idle: RSS per connection, 1.5 s after the last message (KiB)"},
	{"idle_rss_kib_per_conn_settled", "idle: RSS per connection once settled (KiB)"},
	{"idle_goroutines_per_conn", "idle: goroutines per connection"},
	{"idle_cpu_pct", "idle: CPU (% of one core)"},
	{"keepalive_cpu_pct", "idle with 20 s keepalive: CPU over 22 s (% of one core)"},
	{"keepalive_pings_per_conn", "idle with 20 s keepalive: pings per connection in 22 s"},
	{"idle_rss_after_close_pct_of_start", "idle: RSS after closing all (% of start)"},
	{"handshake_c1_per_s", "handshakes/s, c=1"},
	{"handshake_c1_cpu_us", "CPU µs per handshake, c=1"},
	{"handshake_c50_per_s", "handshakes/s, c=50"},
	{"handshake_c50_cpu_us", "CPU µs per handshake, c=50"},
	{"echo_c1_64B_p50_us", "echo c=1 64 B: p50 µs"},
	{"echo_c1_64B_p99_us", "echo c=1 64 B: p99 µs"},
	{"echo_c1_64B_cpu_us_per_msg", "echo c=1 64 B: CPU µs/msg"},
	{"echo_c1_16KiB_p50_us", "echo c=1 16 KiB: p50 µs"},
	{"echo_c1_16KiB_p99_us", "echo c=1 16 KiB: p99 µs"},
	{"echo_c1_16KiB_cpu_us_per_msg", "echo c=1 16 KiB: CPU µs/msg"},
	{"echo_c50_64B_p50_us", "echo c=50 64 B: p50 µs"},
	{"echo_c50_64B_p99_us", "echo c=50 64 B: p99 µs"},
	{"echo_c50_64B_cpu_us_per_msg", "echo c=50 64 B: CPU µs/msg"},
	{"echo_c50_16KiB_p50_us", "echo c=50 16 KiB: p50 µs"},
	{"echo_c50_16KiB_p99_us", "echo c=50 16 KiB: p99 µs"},
	{"echo_c50_16KiB_cpu_us_per_msg", "echo c=50 16 KiB: CPU µs/msg"},
	{"pipelined_c8_64B_msgs_per_s", "pipelined c=8×16 64 B: msgs/s"},
	{"pipelined_c8_64B_cpu_us_per_msg", "pipelined c=8×16 64 B: CPU µs/msg"},
	{"pipelined_c8_16KiB_msgs_per_s", "pipelined c=8×16 16 KiB: msgs/s"},
	{"pipelined_c8_16KiB_mb_per_s", "pipelined c=8×16 16 KiB: MB/s"},
	{"pipelined_c8_16KiB_cpu_us_per_msg", "pipelined c=8×16 16 KiB: CPU µs/msg"},
	{"load", "load average at start"},
}

func (r *report) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark: WebSocket proxies on loopback\n\n")
	fmt.Fprintf(&b, "Run %s, %d repetition(s), order rotated; %d idle connections; %v per timed case; %s, %d CPUs, %s.\n",
		r.started.UTC().Format(time.RFC3339), r.s.reps, r.s.idleConns, r.s.dur, runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "Every target proxies to the same gorilla echo backend (examples/echo); \"direct\" is that backend alone. ")
	fmt.Fprintf(&b, "Costs are the target's own (RSS and CPU of its process tree). Cells: mean over repetitions (ratio to %s, or %s-wss for the -wss targets, in the same repetitions). ", baseline, baseline)
	fmt.Fprintf(&b, "Caddy targets run with an access log and metrics on; -wss targets serve TLS 1.3 (X25519) on the client leg with one certificate; the backend leg is plaintext.\n\n")
	fmt.Fprintf(&b, "| figure | %s |\n|---|%s\n", strings.Join(r.targets, " | "), strings.Repeat("---|", len(r.targets)))
	for _, row := range rows {
		var cells []string
		any := false
		for _, t := range r.targets {
			mean, ratio, ok := r.cell(t, row.key)
			if !ok {
				cells = append(cells, "–")
				continue
			}
			any = true
			c := format(mean)
			if !math.IsNaN(ratio) && t != baselineOf(t) && row.key != "load" {
				c += " (" + noNegZero(fmt.Sprintf("%.2f", ratio)) + "×)"
			}
			cells = append(cells, c)
		}
		if any {
			fmt.Fprintf(&b, "| %s | %s |\n", row.label, strings.Join(cells, " | "))
		}
	}
	b.WriteString("\n")
	return b.String()
}

func (r *report) cell(target, key string) (mean, ratio float64, ok bool) {
	var vals, ratios []float64
	for _, rep := range r.reps {
		res, found := rep[target]
		if !found {
			continue
		}
		v, found := res[key]
		if !found {
			continue
		}
		vals = append(vals, v)
		if base, found := rep[baselineOf(target)][key]; found && base != 0 {
			ratios = append(ratios, v/base)
		}
	}
	if len(vals) == 0 {
		return 0, 0, false
	}
	ratio = math.NaN()
	if len(ratios) > 0 {
		ratio = avg(ratios)
	}
	return avg(vals), ratio, true
}

func avg(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func format(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return noNegZero(fmt.Sprintf("%.2f", v))
	}
}

// noNegZero drops the sign of a figure that rounds to zero (a goroutine
// count a few below the baseline, over thousands of connections).
func noNegZero(s string) string {
	if strings.Trim(s, "-0.") == "" {
		return strings.TrimPrefix(s, "-")
	}
	return s
}
