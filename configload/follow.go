package configload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"
)

// store is a key in a key-value store that a loader follows.
type store interface {
	// read returns the key's value now.
	read(ctx context.Context) (reading, error)
	// next blocks until the key may have changed after the reading at pos
	// (it may also return the same value), or until ctx ends.
	next(ctx context.Context, pos uint64) (reading, error)
	// where names the key and the store, for logs and errors.
	where() string
	// close releases the store's connections.
	close()
}

// reading is one read of the key.
type reading struct {
	value []byte
	found bool
	pos   uint64 // Consul's index or etcd's revision of the read
}

// injectedLoadDelay is the load_delay written next to the loader into
// every config it applies. It only spaces Caddy's calls of LoadConfig: a
// change made during the delay is not lost, the next call sees it at once.
const injectedLoadDelay = caddy.Duration(100 * time.Millisecond)

// Pauses after a failed read of the store before the next read, doubling
// from retryMin to retryMax.
const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Second
)

// followers holds one *follower per loader identity (the module's JSON), so
// that what a loader saw survives the config reloads it causes.
var followers = caddy.NewUsagePool()

// follower is what a loader knows about its key across config reloads.
type follower struct {
	store store

	mu       sync.Mutex
	known    bool   // a read succeeded: pos, found and last are valid
	pos      uint64 // position of the last read
	found    bool   // the key existed at the last read
	last     []byte // the value last acted on (applied or rejected)
	applying bool   // a loader of this identity is inside caddy.Load
	failures int    // reads failed in a row
}

// Destruct closes the store when no config uses the loader any more.
func (f *follower) Destruct() error {
	f.store.close()
	return nil
}

// loader is the part that the Consul and etcd loaders share: it follows the
// key and applies each new value. See the package doc for the sequence.
type loader struct {
	adapter string          // config adapter name; "" for JSON
	self    json.RawMessage // the module's JSON, injected into applied configs
	poolKey string
	f       *follower
	logger  *zap.Logger
	// follow: wait for a change before applying (this loader was
	// provisioned by a config that its own follower applied)
	follow bool
}

// provision joins (or starts) the follower of the module whose JSON is
// self; newStore is called when the follower is new.
func (l *loader) provision(ctx caddy.Context, id caddy.ModuleID, module any, adapter string, newStore func() (store, error)) error {
	l.logger = ctx.Logger()
	l.adapter = adapter
	self, err := selfJSON(id, module)
	if err != nil {
		return err
	}
	l.self = self
	l.poolKey = string(self)
	v, _, err := followers.LoadOrNew(l.poolKey, func() (caddy.Destructor, error) {
		s, err := newStore()
		if err != nil {
			return nil, err
		}
		return &follower{store: s}, nil
	})
	if err != nil {
		return err
	}
	l.f = v.(*follower)
	l.f.mu.Lock()
	l.follow = l.f.applying
	l.f.mu.Unlock()
	return nil
}

// cleanup leaves the follower. It runs inside the caddy.Load of a
// successful apply: it must not wait for load.
func (l *loader) cleanup() error {
	if l.f == nil {
		return nil
	}
	_, err := followers.Delete(l.poolKey)
	return err
}

// selfJSON is the module's config as it appears under admin.config.load:
// its fields (placeholders unreplaced, so no secret is written out) and
// "module".
func selfJSON(id caddy.ModuleID, module any) (json.RawMessage, error) {
	b, err := json.Marshal(module)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["module"], _ = json.Marshal(id.Name())
	return json.Marshal(m)
}

// load is LoadConfig: it applies the key's value itself (caddy.Load) and
// returns nil, nil once ctx's config was replaced; it returns an error when
// the store cannot be read. See the package doc.
func (l *loader) load(ctx caddy.Context) ([]byte, error) {
	f := l.f
	// Without load_delay Caddy calls LoadConfig while it loads ctx's
	// config, holding the lock that caddy.Load takes: return the config
	// for Caddy to apply instead.
	synchronous := caddy.ActiveContext().Context != ctx.Context
	for {
		if ctx.Err() != nil {
			return nil, nil
		}
		f.mu.Lock()
		failures, readNow, pos := f.failures, synchronous || !l.follow || !f.known || f.failures > 0, f.pos
		f.mu.Unlock()
		if failures > 0 && !sleep(ctx, retryPause(failures)) {
			return nil, nil
		}
		var r reading
		var err error
		if readNow {
			r, err = f.store.read(ctx)
		} else {
			r, err = f.store.next(ctx, pos)
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		f.mu.Lock()
		if err != nil {
			f.failures++
			f.mu.Unlock()
			return nil, err // Caddy logs it and calls again after load_delay
		}
		first := !l.follow
		l.follow = true
		changed := !f.known || r.found != f.found || !bytes.Equal(r.value, f.last)
		f.known, f.failures, f.pos, f.found = true, 0, r.pos, r.found
		if r.found {
			f.last = r.value
		} else {
			f.last = nil
		}
		f.mu.Unlock()

		if synchronous {
			// Caddy holds its config lock until this returns: never wait
			if !r.found {
				return nil, fmt.Errorf("%s: not found", f.store.where())
			}
			return l.prepare(r.value)
		}
		if !r.found {
			if first {
				return nil, fmt.Errorf("%s: not found", f.store.where())
			}
			if changed {
				l.logger.Warn("config key deleted; the running config stays until the key is written again",
					zap.String("source", f.store.where()), zap.Uint64("index", r.pos))
			}
			continue
		}
		if !first && !changed {
			continue
		}
		cfg, err := l.prepare(r.value)
		if err != nil {
			l.logger.Error("config from the key rejected; the running config stays until the next change",
				zap.String("source", f.store.where()), zap.Uint64("index", r.pos), zap.Error(err))
			continue
		}
		l.logger.Info("applying config from the key", zap.String("source", f.store.where()), zap.Uint64("index", r.pos), zap.Int("bytes", len(cfg)))
		f.mu.Lock()
		f.applying = true
		f.mu.Unlock()
		err = caddy.Load(cfg, false)
		f.mu.Lock()
		f.applying = false
		f.mu.Unlock()
		if err != nil {
			l.logger.Error("config from the key failed to load; the running config stays until the next change",
				zap.String("source", f.store.where()), zap.Uint64("index", r.pos), zap.Error(err))
			continue
		}
		if ctx.Err() != nil {
			// the new config runs, with its own loader following the key
			l.logger.Info("applied config from the key", zap.String("source", f.store.where()), zap.Uint64("index", r.pos))
			return nil, nil
		}
		// the same config as the running one (Caddy logged "config is
		// unchanged"): keep following
	}
}

// prepare turns a value of the key into the config to load: adapted to JSON
// when an adapter is set, with this loader injected.
func (l *loader) prepare(value []byte) ([]byte, error) {
	cfg, err := adapt(l.adapter, l.f.store.where(), value, l.logger)
	if err != nil {
		return nil, err
	}
	return inject(cfg, l.self)
}

// adapt runs the config adapter named adapter ("" or "json": none) on value;
// name is passed to the adapter as the file name. Warnings are logged.
func adapt(adapter, name string, value []byte, logger *zap.Logger) ([]byte, error) {
	if adapter == "" || adapter == "json" {
		return value, nil
	}
	a := caddyconfig.GetAdapter(adapter)
	if a == nil {
		return nil, fmt.Errorf("adapter %q: no such config adapter", adapter)
	}
	out, warnings, err := a.Adapt(value, map[string]any{"filename": name})
	if err != nil {
		return nil, fmt.Errorf("adapting with %s: %w", adapter, err)
	}
	for _, w := range warnings {
		logger.Warn("config adapter warning", zap.String("adapter", adapter), zap.String("warning", w.String()))
	}
	return out, nil
}

// inject writes the loader (self) into cfg's admin.config.load, with a
// positive load_delay, so that the loaded config goes on following the key.
// A config that names a loader of its own keeps it (and its load_delay);
// every other admin field is kept.
func inject(cfg []byte, self json.RawMessage) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(cfg, &doc); err != nil {
		return nil, fmt.Errorf("not a JSON config: %w", err)
	}
	if doc == nil {
		return nil, errors.New("not a JSON config: null")
	}
	admin, err := object(doc["admin"], "admin")
	if err != nil {
		return nil, err
	}
	config, err := object(admin["config"], "admin.config")
	if err != nil {
		return nil, err
	}
	if isNull(config["load"]) {
		config["load"] = self
		var delay caddy.Duration
		if !isNull(config["load_delay"]) {
			if err := json.Unmarshal(config["load_delay"], &delay); err != nil {
				return nil, fmt.Errorf("admin.config.load_delay: %w", err)
			}
		}
		if delay <= 0 {
			config["load_delay"], _ = json.Marshal(time.Duration(injectedLoadDelay).String())
		}
	}
	if admin["config"], err = json.Marshal(config); err != nil {
		return nil, err
	}
	if doc["admin"], err = json.Marshal(admin); err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}

// object decodes a JSON object (absent or null: an empty one); field names
// it in errors.
func object(raw json.RawMessage, field string) (map[string]json.RawMessage, error) {
	m := map[string]json.RawMessage{}
	if isNull(raw) {
		return m, nil
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", field, err)
	}
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	return m, nil
}

func isNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

// retryPause is the pause before reading again after failures failed reads.
func retryPause(failures int) time.Duration {
	d := retryMin
	for i := 1; i < failures && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// validateAdapter checks the adapter field.
func validateAdapter(adapter string) error {
	if adapter == "" || adapter == "json" {
		return nil
	}
	if caddyconfig.GetAdapter(adapter) == nil {
		return fmt.Errorf("adapter %q: no such config adapter in this Caddy (see caddy adapt --help; built-in: caddyfile)", adapter)
	}
	return nil
}
