package l4handler

import (
	"encoding/json"
	"strconv"

	"github.com/caddy-between/between/discovery"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile reads the handler from a layer4 route:
//
//	between [NAME] {
//		balance POLICY [{ ... }]
//		discovery KIND [ARGS...] [{ ... }]
//		healthcheck KIND { ... }
//		passive_health {
//			max_fails N
//			fail_duration DURATION
//		}
//		max_connections N
//		client_idle_timeout DURATION
//		backend_idle_timeout DURATION
//		backend_connection_timeout DURATION
//		keepalive DURATION
//		retries N
//		drain_timeout DURATION
//		access {
//			default allow|deny
//			rules "deny 10.0.0.0/8" "allow 10.1.2.3"
//			allow|deny IP-OR-CIDR...
//		}
//		sni {
//			read_timeout DURATION
//			hostname_matching_strategy exact|regexp
//			unexpected_hostname_strategy default|reject|any
//		}
//		proxy_protocol 1|2
//		proxy_protocol {
//			version 1|2
//		}
//		accept_proxy_protocol {
//			allow IP-OR-CIDR...
//			timeout DURATION
//		}
//		backends_tls {
//			ignore_verify
//			root_ca_cert_path FILE
//			cert_path FILE
//			key_path FILE
//			min_version 1.2|1.3
//			max_version 1.2|1.3
//			ciphers NAME...
//			session_tickets on|off
//			server_name NAME
//		}
//		udp {
//			max_requests N
//			max_responses N
//			transparent [true|false]
//			max_sessions N
//		}
//	}
//
// Each subdirective is the JSON field of the same name; inside discovery and
// healthcheck blocks the kind prefix of a field is dropped (consul_host ->
// host, static_list -> inline arguments).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "between"
	if d.NextArg() {
		h.Name = d.Val()
		if d.NextArg() {
			return d.Errf("between: want at most one argument (the handler name), got %q too", d.Val())
		}
	}
	var warnings []caddyconfig.Warning
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		dir := d.Val()
		var err error
		switch dir {
		case "max_connections":
			err = intArg(d, &h.MaxConnections)
		case "retries":
			var n int
			if err = intArg(d, &n); err == nil {
				h.Retries = &n
			}
		case "client_idle_timeout":
			err = discovery.DurationArg(d, &h.ClientIdleTimeout)
		case "backend_idle_timeout":
			err = discovery.DurationArg(d, &h.BackendIdleTimeout)
		case "backend_connection_timeout":
			err = discovery.DurationArg(d, &h.BackendConnectionTimeout)
		case "drain_timeout":
			err = discovery.DurationArg(d, &h.DrainTimeout)
		case "keepalive":
			err = discovery.DurationArg(d, &h.Keepalive)
		case "balance":
			h.BalanceRaw, err = moduleArg(d, "between.balancers", "policy", &warnings)
		case "discovery":
			h.DiscoveryRaw, err = moduleArg(d, "between.discovery", "kind", &warnings)
		case "healthcheck":
			h.HealthcheckRaw, err = moduleArg(d, "between.healthchecks", "kind", &warnings)
		case "access":
			h.Access, err = parseAccess(d)
		case "passive_health":
			h.PassiveHealth, err = parsePassive(d)
		case "sni":
			h.SNI, err = parseSNI(d)
		case "proxy_protocol":
			h.ProxyProtocol, err = parseProxyProtocol(d)
		case "accept_proxy_protocol":
			h.AcceptProxyProtocol, err = parseAcceptProxyProtocol(d)
		case "backends_tls":
			h.BackendsTLS, err = parseBackendsTLS(d)
		case "udp":
			h.UDP, err = parseUDP(d)
		default:
			return d.Errf("between: unknown subdirective %q", dir)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// moduleArg loads the module named by the next argument from namespace ns and
// lets it read its own tokens.
func moduleArg(d *caddyfile.Dispenser, ns, inlineKey string, warnings *[]caddyconfig.Warning) (json.RawMessage, error) {
	dir := d.Val()
	if !d.NextArg() {
		return nil, d.Errf("%s: missing %s", dir, inlineKey)
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, ns+"."+name)
	if err != nil {
		// the module's own error names the directive and the position
		return nil, err
	}
	return caddyconfig.JSONModuleObject(unm, inlineKey, name, warnings), nil
}

func parseAccess(d *caddyfile.Dispenser) (*Access, error) {
	a := new(Access)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "default":
			if err := oneArg(d, &a.Default); err != nil {
				return nil, err
			}
		case "rules":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			a.Rules = append(a.Rules, args...)
		case "allow", "deny":
			action := d.Val()
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			for _, ip := range args {
				a.Rules = append(a.Rules, action+" "+ip)
			}
		default:
			return nil, d.Errf("access: unknown subdirective %q (want default, rules, allow or deny)", d.Val())
		}
	}
	if err := a.provision(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return a, nil
}

func parsePassive(d *caddyfile.Dispenser) (*PassiveHealth, error) {
	p := new(PassiveHealth)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "max_fails":
			err = intArg(d, &p.MaxFails)
		case "fail_duration":
			err = discovery.DurationArg(d, &p.FailDuration)
		default:
			return nil, d.Errf("passive_health: unknown subdirective %q (want max_fails or fail_duration)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

func parseSNI(d *caddyfile.Dispenser) (*SNIConfig, error) {
	c := new(SNIConfig)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "read_timeout":
			err = discovery.DurationArg(d, &c.ReadTimeout)
		case "hostname_matching_strategy":
			err = oneArg(d, &c.HostnameMatchingStrategy)
		case "unexpected_hostname_strategy":
			err = oneArg(d, &c.UnexpectedHostnameStrategy)
		default:
			return nil, d.Errf("sni: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// parseUDP reads the udp block; its values are checked when the handler is
// provisioned, together with the idle timeouts they go with.
func parseUDP(d *caddyfile.Dispenser) (*UDPConfig, error) {
	u := new(UDPConfig)
	if d.NextArg() {
		return nil, d.Errf("udp: takes no argument, got %q (the settings go in a block)", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "max_requests":
			err = intArg(d, &u.MaxRequests)
		case "max_responses":
			err = intArg(d, &u.MaxResponses)
		case "max_sessions":
			err = intArg(d, &u.MaxSessions)
		case "transparent":
			u.Transparent = true
			if d.NextArg() {
				switch d.Val() {
				case "true":
				case "false":
					u.Transparent = false
				default:
					return nil, d.Errf("transparent %q: want no argument, true or false", d.Val())
				}
				if d.NextArg() {
					return nil, d.Errf("transparent: at most one argument (true or false), got %q too", d.Val())
				}
			}
		default:
			return nil, d.Errf("udp: unknown subdirective %q (want max_requests, max_responses, transparent or max_sessions)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return u, nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	dir := d.Val()
	if !d.Args(dst) {
		return d.Errf("%s: one argument required", dir)
	}
	if d.NextArg() {
		return d.Errf("%s: exactly one argument expected", dir)
	}
	return nil
}

func intArg(d *caddyfile.Dispenser, dst *int) error {
	dir := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return d.Errf("%s %q: want an integer", dir, v)
	}
	*dst = n
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
