package websocket

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Learned idle timeouts are shared through the storage Caddy is configured
// with (the file system by default; Redis, Consul, S3… storage modules in a
// fleet), so that an instance that starts behind a balancer already knows
// what its siblings learned, and a restart does not start from nothing.
// No server of our own: whatever stores the fleet's certificates.
const (
	sharedPrefix = "websocket/learned"
	// sharedSync is how often an instance merges what the others learned.
	sharedSync = 10 * time.Second
	// sharedTTL is how long a learned value is trusted; a backend's idle
	// timeout can change with a deploy, so an old value expires and is
	// learned again.
	sharedTTL = 7 * 24 * time.Hour
)

// sharedValue is one learned idle timeout as stored: when and where it was
// learned.
type sharedValue struct {
	Kind        string        `json:"kind"` // upstream or network
	Key         string        `json:"key"`
	IdleTimeout time.Duration `json:"idle_timeout_ns"`
	Drops       int           `json:"drops_seen"`
	LearnedAt   time.Time     `json:"learned_at"`
	Instance    string        `json:"instance"`
}

// sharing is the hub's link to the storage.
type sharing struct {
	mu      sync.Mutex
	storage certmagic.Storage
	logger  *zap.Logger
	stop    chan struct{}
	started bool
}

func instanceName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

func sharedKey(kind, key string) string {
	return sharedPrefix + "/" + kind + "/" + base64.RawURLEncoding.EncodeToString([]byte(key)) + ".json"
}

// share starts sharing through the newest config's storage: a first merge
// now (bounded, so a slow storage cannot hold up provisioning for long),
// then one every sharedSync.
func (h *hub) share(st certmagic.Storage, logger *zap.Logger) {
	if st == nil {
		return
	}
	h.sharing.mu.Lock()
	h.sharing.storage, h.sharing.logger = st, logger
	start := !h.sharing.started
	h.sharing.started = true
	if start {
		h.sharing.stop = make(chan struct{})
	}
	stop := h.sharing.stop
	h.sharing.mu.Unlock()
	if !start {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	h.mergeShared(ctx)
	cancel()
	go func() {
		t := time.NewTicker(sharedSync)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), sharedSync)
				h.mergeShared(ctx)
				cancel()
			}
		}
	}()
}

func (h *hub) stopSharing() {
	h.sharing.mu.Lock()
	defer h.sharing.mu.Unlock()
	if h.sharing.started {
		close(h.sharing.stop)
		h.sharing.started = false
	}
}

func (h *hub) sharedStorage() (certmagic.Storage, *zap.Logger) {
	h.sharing.mu.Lock()
	defer h.sharing.mu.Unlock()
	return h.sharing.storage, h.sharing.logger
}

// mergeShared reads every stored value and takes those not expired into
// the learners; connections whose keepalive gets shorter get it at once.
func (h *hub) mergeShared(ctx context.Context) {
	st, logger := h.sharedStorage()
	if st == nil {
		return
	}
	keys, err := st.List(ctx, sharedPrefix, true)
	if err != nil {
		return // nothing stored yet, or the storage is away: next time
	}
	changed := false
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") {
			continue
		}
		b, err := st.Load(ctx, k)
		if err != nil {
			continue
		}
		var v sharedValue
		if json.Unmarshal(b, &v) != nil || time.Since(v.LearnedAt) > sharedTTL {
			continue
		}
		switch v.Kind {
		case "upstream":
			if h.learner(v.Key).Merge(v.IdleTimeout) {
				changed = true
				logger.Info("websocket took a shared backend idle timeout",
					zap.String("upstream", v.Key), zap.Duration("idle_timeout", v.IdleTimeout),
					zap.String("learned_by", v.Instance), zap.Time("learned_at", v.LearnedAt))
			}
		case "network":
			p, err := netip.ParsePrefix(v.Key)
			if err == nil && h.networks.ForNetwork(p).Merge(v.IdleTimeout) {
				changed = true
				logger.Info("websocket took a shared client network idle timeout",
					zap.String("network", v.Key), zap.Duration("idle_timeout", v.IdleTimeout),
					zap.String("learned_by", v.Instance))
			}
		}
	}
	if changed {
		h.refreshPolicies(func(*connection) bool { return true })
	}
}

// publish stores a value this instance learned, in the background.
func (h *hub) publish(kind, key string, t time.Duration, drops int) {
	st, logger := h.sharedStorage()
	if st == nil {
		return
	}
	v := sharedValue{Kind: kind, Key: key, IdleTimeout: t, Drops: drops, LearnedAt: time.Now().UTC(), Instance: instanceName()}
	go func() {
		b, _ := json.Marshal(v)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := st.Store(ctx, sharedKey(kind, key), b); err != nil {
			logger.Warn("websocket could not share a learned idle timeout", zap.String(kind, key), zap.Error(err))
		}
	}()
}
