// Package lbcmd registers the `caddy lb` subcommand: a TCP or UDP load
// balancer started from flags alone, with no config file. It builds a layer4 server
// with one `between` handler (static discovery) and runs it the way Caddy's
// own `reverse-proxy` command runs its config.
package lbcmd

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/caddy-between/between/backend"
)

// HandlerName is the name of the `between` handler (and of the layer4 server)
// that `caddy lb` runs: its statistics are at /between/servers/lb/stats.
const HandlerName = "lb"

// accessLogger is the logger of the between handler's access log.
const accessLogger = "layer4.handlers.between.access"

// Policies are the balancing policies --balance accepts.
var Policies = []string{"weight", "roundrobin", "iphash", "iphash1", "leastconn", "leastbandwidth", "first"}

// Options are the flags of `caddy lb`.
type Options struct {
	// Listen is the listen address; a bare host:port becomes
	// between+tcp/host:port, or between+udp/host:port with Protocol udp.
	Listen string
	// To are the backends, each a gobetween backend line ("host:port weight=2").
	To []string
	// Balance is the balancing policy (default roundrobin).
	Balance string
	// Protocol is tcp (default) or udp.
	Protocol string
	// UDPMaxRequests and UDPMaxResponses are the handler's
	// udp.max_requests and udp.max_responses (0: no limit); only with
	// Protocol udp.
	UDPMaxRequests, UDPMaxResponses int
	// Healthcheck is "" or "none" (no check) or "ping" (TCP only).
	Healthcheck string
	// HealthcheckInterval is the time between two checks of a backend
	// (default 2s); only with Healthcheck.
	HealthcheckInterval time.Duration
	// SNI turns on SNI routing with the default strategies.
	SNI bool
	// AccessLog keeps the per-connection access log lines.
	AccessLog bool
	// Admin is the admin endpoint address; "" keeps Caddy's default, "off" disables it.
	Admin string
}

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "lb",
		Usage: `--to <host:port> [--to <host:port> ...] [--listen <addr>] [--balance <policy>] [--protocol tcp|udp] [--udp-max-requests <n>] [--udp-max-responses <n>] [--healthcheck none|ping [--healthcheck-interval <duration>]] [--sni] [--access-log] [--admin <addr>|off]`,
		Short: "A quick TCP or UDP load balancer with no config file",
		Long: `
Runs a Layer 4 (TCP or UDP) load balancer from flags alone: a layer4 server
listening on --listen with one "between" handler named "lb" that spreads
connections (with --protocol udp: client sessions) over the --to backends.
No config file is read or written.

Flags:
  --listen ADDR     Address to accept clients on (default :3000). A bare
                    host:port listens on between+tcp/host:port, or with
                    --protocol udp on between+udp/host:port (sockets that
                    survive reloads); an explicit network prefix
                    (between+tcp/, tcp/, tcp4/, tcp6/, unix/; with udp:
                    between+udp/, udp/, udp4/, udp6/) is used as given.
  --to BACKEND      A backend, repeat for each (required). A gobetween backend
                    line: host:port [weight=N] [priority=N] [max_connections=N]
                    [sni=NAME]; quote it when it has attributes.
  --balance POLICY  weight, roundrobin, iphash, iphash1, leastconn,
                    leastbandwidth or first (default roundrobin).
  --protocol PROTO  tcp (default) or udp. With udp, each client address is a
                    session balanced to one backend; it ends after 30s with
                    no datagram either way (client_idle_timeout 30s), or
                    earlier with the two flags below.
  --udp-max-requests N
                    With udp: a session carries at most N datagrams from the
                    client, the next one picks a backend again; 1 balances
                    every datagram on its own and drops replies
                    (fire-and-forget, e.g. syslog). Default 0: no limit.
  --udp-max-responses N
                    With udp: a session ends after N replies per datagram
                    sent, e.g. 1 for DNS. Default 0: no limit.
  --healthcheck none|ping
                    none (default): no active check. ping: TCP-connect check
                    (timeout: the interval, at most 5s; one failure takes a
                    backend down, one success brings it back); unhealthy
                    backends get no clients. A TCP connect says nothing about
                    a UDP service, so ping is refused with --protocol udp.
                    Use a config file for probe, exec or http.
  --healthcheck-interval DURATION
                    Time between two checks of a backend (default 2s).
  --sni             SNI routing with the default strategies (exact matching;
                    clients whose name no backend has go to backends without
                    sni). Give backends their names with sni=NAME in --to.
  --access-log      Log one line per connection (logger
                    layer4.handlers.between.access); off by default.
  --admin ADDR      Admin endpoint address (default: Caddy's default,
                    localhost:2019); "off" disables it. Statistics are at
                    /between/servers/lb/stats.

Examples:
  caddy lb --listen :3000 --to 127.0.0.1:8001 --to 127.0.0.1:8002
  caddy lb --listen 127.0.0.1:6380 --balance leastconn --healthcheck ping \
      --to "10.0.0.1:6379 weight=2" --to 10.0.0.2:6379 --admin off
  caddy lb --protocol udp --listen :53 --udp-max-responses 1 \
      --to 10.0.0.53:53 --to 10.0.1.53:53
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("listen", "l", ":3000", "Address to accept clients on (a bare host:port means between+tcp/host:port)")
			cmd.Flags().StringArrayP("to", "t", nil, "Backend (gobetween backend line, e.g. \"host:port weight=2\"); repeat for each (required)")
			cmd.Flags().StringP("balance", "b", "roundrobin", "Balancing policy: "+strings.Join(Policies, ", "))
			cmd.Flags().StringP("protocol", "p", "tcp", "Protocol: tcp or udp")
			cmd.Flags().Int("udp-max-requests", 0, "With udp: datagrams from the client per session, then a new backend is picked (1 = fire-and-forget; 0 = no limit)")
			cmd.Flags().Int("udp-max-responses", 0, "With udp: replies per datagram after which a session ends (1 suits DNS; 0 = no limit)")
			cmd.Flags().String("healthcheck", "", "Active health check: none or ping (TCP only) (default: none)")
			cmd.Flags().Duration("healthcheck-interval", 2*time.Second, "Time between two health checks of a backend (with --healthcheck)")
			cmd.Flags().Bool("sni", false, "Route by TLS server name to backends' sni= attributes")
			cmd.Flags().Bool("access-log", false, "Log one line per connection")
			cmd.Flags().String("admin", "", "Admin endpoint address, or off (default: Caddy's default, localhost:2019)")
			cmd.Args = func(_ *cobra.Command, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unexpected argument %q: give every backend with its own --to (quote one with attributes: --to \"host:port weight=2\")", args[0])
				}
				return nil
			}
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdLB)
		},
	})
}

// cmdLB runs the balancer and blocks.
func cmdLB(fs caddycmd.Flags) (int, error) {
	to, err := fs.GetStringArray("to")
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	opts := Options{
		Listen:              fs.String("listen"),
		To:                  to,
		Balance:             fs.String("balance"),
		Protocol:            fs.String("protocol"),
		UDPMaxRequests:      fs.Int("udp-max-requests"),
		UDPMaxResponses:     fs.Int("udp-max-responses"),
		Healthcheck:         fs.String("healthcheck"),
		HealthcheckInterval: fs.Duration("healthcheck-interval"),
		SNI:                 fs.Bool("sni"),
		AccessLog:           fs.Bool("access-log"),
		Admin:               fs.String("admin"),
	}
	cfg, err := BuildConfig(opts)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}

	caddy.TrapSignals()
	if err := caddy.Run(cfg); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	caddy.Log().Info("caddy lb balancing",
		zap.String("listen", listenAddr(opts.Listen, udp(opts.Protocol))), zap.Strings("to", opts.To),
		zap.String("policy", policyOrDefault(opts.Balance)))
	select {}
}

// listenAddr adds the between+tcp (or, for udp, between+udp) network to a
// listen address without one.
func listenAddr(listen string, udp bool) string {
	switch {
	case strings.Contains(listen, "/"):
		return listen
	case udp:
		return "between+udp/" + listen
	}
	return "between+tcp/" + listen
}

// udp reports whether protocol (a --protocol value) is udp.
func udp(protocol string) bool { return strings.EqualFold(protocol, "udp") }

// udpClientIdle is the client_idle_timeout of `caddy lb --protocol udp`: a
// UDP session must end somehow, and one that saw no datagram for this long
// is over for any protocol an operator would balance from the command line.
const udpClientIdle = "30s"

func policyOrDefault(p string) string {
	if p == "" {
		return "roundrobin"
	}
	return p
}

// BuildConfig turns the flags into the Caddy config `caddy lb` runs, or an
// error naming the flag at fault.
func BuildConfig(o Options) (*caddy.Config, error) {
	switch strings.ToLower(o.Protocol) {
	case "", "tcp", "udp":
	default:
		return nil, fmt.Errorf("--protocol %q: want tcp or udp", o.Protocol)
	}
	isUDP := udp(o.Protocol)
	if !isUDP {
		if o.UDPMaxRequests != 0 {
			return nil, fmt.Errorf("--udp-max-requests: only with --protocol udp")
		}
		if o.UDPMaxResponses != 0 {
			return nil, fmt.Errorf("--udp-max-responses: only with --protocol udp")
		}
	}
	if o.UDPMaxRequests < 0 {
		return nil, fmt.Errorf("--udp-max-requests %d: must not be negative", o.UDPMaxRequests)
	}
	if o.UDPMaxResponses < 0 {
		return nil, fmt.Errorf("--udp-max-responses %d: must not be negative", o.UDPMaxResponses)
	}

	if strings.TrimSpace(o.Listen) == "" {
		return nil, fmt.Errorf("--listen: empty address")
	}
	listen := listenAddr(o.Listen, isUDP)
	na, err := caddy.ParseNetworkAddress(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %v", o.Listen, err)
	}
	udpNetwork := strings.HasPrefix(na.Network, "udp") || na.Network == "between+udp"
	switch {
	case udpNetwork && !isUDP:
		return nil, fmt.Errorf("--listen %q: a UDP address needs --protocol udp", o.Listen)
	case isUDP && !udpNetwork:
		return nil, fmt.Errorf("--listen %q: --protocol udp needs a UDP address (host:port, between+udp/, udp/, udp4/ or udp6/)", o.Listen)
	}
	if !na.IsUnixNetwork() && !na.IsFdNetwork() && na.StartPort == 0 {
		return nil, fmt.Errorf("--listen %q: want host:port with a port (e.g. :3000)", o.Listen)
	}

	if len(o.To) == 0 {
		return nil, fmt.Errorf("no backends: give at least one --to host:port")
	}
	for _, line := range o.To {
		if _, err := backend.Parse(line); err != nil {
			return nil, fmt.Errorf("--to %q: %v", line, err)
		}
	}

	policy := policyOrDefault(o.Balance)
	known := false
	for _, p := range Policies {
		if p == policy {
			known = true
		}
	}
	if !known {
		return nil, fmt.Errorf("--balance %q: unknown policy (want one of %s)", o.Balance, strings.Join(Policies, ", "))
	}

	handler := map[string]any{
		"handler":   "between",
		"name":      HandlerName,
		"balance":   map[string]any{"policy": policy},
		"discovery": map[string]any{"kind": "static", "static_list": o.To},
	}
	switch o.Healthcheck {
	case "", "none":
	case "ping":
		if isUDP {
			return nil, fmt.Errorf("--healthcheck ping: a TCP connect says nothing about a UDP backend, so it cannot check one; with --protocol udp use --healthcheck none (the default), or a config file for a probe or exec check")
		}
		interval := o.HealthcheckInterval
		if interval == 0 {
			interval = 2 * time.Second
		}
		if interval < 0 {
			return nil, fmt.Errorf("--healthcheck-interval %s: must be positive", interval)
		}
		handler["healthcheck"] = map[string]any{"kind": "ping", "interval": interval.String()}
	default:
		return nil, fmt.Errorf("--healthcheck %q: only none and ping are supported by caddy lb (use a config file for probe, exec or http)", o.Healthcheck)
	}
	if o.SNI {
		if isUDP {
			return nil, fmt.Errorf("--sni: SNI is read from a TLS ClientHello over TCP; not with --protocol udp")
		}
		handler["sni"] = map[string]any{}
	}
	if isUDP {
		handler["client_idle_timeout"] = udpClientIdle
		limits := map[string]any{}
		if o.UDPMaxRequests > 0 {
			limits["max_requests"] = o.UDPMaxRequests
		}
		if o.UDPMaxResponses > 0 {
			limits["max_responses"] = o.UDPMaxResponses
		}
		if len(limits) > 0 {
			handler["udp"] = limits
		}
	}

	layer4, err := json.Marshal(map[string]any{"servers": map[string]any{
		HandlerName: map[string]any{
			"listen": []string{listen},
			"routes": []any{map[string]any{"handle": []any{handler}}},
		},
	}})
	if err != nil {
		return nil, err
	}

	persist := false
	cfg := &caddy.Config{
		Admin:   &caddy.AdminConfig{Config: &caddy.ConfigSettings{Persist: &persist}},
		AppsRaw: caddy.ModuleMap{"layer4": layer4},
	}
	switch o.Admin {
	case "":
	case "off":
		cfg.Admin.Disabled = true
	default:
		if _, err := caddy.ParseNetworkAddress(o.Admin); err != nil {
			return nil, fmt.Errorf("--admin %q: %v", o.Admin, err)
		}
		cfg.Admin.Listen = o.Admin
	}
	if !o.AccessLog {
		cfg.Logging = &caddy.Logging{Logs: map[string]*caddy.CustomLog{
			"default": {Exclude: []string{accessLogger}},
		}}
	}
	return cfg, nil
}
