// Package l4handler plugs Between into caddy-l4: the `between` layer4
// handler (elect a backend from discovery and health, dial, proxy), the
// `between` companion app that runs the handlers' discovery and health checks
// and keeps their state across reloads, the `/between/` admin endpoints, and
// the handler's Caddyfile syntax. It is the only package that knows caddy-l4.
package l4handler

import (
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/healthchecks"
	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the `between` layer4 handler: it load-balances the connection
// across backends found by discovery, checked by health checks, and picked by
// a balancing policy, then proxies it (zero-copy on plain TCP). It is
// terminal: handlers after it in a route never run.
//
// Put caddy-l4's matchers in front of it to route by SNI, protocol or client
// address, its `tls` handler to terminate TLS, its `proxy_protocol` handler
// to accept PROXY headers. Handlers with the same name share statistics and
// health state; a reload that leaves a handler unchanged keeps its open
// connections, statistics, health and discovery, and a changed handler
// inherits statistics and health by name.
type Handler struct {
	// Identity in logs, statistics, the admin API and across reloads.
	// Optional: an unnamed handler is "between-" followed by 8 hex digits of
	// its config's hash. Two handlers with the same name must have the same
	// config (they then share one state).
	Name string `json:"name,omitempty"`
	// The balancing policy; default {"policy": "weight"}.
	BalanceRaw json.RawMessage `json:"balance,omitempty" caddy:"namespace=between.balancers inline_key=policy"`
	// How backends are found; required.
	DiscoveryRaw json.RawMessage `json:"discovery,omitempty" caddy:"namespace=between.discovery inline_key=kind"`
	// Active health check; optional (all discovered backends are healthy without one).
	HealthcheckRaw json.RawMessage `json:"healthcheck,omitempty" caddy:"namespace=between.healthchecks inline_key=kind"`
	// Passive health: failed dials mark a backend down.
	PassiveHealth *PassiveHealth `json:"passive_health,omitempty"`
	// Cap on concurrent client connections of this handler; over it a client
	// is closed at once and counted as refused. 0 = unlimited.
	MaxConnections int `json:"max_connections,omitempty"`
	// End the session when no byte moved in either direction for this long
	// (client->backend direction). "0" = no limit.
	ClientIdleTimeout caddy.Duration `json:"client_idle_timeout,omitempty"`
	// Same, for the backend->client direction. The session ends after the
	// smaller non-zero of the two with no traffic either way.
	BackendIdleTimeout caddy.Duration `json:"backend_idle_timeout,omitempty"`
	// Time limit to connect to a backend. "0" = the operating system's.
	BackendConnectionTimeout caddy.Duration `json:"backend_connection_timeout,omitempty"`
	// TCP keepalive on both sockets of a session: the idle time before the
	// first probe (probes then every 15s, 9 unanswered close the socket).
	// "0" (default) = off, as in HAProxy: Between sets no keepalive option on
	// the backend socket, and none on the client socket beyond what the
	// listener did (between+tcp/ listeners accept without keepalive; plain
	// addresses keep Go's default, on after 15s).
	Keepalive caddy.Duration `json:"keepalive,omitempty"`
	// On a failed dial, elect again among the other eligible backends up to
	// this many times. Default 2.
	Retries *int `json:"retries,omitempty"`
	// When a reload removes or changes this handler, its open connections
	// continue this long, then close. "0" (default) = until they end.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`
	// Client address rules (gobetween's access list); refusals are counted.
	Access *Access `json:"access,omitempty"`
	// SNI routing: filter backends by their sni attribute against the
	// client's TLS server name.
	SNI *SNIConfig `json:"sni,omitempty"`
	// Send a PROXY protocol header (version "1" or "2") to the backend
	// carrying the client's address and the address it connected to.
	ProxyProtocol *ProxyProtocol `json:"proxy_protocol,omitempty"`
	// Read a PROXY protocol header from the balancers in front (allow) and
	// use the client address it declares, keeping kernel splice (caddy-l4's
	// proxy_protocol handler does the same but wraps the connection).
	AcceptProxyProtocol *AcceptProxyProtocol `json:"accept_proxy_protocol,omitempty"`
	// TLS to the backends: after the dial, a TLS client handshake (within
	// backend_connection_timeout, or 10s when that is 0) with verification,
	// optional client certificate, versions, ciphers and session resumption.
	// A failed handshake counts as a failed dial.
	BackendsTLS *BackendsTLS `json:"backends_tls,omitempty"`
	// UDP virtual sessions: only on UDP listeners (udp/ADDR,
	// between+udp/ADDR), where the handler relays datagrams.
	UDP *UDPConfig `json:"udp,omitempty"`

	key      string // name + config hash: identity of this exact config in the state pool
	hash     string // hex digest of the canonical config
	raw      json.RawMessage
	balancer balancers.Balancer
	source   discovery.Configured
	checker  healthchecks.Configured
	retries  int
	state    *state
	released bool // Cleanup has let go of state
	app      *App
	logger   *zap.Logger
	access   *zap.Logger // the access log: logger name layer4.handlers.between.access
	dialer   net.Dialer
	sni      *balancers.SNIFilter
	proxyVer int         // PROXY header version to backends, 0 = none
	udp      *udpHandler // set when the handler is on a UDP listener

	// keepalive is Keepalive for the client socket; Enable false = leave it
	// as the listener made it.
	keepalive net.KeepAliveConfig
}

// PassiveHealth marks a backend down after max_fails failed dials within
// fail_duration; active health checks (or the end of fail_duration) bring it
// back.
type PassiveHealth = healthchecks.Passive

// SNIConfig configures SNI routing.
type SNIConfig struct {
	// How long to wait for the ClientHello when no tls matcher read it
	// already. Default 2s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// "exact" (default, case-insensitive) or "regexp" (a backend's sni is a
	// regular expression matched against the client's server name).
	HostnameMatchingStrategy string `json:"hostname_matching_strategy,omitempty"`
	// What to do with a client whose server name matches no backend (or who
	// sent none): "default" (backends without sni), "reject", "any".
	UnexpectedHostnameStrategy string `json:"unexpected_hostname_strategy,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.between",
		New: func() caddy.Module { return new(Handler) },
	}
}

// UnmarshalJSON decodes the handler strictly, so that an unknown or malformed
// field is an error naming it, and remembers the config's hash: the state
// identity of this exact config.
func (h *Handler) UnmarshalJSON(data []byte) error {
	type plain Handler // no methods: no recursion
	if err := decodeStrict(data, (*plain)(h)); err != nil {
		return err
	}
	canon, err := canonical(data)
	if err != nil {
		return err
	}
	h.raw = canon
	h.hash = configHash(canon)
	return nil
}

// Provision loads the handler's modules, checks every field and joins (or
// creates) the state of its name and config. It binds nothing and starts no
// goroutine: the companion app starts discovery and health checks.
func (h *Handler) Provision(ctx caddy.Context) error {
	if h.hash == "" { // built in Go rather than decoded
		raw, err := json.Marshal(h)
		if err != nil {
			return err
		}
		if err := h.UnmarshalJSON(raw); err != nil {
			return err
		}
	}
	if h.Name == "" {
		h.Name = "between-" + h.hash[:8]
	}
	h.key = h.Name + "/" + h.hash
	h.logger = ctx.Logger().With(zap.String("handler", h.Name))
	h.access = h.logger.Named(accessLoggerName)
	if err := h.provision(ctx); err != nil {
		return fmt.Errorf("between handler %q: %w", h.Name, err)
	}
	appMod, err := ctx.App("between")
	if err != nil {
		return fmt.Errorf("between handler %q: loading the between app: %w", h.Name, err)
	}
	h.app = appMod.(*App)
	if err := h.app.register(ctx, h); err != nil {
		return err
	}
	v, _, err := states.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		return newState(h), nil
	})
	if err != nil {
		return fmt.Errorf("between handler %q: %w", h.Name, err)
	}
	h.state = v.(*state)
	return nil
}

// provision checks the fields and loads the sub-modules.
func (h *Handler) provision(ctx caddy.Context) error {
	if h.MaxConnections < 0 {
		return fmt.Errorf("max_connections %d: must not be negative", h.MaxConnections)
	}
	for _, d := range []struct {
		field string
		v     caddy.Duration
	}{
		{"client_idle_timeout", h.ClientIdleTimeout}, {"backend_idle_timeout", h.BackendIdleTimeout},
		{"backend_connection_timeout", h.BackendConnectionTimeout}, {"drain_timeout", h.DrainTimeout},
		{"keepalive", h.Keepalive},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s %s: must not be negative", d.field, time.Duration(d.v))
		}
	}
	h.retries = 2
	if h.Retries != nil {
		if *h.Retries < 0 {
			return fmt.Errorf("retries %d: must not be negative", *h.Retries)
		}
		h.retries = *h.Retries
	}
	// KeepAlive -1 saves the four keepalive setsockopts Go's default makes
	// on every dialed socket.
	h.dialer = net.Dialer{Timeout: time.Duration(h.BackendConnectionTimeout), KeepAlive: -1}
	if h.Keepalive > 0 {
		h.keepalive = net.KeepAliveConfig{Enable: true, Idle: time.Duration(h.Keepalive)}
		h.dialer.KeepAliveConfig = h.keepalive
	}
	if h.Access == nil {
		h.Access = new(Access)
	}
	if err := h.Access.provision(); err != nil {
		return err
	}
	if err := h.provisionSNI(); err != nil {
		return err
	}
	if h.ProxyProtocol != nil {
		v, err := h.ProxyProtocol.provision()
		if err != nil {
			return err
		}
		h.proxyVer = v
	}
	if h.AcceptProxyProtocol != nil {
		if err := h.AcceptProxyProtocol.provision(); err != nil {
			return err
		}
	}
	if h.BackendsTLS != nil {
		if err := h.BackendsTLS.provision(time.Duration(h.BackendConnectionTimeout)); err != nil {
			return err
		}
	}
	if p := h.PassiveHealth; p != nil {
		if p.MaxFails < 0 {
			return fmt.Errorf("passive_health.max_fails %d: must not be negative", p.MaxFails)
		}
		if p.FailDuration < 0 {
			return fmt.Errorf("passive_health.fail_duration: must not be negative")
		}
	}

	if h.BalanceRaw == nil {
		h.BalanceRaw = json.RawMessage(`{"policy":"weight"}`)
	}
	mod, err := ctx.LoadModule(h, "BalanceRaw")
	if err != nil {
		return fmt.Errorf("balance: %w", err)
	}
	h.balancer = mod.(balancers.Balancer)

	if h.DiscoveryRaw == nil {
		return fmt.Errorf(`discovery: required (e.g. {"kind":"static","static_list":["127.0.0.1:8080"]})`)
	}
	mod, err = ctx.LoadModule(h, "DiscoveryRaw")
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	src, ok := mod.(discovery.Configured)
	if !ok {
		return fmt.Errorf("discovery: module %T is not a discovery source", mod)
	}
	if err := src.Settings().ValidateCommon(); err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	h.source = src

	if h.HealthcheckRaw != nil {
		mod, err = ctx.LoadModule(h, "HealthcheckRaw")
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		chk, ok := mod.(healthchecks.Configured)
		if !ok {
			return fmt.Errorf("healthcheck: module %T is not a health checker", mod)
		}
		if err := chk.Settings().ValidateCommon(); err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		h.checker = chk
	}
	return nil
}

// Cleanup lets go of the handler's state; the last config holding a state
// stops its discovery and health checks.
func (h *Handler) Cleanup() error {
	// h.state stays set: a connection accepted just before the listener
	// switched to the next config may still be starting in this handler, and
	// it is served with the (now static) state it was accepted for.
	if h.state != nil && !h.released {
		h.released = true
		if _, err := states.Delete(h.key); err != nil {
			h.logger.Error("releasing handler state", zap.Error(err))
		}
	}
	return nil
}

var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
	_ layer4.NextHandler = (*Handler)(nil)
	_ json.Unmarshaler   = (*Handler)(nil)
)
