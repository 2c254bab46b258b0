package websocket

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-websocket/caddy-websocket/internal/frame"
	"github.com/caddy-websocket/caddy-websocket/internal/relay"
)

// Metrics go to Caddy's metrics registry, so they appear on its /metrics
// endpoint beside the rest. Labels are bounded: no client addresses, close
// codes of the private ranges folded into 3xxx and 4xxx, upstreams as
// configured.
const metricsNS, metricsSub = "caddy", "websocket"

var wsMetrics = struct {
	once       sync.Once
	upgrades   *prometheus.CounterVec
	closes     *prometheus.CounterVec
	reconnects prometheus.Counter
	resumes    *prometheus.CounterVec
	drained    prometheus.Counter
	rtt        *prometheus.HistogramVec
	hub        *hubCollector
	busUp      prometheus.Gauge
	busMsgs    *prometheus.CounterVec
	deliveries *prometheus.CounterVec
}{}

func initMetrics(reg *prometheus.Registry) error {
	wsMetrics.once.Do(func() {
		wsMetrics.upgrades = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "upgrades_total",
			Help: "WebSocket upgrade requests by the client's HTTP version (h1, h2, h3) and result: accepted, a refusal reason (method, http_version, upgrade, connection, version, key, body, origin, subprotocol), a backend error (backend_unreachable, backend_timeout, backend_invalid), or backend_refused (a non-101 answer passed on).",
		}, []string{"proto", "result"})
		wsMetrics.closes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "closes_total",
			Help: "Finished connections by who closed (client, backend, gateway) and Close code (1006: vanished without one).",
		}, []string{"closer", "code"})
		wsMetrics.drained = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "drained_total",
			Help: "Connections closed by a Caddy stop's drain (1001, spread over drain_window).",
		})
		wsMetrics.reconnects = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "reconnects_total",
			Help: "Backend connections re-dialled under a connected client (terminate mode).",
		})
		wsMetrics.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "resumes_total",
			Help: "Client session resume (client on_close resume), by event: detached (the client vanished, the session waits), resumed (it came back), expired (the window or resume_buffer ran out).",
		}, []string{"event"})
		wsMetrics.rtt = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "pong_rtt_seconds",
			Help:    "Round trip of the gateway's keepalive pings, by side.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"side"})
		wsMetrics.hub = &hubCollector{}
		wsMetrics.busUp = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "bus_up",
			Help: "1 while the fleet's message bus (global option websocket { bus }) reaches its broker with every subscription renewed, 0 while it does not.",
		})
		wsMetrics.busMsgs = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "bus_messages_total",
			Help: "Messages through the fleet's bus, by direction: published (by this instance's admin API) or received (from the broker).",
		}, []string{"direction"})
		wsMetrics.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "bus_deliveries_total",
			Help: "Messages from the fleet's bus queued for this instance's connections (delivered), or not taken (dropped: a tunnel, a closing or slow connection, a connection gone, an unreadable message).",
		}, []string{"result"})
	})
	for _, c := range []prometheus.Collector{wsMetrics.upgrades, wsMetrics.closes, wsMetrics.drained, wsMetrics.reconnects, wsMetrics.resumes, wsMetrics.rtt, wsMetrics.hub,
		wsMetrics.busUp, wsMetrics.busMsgs, wsMetrics.deliveries} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

func countUpgrade(proto, result string) {
	if wsMetrics.upgrades != nil {
		wsMetrics.upgrades.WithLabelValues(proto, result).Inc()
	}
}

func countClose(closer string, code frame.StatusCode) {
	if wsMetrics.closes != nil {
		wsMetrics.closes.WithLabelValues(closer, codeLabel(code)).Inc()
	}
}

func countDrained() {
	if wsMetrics.drained != nil {
		wsMetrics.drained.Inc()
	}
}

func countResume(event string) {
	if wsMetrics.resumes != nil {
		wsMetrics.resumes.WithLabelValues(event).Inc()
	}
}

func countReconnect() {
	if wsMetrics.reconnects != nil {
		wsMetrics.reconnects.Inc()
	}
}

func setBusUp(up bool) {
	if wsMetrics.busUp != nil {
		v := 0.0
		if up {
			v = 1
		}
		wsMetrics.busUp.Set(v)
	}
}

func countBus(direction string) {
	if wsMetrics.busMsgs != nil {
		wsMetrics.busMsgs.WithLabelValues(direction).Inc()
	}
}

func countDelivery(result string, n int) {
	if wsMetrics.deliveries != nil && n > 0 {
		wsMetrics.deliveries.WithLabelValues(result).Add(float64(n))
	}
}

func observeRTT(side relay.Side, rtt time.Duration) {
	if wsMetrics.rtt != nil {
		wsMetrics.rtt.WithLabelValues(side.String()).Observe(rtt.Seconds())
	}
}

// codeLabel keeps the code label bounded: the 3000–4999 ranges are the
// applications', with two thousand values each.
func codeLabel(code frame.StatusCode) string {
	switch {
	case code >= 3000 && code < 4000:
		return "3xxx"
	case code >= 4000 && code < 5000:
		return "4xxx"
	case code >= 1000 && code < 1016:
		return strconv.Itoa(int(code))
	}
	return "other"
}

// closedTotals accumulate the counters of finished connections; the
// collector adds the live ones at scrape time, so the relays' hot paths
// touch no shared metric.
var closedTotals struct {
	bytes, messages, pings [2]atomic.Int64
}

func addClosed(s relay.Summary) {
	for i, l := range []relay.Counts{s.Legs.Client, s.Legs.Backend} {
		closedTotals.bytes[i].Add(l.Bytes)
		closedTotals.messages[i].Add(l.Messages)
		closedTotals.pings[i].Add(l.Pings)
	}
}

// hubCollector reads the hubs at scrape time.
type hubCollector struct{}

var (
	descOpen = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_connections_open",
		"Live WebSocket connections by mode, upstream and the client's HTTP version.", []string{"mode", "upstream", "proto"}, nil)
	descBytes = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_bytes_total",
		"Bytes relayed, by the side that sent them.", []string{"from"}, nil)
	descMessages = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_messages_total",
		"Messages relayed, by the side that sent them.", []string{"from"}, nil)
	descPings = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_pings_total",
		"Keepalive pings the gateway sent, by side.", []string{"to"}, nil)
	descHealthy = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_upstream_healthy",
		"1 when the upstream is up, 0 when a health check marked it down.", []string{"upstream"}, nil)
	descLearned = prometheus.NewDesc(metricsNS+"_"+metricsSub+"_learned_idle_timeout_seconds",
		"Idle timeout learned per upstream (keepalive auto): the shortest silence before a drop.", []string{"upstream"}, nil)
)

func (hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpen, descBytes, descMessages, descPings, descLearned, descHealthy} {
		ch <- d
	}
}

func (hubCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ mode, upstream, proto string }
	open := map[key]int{}
	var bytes, messages, pings [2]int64
	for i := range 2 {
		bytes[i] = closedTotals.bytes[i].Load()
		messages[i] = closedTotals.messages[i].Load()
		pings[i] = closedTotals.pings[i].Load()
	}
	learned := map[string]float64{}
	if hb := currentHub(); hb != nil {
		for _, c := range hb.snapshot() {
			open[key{c.mode, c.upstream(), c.proto}]++
			st := c.relay.Stats()
			for i, l := range []relay.LegView{st.Legs.Client, st.Legs.Backend} {
				bytes[i] += l.Bytes
				messages[i] += l.Messages
				pings[i] += l.Pings
			}
		}
		for up, s := range healthSnapshot(&hb.health) {
			v := 1.0
			if s.down {
				v = 0
			}
			ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, v, up)
		}
		for up, l := range hb.learnedTimeouts() {
			learned[up] = l.Seconds()
		}
	}
	for k, n := range open {
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(n), k.mode, k.upstream, k.proto)
	}
	for i, side := range []string{"client", "backend"} {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(bytes[i]), side)
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(messages[i]), side)
		ch <- prometheus.MustNewConstMetric(descPings, prometheus.CounterValue, float64(pings[i]), side)
	}
	for up, v := range learned {
		ch <- prometheus.MustNewConstMetric(descLearned, prometheus.GaugeValue, v, up)
	}
}
