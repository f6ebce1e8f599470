// Package modules is the Caddy glue of Between: the `between` app, its servers
// and listeners, access rules, and the reload semantics (state that survives a
// config change lives in package-level usage pools).
package modules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `between` Caddy app: Layer 4 load balancing of TCP connections
// across backends found by discovery, checked by health checks, and picked by
// a balancing policy. Each entry of servers is one independent service.
type App struct {
	// Servers by name. The name appears in logs, stats and the admin API.
	Servers map[string]*Server `json:"servers,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	events *caddyevents.App
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between",
		New: func() caddy.Module { return new(App) },
	}
}

// UnmarshalJSON decodes the app strictly: an unknown or malformed field is an
// error that names the server and the field.
func (a *App) UnmarshalJSON(data []byte) error {
	var raw struct {
		Servers map[string]json.RawMessage `json:"servers,omitempty"`
	}
	if err := decodeStrict(data, &raw); err != nil {
		return err
	}
	a.Servers = make(map[string]*Server, len(raw.Servers))
	for name, r := range raw.Servers {
		if name == "" {
			return fmt.Errorf("servers: a server name must not be empty")
		}
		s := new(Server)
		if err := decodeStrict(r, s); err != nil {
			return fmt.Errorf("server %q: %w", name, err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, r); err == nil {
			sum := sha256.Sum256(compact.Bytes())
			s.key = name + "/" + hex.EncodeToString(sum[:8])
		}
		a.Servers[name] = s
	}
	return nil
}

// Provision sets up every server: modules, validation and shared state. It
// binds no socket (caddy validate and caddy adapt provision too).
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	if len(a.Servers) > 0 {
		ev, err := ctx.App("events")
		if err != nil {
			return fmt.Errorf("loading the events app: %w", err)
		}
		a.events = ev.(*caddyevents.App)
	}
	seen := map[string]string{}
	for _, name := range a.names() {
		s := a.Servers[name]
		if err := s.provision(ctx, name, a.logger); err != nil {
			return fmt.Errorf("server %q: %w", name, err)
		}
		for _, k := range s.listenKeys() {
			if other, ok := seen[k]; ok {
				return fmt.Errorf("server %q: listen %s: already used by server %q", name, k, other)
			}
			seen[k] = name
		}
		if s.key == "" {
			s.key = name
		}
		v, _, err := states.LoadOrNew(s.key, func() (caddy.Destructor, error) {
			return newServerState(s), nil
		})
		if err != nil {
			return fmt.Errorf("server %q: %w", name, err)
		}
		s.state = v.(*serverState)
	}
	return nil
}

// names returns the server names in a stable order.
func (a *App) names() []string {
	names := make([]string, 0, len(a.Servers))
	for n := range a.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Start starts discovery and health checks and begins accepting connections.
func (a *App) Start() error {
	for _, name := range a.names() {
		s := a.Servers[name]
		s.state.events.Store(&eventSink{ctx: a.ctx, app: a.events})
		s.state.start()
		for _, na := range s.addrs {
			for i := uint(0); i < max(na.PortRangeSize(), 1); i++ {
				release, err := listenShared(a.ctx, na, i, a.logger, s.serveTCP)
				if err != nil {
					a.Stop()
					return fmt.Errorf("server %q: listen %s: %w", name, na.JoinHostPort(i), err)
				}
				s.releases = append(s.releases, release)
			}
		}
		running.Store(name, s)
		a.logger.Info("server started", zap.String("server", name), zap.Strings("listen", s.Listen), zap.String("protocol", s.Protocol))
	}
	return nil
}

// Stop stops accepting connections. Open connections continue: those of a
// server the next config keeps unchanged stay with it; those of a removed or
// changed server close after drain_timeout ("0": when they end).
func (a *App) Stop() error {
	for _, name := range a.names() {
		s := a.Servers[name]
		for _, r := range s.releases {
			r()
		}
		s.releases = nil
		running.CompareAndDelete(name, s)
		if s.state == nil {
			continue
		}
		if refs, _ := states.References(s.key); refs <= 1 && s.DrainTimeout > 0 {
			s.state.closeConnsAfter(time.Duration(s.DrainTimeout))
		}
	}
	return nil
}

// Cleanup releases the servers' shared state; the last config to hold a state
// stops its discovery and health checks.
func (a *App) Cleanup() error {
	for _, s := range a.Servers {
		// s.state stays set: a connection accepted just before the listener
		// switched to the next config may still be starting on this server,
		// and it is served with the (now static) state it was accepted for.
		if s.state != nil && !s.released {
			s.released = true
			if _, err := states.Delete(s.key); err != nil {
				a.logger.Error("releasing server state", zap.String("server", s.name), zap.Error(err))
			}
		}
	}
	return nil
}

var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ json.Unmarshaler   = (*App)(nil)
)
