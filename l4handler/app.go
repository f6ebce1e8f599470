package l4handler

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `between` companion app. It owns no listener: every `between`
// layer4 handler loads it, and it runs the lifecycle of the handlers of its
// config. Start starts their discovery, health checks and rate sampling;
// Stop applies drain_timeout to the handlers the next config removed or
// changed. It also knows where each handler lives (layer4 server, route,
// listen addresses) and rejects one name used with two different configs.
//
// It is loaded automatically by every between handler; configure it only to
// set acme_hosts.
type App struct {
	// ACMEHosts are DNS names whose certificates the tls app obtains and
	// renews (ACME by default) although no HTTP site uses them: a layer4
	// route with caddy-l4's tls handler then serves them. They are handed
	// to the tls app at Start, as Caddy's http app hands it its site names,
	// so issuers, storage, renewal and challenges come from apps.tls
	// (automation policies, or the Caddyfile's acme_ca, email, ...). Names
	// must be DNS names, listed once; IP addresses and wildcards are
	// refused (a wildcard needs the DNS challenge: list it in
	// apps.tls.certificates.automate instead).
	ACMEHosts []string `json:"acme_hosts,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	events *caddyevents.App
	tlsApp *caddytls.TLS // loaded when ACMEHosts is set

	mu       sync.Mutex
	handlers []*Handler            // registered in provisioning order
	located  bool                  // the layer4 config has been walked
	places   map[string][]Location // handler name -> where it is configured
	hashes   map[string]string     // handler name -> config hash (from the walk or the first handler)
}

// Location is where a between handler is configured: a layer4 server, the
// index of the route (and of the routes of nested subroutes) and the
// server's listen addresses.
type Location struct {
	Server string   `json:"layer4_server"`      // layer4 server name (srv0, srv1, ... from a Caddyfile)
	Route  int      `json:"route"`              // index in the server's routes
	Nested []int    `json:"subroute,omitempty"` // indexes in nested subroutes, outermost first
	Listen []string `json:"listen"`             // the server's listen addresses
}

// String renders the location for error messages.
func (l Location) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "layer4 server %q route %d", l.Server, l.Route)
	for _, n := range l.Nested {
		fmt.Fprintf(&b, " subroute route %d", n)
	}
	return b.String()
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision connects the app to the config's events app, and to its tls
// app when acme_hosts is set.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	// Each config has a registry of its own, served by the admin endpoint's
	// /metrics; the collector reads the surviving states at scrape time.
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := a.loadTLSApp(); err != nil {
		return err
	}
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	a.events = ev.(*caddyevents.App)
	// Caddy emits "started" once every app of the config has started, so
	// the events app has subscribed its handlers by then.
	if err := a.events.On("started", startedHook{a}); err != nil {
		return fmt.Errorf("subscribing to the events app: %w", err)
	}
	return nil
}

// startedHook hands this config's events app to its handlers' states once
// the whole config has started.
type startedHook struct{ a *App }

// Handle is called with Caddy's "started" event.
func (s startedHook) Handle(context.Context, caddy.Event) error {
	handlers, _ := s.a.unique()
	for _, h := range handlers {
		h.state.setEvents(&eventSink{ctx: s.a.ctx, app: s.a.events})
	}
	return nil
}

// register records a provisioned handler. The first call walks the layer4
// config to learn where every between handler lives; a name used with two
// different configs is an error naming both places.
func (a *App) register(ctx caddy.Context, h *Handler) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.located {
		a.located = true
		a.places, a.hashes = map[string][]Location{}, map[string]string{}
		if err := a.locate(ctx); err != nil {
			return err
		}
	}
	if prev, ok := a.hashes[h.Name]; ok && prev != h.hash {
		return a.conflict(h.Name)
	}
	if err := h.setTransport(a.places[h.Name]); err != nil {
		return err
	}
	a.hashes[h.Name] = h.hash
	a.handlers = append(a.handlers, h)
	return nil
}

// conflict is the error for a name configured twice with different configs.
func (a *App) conflict(name string) error {
	where := make([]string, 0, len(a.places[name]))
	for _, l := range a.places[name] {
		where = append(where, l.String())
	}
	if len(where) < 2 {
		return fmt.Errorf("between handler %q: the name is used twice with different config", name)
	}
	return fmt.Errorf("between handler %q: the name is used with different config in %s", name, strings.Join(where, " and in "))
}

// locate walks the raw config of the layer4 app that is loading the handler.
// Caddy keeps a route's raw handler JSON until all of that route's handlers
// are loaded, and the first between handler to register is the first one
// loaded, so at that moment every between handler of the config is still
// readable: those before it would have registered first.
func (a *App) locate(ctx caddy.Context) error {
	var l4 *layer4.App
	for _, m := range ctx.Modules() {
		if app, ok := m.(*layer4.App); ok {
			l4 = app
		}
	}
	if l4 == nil {
		return nil // loaded outside a layer4 app (tests): nothing to place
	}
	names := make([]string, 0, len(l4.Servers))
	for n := range l4.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		srv := l4.Servers[n]
		for i, r := range srv.Routes {
			loc := Location{Server: n, Route: i, Listen: srv.Listen}
			if err := a.walk(r.HandlersRaw, loc); err != nil {
				return err
			}
		}
	}
	for name := range a.places {
		if strings.HasPrefix(a.hashes[name], "conflict:") {
			return a.conflict(name)
		}
	}
	return nil
}

// walk records the between handlers among one route's handlers, descending
// into subroutes.
func (a *App) walk(handlers []json.RawMessage, loc Location) error {
	for _, raw := range handlers {
		var head struct {
			Handler string            `json:"handler"`
			Name    string            `json:"name"`
			Routes  []json.RawMessage `json:"routes"`
		}
		if json.Unmarshal(raw, &head) != nil {
			continue // Caddy reports malformed JSON itself
		}
		switch head.Handler {
		case "between":
			canon, err := canonical(raw)
			if err != nil {
				continue
			}
			hash := configHash(canon)
			name := head.Name
			if name == "" {
				name = "between-" + hash[:8]
			}
			a.places[name] = append(a.places[name], loc)
			if prev, ok := a.hashes[name]; ok && prev != hash {
				a.hashes[name] = "conflict:" + prev
			} else if !ok {
				a.hashes[name] = hash
			}
		case "subroute":
			for j, rr := range head.Routes {
				var route struct {
					Handle []json.RawMessage `json:"handle"`
				}
				if json.Unmarshal(rr, &route) != nil {
					continue
				}
				inner := loc
				inner.Nested = append(append([]int(nil), loc.Nested...), j)
				if err := a.walk(route.Handle, inner); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// unique returns the registered handlers with one entry per state, with how
// many handlers of this config share each state.
func (a *App) unique() ([]*Handler, map[string]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	uses := map[string]int{}
	var out []*Handler
	for _, h := range a.handlers {
		if uses[h.key] == 0 {
			out = append(out, h)
		}
		uses[h.key]++
	}
	return out, uses
}

// locations returns where the handler of that name is configured.
func (a *App) locations(name string) []Location {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.places[name]
}

// Start starts discovery, health checks and rate sampling of this config's
// handlers (a state carried over from the previous config keeps running) and
// makes them the ones the admin API reports; it hands acme_hosts to the tls
// app.
func (a *App) Start() error {
	if err := a.manageACMEHosts(); err != nil {
		return err
	}
	handlers, _ := a.unique()
	if err := a.startUDP(handlers); err != nil {
		return err
	}
	for _, h := range handlers {
		h.state.start()
		running.add(h)
		a.logger.Info("between handler started", zap.String("handler", h.Name), zap.Any("locations", a.locations(h.Name)))
	}
	a.warnMigrateReq()
	return nil
}

// Stop lets open connections continue: those of a handler the next config
// keeps unchanged stay with it; those of a removed or changed handler close
// after its drain_timeout ("0": when they end).
func (a *App) Stop() error {
	handlers, uses := a.unique()
	for _, h := range handlers {
		running.remove(h)
		if refs, _ := states.References(h.key); refs <= uses[h.key] && h.DrainTimeout > 0 {
			h.state.closeConnsAfter(time.Duration(h.DrainTimeout))
		}
	}
	return nil
}

// warnedMigrateReq makes the tcp_migrate_req warning appear once per process.
var warnedMigrateReq sync.Once

// warnMigrateReq warns, once, when a handler listens on a plain TCP address
// while the kernel resets the connections queued on a listening socket that a
// reload closes (net.ipv4.tcp_migrate_req = 0). between+tcp/ addresses share
// one socket across reloads and need no sysctl.
func (a *App) warnMigrateReq() {
	a.mu.Lock()
	var plain []string
	for _, locs := range a.places {
		for _, l := range locs {
			for _, addr := range l.Listen {
				if na, err := caddy.ParseNetworkAddress(addr); err == nil && strings.HasPrefix(na.Network, "tcp") {
					plain = append(plain, addr)
				}
			}
		}
	}
	a.mu.Unlock()
	if len(plain) == 0 {
		return
	}
	v, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return // not Linux, or no such sysctl: nothing to say
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(v))); err != nil || n != 0 {
		return
	}
	warnedMigrateReq.Do(func() {
		sort.Strings(plain)
		a.logger.Warn("plain TCP listen addresses and net.ipv4.tcp_migrate_req = 0: every reload resets the connections queued on the closing socket; "+
			"listen on between+tcp/ADDRESS instead, or set the sysctl to 1",
			zap.Strings("addresses", plain))
	})
}

var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
