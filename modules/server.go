package modules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/healthchecks"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Server is one load-balanced service: the addresses it listens on, how it
// finds its backends (discovery), which of them are healthy (healthcheck,
// passive_health), and how it picks one per connection (balance).
type Server struct {
	// Addresses to listen on, as Caddy network addresses: "host:port",
	// "host:port-port" (a range), "tcp4/host:port", "unix//path". Required.
	Listen []string `json:"listen,omitempty"`
	// "tcp" (the default). "tls" and "udp" are not available in this version.
	Protocol string `json:"protocol,omitempty"`
	// The balancing policy; default {"policy": "weight"}.
	BalanceRaw json.RawMessage `json:"balance,omitempty" caddy:"namespace=between.balancers inline_key=policy"`
	// Server-wide cap on concurrent client connections; over it a client is
	// closed at once and counted as refused. 0 = unlimited.
	MaxConnections int `json:"max_connections,omitempty"`
	// End the session when no byte moved in either direction for this long
	// (client->backend direction). "0" = no limit.
	ClientIdleTimeout caddy.Duration `json:"client_idle_timeout,omitempty"`
	// Same, for the backend->client direction. The session ends after the
	// smaller non-zero of the two with no traffic either way.
	BackendIdleTimeout caddy.Duration `json:"backend_idle_timeout,omitempty"`
	// Time limit to connect to a backend. "0" = the operating system's.
	BackendConnectionTimeout caddy.Duration `json:"backend_connection_timeout,omitempty"`
	// On a failed dial, elect again among the other eligible backends up to
	// this many times. Default 2.
	Retries *int `json:"retries,omitempty"`
	// When this server is removed or changed by a reload, its open connections
	// continue this long, then close. "0" (default) = until they end.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`
	// Client address rules.
	Access *Access `json:"access,omitempty"`
	// How backends are found; required.
	DiscoveryRaw json.RawMessage `json:"discovery,omitempty" caddy:"namespace=between.discovery inline_key=kind"`
	// Active health check; optional (all discovered backends are healthy without one).
	HealthcheckRaw json.RawMessage `json:"healthcheck,omitempty" caddy:"namespace=between.healthchecks inline_key=kind"`
	// Passive health: failed dials mark a backend down.
	PassiveHealth *healthchecks.Passive `json:"passive_health,omitempty"`
	// SNI routing: read the TLS ClientHello's server name and use it to filter
	// backends by their sni attribute.
	SNI *SNIConfig `json:"sni,omitempty"`

	// Reserved for later versions; setting them is an error for now.
	ProxyProtocol    json.RawMessage `json:"proxy_protocol,omitempty"`    // PROXY protocol header to backends (reserved)
	ListenerWrappers json.RawMessage `json:"listener_wrappers,omitempty"` // Caddy listener wrappers (reserved)
	TLS              json.RawMessage `json:"tls,omitempty"`               // TLS termination (reserved)
	BackendsTLS      json.RawMessage `json:"backends_tls,omitempty"`      // TLS to backends (reserved)
	UDP              json.RawMessage `json:"udp,omitempty"`               // UDP sessions (reserved)

	name      string
	key       string // identity of this exact config in the state pool
	addrs     []caddy.NetworkAddress
	balancer  balancers.Balancer
	source    discovery.Configured
	checker   healthchecks.Configured
	retries   int
	state     *serverState
	released  bool // Cleanup has let go of state
	logger    *zap.Logger
	releases  []func()
	dialer    net.Dialer
	sniFilter *balancers.SNIFilter
}

// SNIConfig configures SNI routing for a server.
type SNIConfig struct {
	// How long to wait for the ClientHello. Default 2s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// "exact" (default, case-insensitive) or "regexp" (a backend's sni is a
	// regular expression matched against the client's server name).
	HostnameMatchingStrategy string `json:"hostname_matching_strategy,omitempty"`
	// What to do with a client whose server name matches no backend (or who
	// sent none): "default" (backends without sni), "reject", "any".
	UnexpectedHostnameStrategy string `json:"unexpected_hostname_strategy,omitempty"`
}

// reserved lists the contract fields a later version implements.
func (s *Server) reserved() map[string]json.RawMessage {
	return map[string]json.RawMessage{
		"proxy_protocol": s.ProxyProtocol, "listener_wrappers": s.ListenerWrappers,
		"tls": s.TLS, "backends_tls": s.BackendsTLS, "udp": s.UDP,
	}
}

// provision loads the server's modules and checks every field. It binds nothing.
func (s *Server) provision(ctx caddy.Context, name string, logger *zap.Logger) error {
	s.name = name
	s.logger = logger.With(zap.String("server", name))
	switch s.Protocol {
	case "", "tcp":
		s.Protocol = "tcp"
	case "tls", "udp":
		return fmt.Errorf("protocol %q: not supported by this version of Between (tcp only for now)", s.Protocol)
	default:
		return fmt.Errorf("protocol %q: want tcp, tls or udp", s.Protocol)
	}
	for field, raw := range s.reserved() {
		var compact bytes.Buffer
		if json.Compact(&compact, raw) == nil {
			raw = compact.Bytes()
		}
		if len(raw) > 0 && string(raw) != "null" && string(raw) != "{}" && string(raw) != "[]" {
			return fmt.Errorf("%s: not supported by this version of Between", field)
		}
	}
	if len(s.Listen) == 0 {
		return fmt.Errorf("listen: at least one address is required")
	}
	s.addrs = s.addrs[:0]
	for i, l := range s.Listen {
		na, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 0)
		if err != nil {
			return fmt.Errorf("listen[%d] %q: %v", i, l, err)
		}
		switch na.Network {
		case "tcp", "tcp4", "tcp6", "unix":
		default:
			return fmt.Errorf("listen[%d] %q: network %q does not agree with protocol %s", i, l, na.Network, s.Protocol)
		}
		if !na.IsUnixNetwork() && na.StartPort == 0 {
			return fmt.Errorf("listen[%d] %q: a port is required", i, l)
		}
		s.addrs = append(s.addrs, na)
	}
	if s.MaxConnections < 0 {
		return fmt.Errorf("max_connections %d: must not be negative", s.MaxConnections)
	}
	for field, d := range map[string]caddy.Duration{
		"client_idle_timeout": s.ClientIdleTimeout, "backend_idle_timeout": s.BackendIdleTimeout,
		"backend_connection_timeout": s.BackendConnectionTimeout, "drain_timeout": s.DrainTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("%s %s: must not be negative", field, time.Duration(d))
		}
	}
	s.retries = 2
	if s.Retries != nil {
		if *s.Retries < 0 {
			return fmt.Errorf("retries %d: must not be negative", *s.Retries)
		}
		s.retries = *s.Retries
	}
	s.dialer = net.Dialer{Timeout: time.Duration(s.BackendConnectionTimeout)}
	if s.Access == nil {
		s.Access = new(Access)
	}
	if err := s.Access.provision(); err != nil {
		return err
	}
	if err := s.provisionSNI(); err != nil {
		return err
	}

	if s.BalanceRaw == nil {
		s.BalanceRaw = json.RawMessage(`{"policy":"weight"}`)
	}
	mod, err := ctx.LoadModule(s, "BalanceRaw")
	if err != nil {
		return fmt.Errorf("balance: %w", err)
	}
	s.balancer = mod.(balancers.Balancer)

	if s.DiscoveryRaw == nil {
		return fmt.Errorf("discovery: required (e.g. {\"kind\":\"static\",\"static_list\":[\"127.0.0.1:8080\"]})")
	}
	mod, err = ctx.LoadModule(s, "DiscoveryRaw")
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	src, ok := mod.(discovery.Configured)
	if !ok {
		return fmt.Errorf("discovery: module %T is not a discovery source", mod)
	}
	s.source = src
	if err := src.Settings().ValidateCommon(); err != nil {
		return fmt.Errorf("discovery: %w", err)
	}

	if s.HealthcheckRaw != nil {
		mod, err = ctx.LoadModule(s, "HealthcheckRaw")
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
		if v, ok := chk.(interface{ ValidateProtocol(string) error }); ok {
			if err := v.ValidateProtocol(s.Protocol); err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
		}
		s.checker = chk
	}
	if p := s.PassiveHealth; p != nil {
		if p.MaxFails < 0 {
			return fmt.Errorf("passive_health.max_fails %d: must not be negative", p.MaxFails)
		}
		if p.FailDuration < 0 {
			return fmt.Errorf("passive_health.fail_duration: must not be negative")
		}
	}
	return nil
}

// listenKeys returns the socket identities this server binds, for conflict checks.
func (s *Server) listenKeys() []string {
	var keys []string
	for _, na := range s.addrs {
		for i := uint(0); i < max(na.PortRangeSize(), 1); i++ {
			keys = append(keys, na.Network+"/"+strings.ToLower(na.JoinHostPort(i)))
		}
	}
	return keys
}
