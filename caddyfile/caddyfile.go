// Package caddyfile adds the `between` global option to the Caddyfile:
//
//	{
//		between {
//			server NAME {
//				listen ADDRESS...
//				protocol tcp
//				balance POLICY [{ ... }]
//				max_connections N
//				client_idle_timeout DURATION
//				backend_idle_timeout DURATION
//				backend_connection_timeout DURATION
//				retries N
//				drain_timeout DURATION
//				access {
//					default allow|deny
//					rules "deny 10.0.0.0/8" "allow 10.1.2.3"
//					allow|deny IP-OR-CIDR
//				}
//				discovery KIND [ARGS...] [{ ... }]
//				healthcheck KIND { ... }
//				passive_health {
//					max_fails N
//					fail_duration DURATION
//				}
//				sni {
//					read_timeout DURATION
//					hostname_matching_strategy exact|regexp
//					unexpected_hostname_strategy default|reject|any
//				}
//			}
//		}
//	}
//
// Each subdirective is the JSON field of the same name; inside discovery and
// healthcheck blocks the kind prefix of a field is dropped.
package caddyfile

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/caddy-between/between/healthchecks"
	"github.com/caddy-between/between/modules"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("between", parseBetween)
}

// parseBetween turns the `between` global option into the between app.
func parseBetween(d *caddyfile.Dispenser, existing any) (any, error) {
	app := modules.App{Servers: map[string]*modules.Server{}}
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, &app); err != nil {
			return nil, err
		}
	}
	var warnings []caddyconfig.Warning
	for d.Next() { // "between"
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		for d.NextBlock(0) {
			if d.Val() != "server" {
				return nil, d.Errf("between: unknown subdirective %q (want server)", d.Val())
			}
			var name string
			if !d.Args(&name) || name == "" {
				return nil, d.Errf("between: server needs a name")
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			if _, dup := app.Servers[name]; dup {
				return nil, d.Errf("between: server %q defined twice", name)
			}
			s, err := parseServer(d, &warnings)
			if err != nil {
				return nil, fmt.Errorf("between: server %q: %w", name, err)
			}
			app.Servers[name] = s
		}
	}
	return httpcaddyfile.App{Name: "between", Value: caddyconfig.JSON(app, &warnings)}, nil
}

// parseServer reads the block of one server.
func parseServer(d *caddyfile.Dispenser, warnings *[]caddyconfig.Warning) (*modules.Server, error) {
	s := new(modules.Server)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		dir := d.Val()
		var err error
		switch dir {
		case "listen":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			for _, a := range args {
				if _, err := caddy.ParseNetworkAddress(a); err != nil {
					return nil, d.Errf("listen %q: %v", a, err)
				}
			}
			s.Listen = append(s.Listen, args...)
		case "protocol":
			if err = oneArg(d, &s.Protocol); err == nil {
				switch s.Protocol {
				case "tcp", "tls", "udp":
				default:
					err = d.Errf("protocol %q: want tcp, tls or udp", s.Protocol)
				}
			}
		case "max_connections":
			err = intArg(d, &s.MaxConnections)
		case "retries":
			var n int
			if err = intArg(d, &n); err == nil {
				s.Retries = &n
			}
		case "client_idle_timeout":
			err = durationArg(d, &s.ClientIdleTimeout)
		case "backend_idle_timeout":
			err = durationArg(d, &s.BackendIdleTimeout)
		case "backend_connection_timeout":
			err = durationArg(d, &s.BackendConnectionTimeout)
		case "drain_timeout":
			err = durationArg(d, &s.DrainTimeout)
		case "balance":
			s.BalanceRaw, err = moduleArg(d, "between.balancers", "policy", warnings)
		case "discovery":
			s.DiscoveryRaw, err = moduleArg(d, "between.discovery", "kind", warnings)
		case "healthcheck":
			s.HealthcheckRaw, err = moduleArg(d, "between.healthchecks", "kind", warnings)
		case "access":
			s.Access, err = parseAccess(d)
		case "passive_health":
			s.PassiveHealth, err = parsePassive(d)
		case "sni":
			s.SNI, err = parseSNI(d)
		default:
			return nil, d.Errf("unknown subdirective %q", dir)
		}
		if err != nil {
			return nil, err
		}
	}
	return s, nil
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
		return nil, fmt.Errorf("%s %s: %w", dir, name, err) // err carries the position
	}
	return caddyconfig.JSONModuleObject(unm, inlineKey, name, warnings), nil
}

func parseAccess(d *caddyfile.Dispenser) (*modules.Access, error) {
	a := new(modules.Access)
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
	for i, r := range a.Rules {
		if err := modules.CheckAccessRule(r); err != nil {
			return nil, d.Errf("access rule %d: %v", i+1, err)
		}
	}
	return a, nil
}

func parsePassive(d *caddyfile.Dispenser) (*healthchecks.Passive, error) {
	p := new(healthchecks.Passive)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "max_fails":
			err = intArg(d, &p.MaxFails)
		case "fail_duration":
			err = durationArg(d, &p.FailDuration)
		default:
			return nil, d.Errf("passive_health: unknown subdirective %q (want max_fails or fail_duration)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

func parseSNI(d *caddyfile.Dispenser) (*modules.SNIConfig, error) {
	c := new(modules.SNIConfig)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "read_timeout":
			err = durationArg(d, &c.ReadTimeout)
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

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	dir := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s %q: %v", dir, v, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}
