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

// startSharing starts sharing through the newest config's storage: a first merge
// now (bounded, so a slow storage cannot hold up provisioning for long),
// then one every sharedSync.
func (hb *hub) startSharing(st certmagic.Storage, logger *zap.Logger) {
	if st == nil {
		return
	}
	hb.sharing.mu.Lock()
	hb.sharing.storage, hb.sharing.logger = st, logger
	start := !hb.sharing.started
	hb.sharing.started = true
	if start {
		hb.sharing.stop = make(chan struct{})
	}
	stop := hb.sharing.stop
	hb.sharing.mu.Unlock()
	if !start {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	hb.mergeShared(ctx)
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
				hb.mergeShared(ctx)
				cancel()
			}
		}
	}()
}

func (hb *hub) stopSharing() {
	hb.sharing.mu.Lock()
	defer hb.sharing.mu.Unlock()
	if hb.sharing.started {
		close(hb.sharing.stop)
		hb.sharing.started = false
	}
}

func (hb *hub) sharedStorage() (certmagic.Storage, *zap.Logger) {
	hb.sharing.mu.Lock()
	defer hb.sharing.mu.Unlock()
	return hb.sharing.storage, hb.sharing.logger
}

// mergeShared reads every stored value and takes those not expired into
// the learners; connections whose keepalive gets shorter get it at once.
func (hb *hub) mergeShared(ctx context.Context) {
	st, logger := hb.sharedStorage()
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
			if hb.learning.learners.of(v.Key).Merge(v.IdleTimeout) {
				changed = true
				logger.Info("websocket took a shared backend idle timeout",
					zap.String("upstream", v.Key), zap.Duration("idle_timeout", v.IdleTimeout),
					zap.String("learned_by", v.Instance), zap.Time("learned_at", v.LearnedAt))
			}
		case "network":
			p, err := netip.ParsePrefix(v.Key)
			if err == nil && hb.learning.networks.ForNetwork(p).Merge(v.IdleTimeout) {
				changed = true
				logger.Info("websocket took a shared client network idle timeout",
					zap.String("network", v.Key), zap.Duration("idle_timeout", v.IdleTimeout),
					zap.String("learned_by", v.Instance))
			}
		}
	}
	if changed {
		hb.refreshPolicies(func(*connection) bool { return true })
	}
}

// share stores a value this instance learned, in the background.
func (hb *hub) share(kind, key string, t time.Duration, drops int) {
	st, logger := hb.sharedStorage()
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
