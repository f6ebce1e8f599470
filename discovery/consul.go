package discovery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/clienttls"
	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Consul{})
}

// Consul finds backends in Consul's service catalog: every instance of one
// service, optionally only those with a tag or only those whose health checks
// pass. Each instance becomes one backend:
//
//   - host: the service address, or the node's address when the service
//     was registered without one;
//   - port: the service port;
//   - sni: the value of a tag "sni=NAME" (the last one wins);
//   - weight: the service's Weights.Passing (Weights.Warning while a check
//     warns); 1 when the service has no weights;
//   - priority 1, no max_connections.
//
// Instances without a usable host or port are skipped and logged.
//
// After the first fetch the source waits on Consul's blocking queries, so a
// registration, a deregistration or a health change reaches Between within
// milliseconds, whatever the interval. When the watch breaks (Consul
// unreachable, a permission error), the Runner logs the error, keeps the last
// list (failpolicy keeplast), fetches again with growing delays and opens a
// new watch. A token revoked while watching is noticed within about 5s; an
// agent that stops answering without closing the connection within about 5s
// plus timeout.
//
// A permission problem is an error, never an empty list: a token that may
// not read every instance (Consul hides them) and, with Consul's ACL default
// policy deny, an empty answer to a request without any token.
//
// Like every Consul client, an empty consul_acl_token falls back to the
// CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE environment variable.
type Consul struct {
	Common
	// Address of Consul's HTTP API (required): "host:port",
	// "http://host:port", "https://host:port" (turns TLS on) or
	// "unix:///path/to/consul.sock". A path after host:port is kept as a
	// prefix, for a Consul behind a reverse proxy.
	Host string `json:"consul_host,omitempty"`
	// Name of the service whose instances are the backends (required).
	ServiceName string `json:"consul_service_name,omitempty"`
	// Only instances that carry this tag. Empty (the default): all.
	ServiceTag string `json:"consul_service_tag,omitempty"`
	// Only instances whose health checks all pass (and whose node's checks
	// pass). Default false: instances in every health state are listed.
	ServicePassingOnly bool `json:"consul_service_passing_only,omitempty"`
	// Datacenter to query. Empty (the default): the agent's own.
	Datacenter string `json:"consul_datacenter,omitempty"`
	// HTTP basic auth user name, sent to a reverse proxy in front of
	// Consul (Consul itself has no basic auth).
	AuthUsername string `json:"consul_auth_username,omitempty"`
	// HTTP basic auth password, with consul_auth_username.
	AuthPassword string `json:"consul_auth_password,omitempty"`
	// ACL token sent with every request. It needs service:read on the
	// service and node:read on the nodes that run it. Like the user name,
	// the password and the three paths, it may be a Caddy placeholder such
	// as {env.CONSUL_TOKEN} or {file./run/secrets/consul-token}.
	ACLToken string `json:"consul_acl_token,omitempty"`
	// Speak HTTPS to Consul. Also on when consul_host starts with https://.
	TLSEnabled bool `json:"consul_tls_enabled,omitempty"`
	// Client certificate (PEM) for HTTPS, when Consul verifies clients
	// (verify_incoming). Needs consul_tls_key_path.
	TLSCertPath string `json:"consul_tls_cert_path,omitempty"`
	// Private key (PEM) of consul_tls_cert_path.
	TLSKeyPath string `json:"consul_tls_key_path,omitempty"`
	// CA certificates (PEM) that sign Consul's server certificate. Empty:
	// the system's roots.
	TLSCACertPath string `json:"consul_tls_cacert_path,omitempty"`

	client *api.Client
	logger *zap.Logger
	// tokenless: no ACL token is sent, neither configured nor from the
	// environment, so Consul answers as the anonymous token
	tokenless bool
	// wait replaces consulWait when set (tests)
	wait time.Duration

	seen *consulSeen
}

// consulSeen is the last list the source reported and its Consul index, so
// that a watch after a Fetch blocks from where the Fetch ended.
type consulSeen struct {
	mu    sync.Mutex
	index uint64 // 0: nothing reported
	last  []backend.Backend
}

func (s *consulSeen) get() (uint64, []backend.Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index, s.last
}

func (s *consulSeen) set(index uint64, last []backend.Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index, s.last = index, last
}

// consulWait is how long one blocking query waits for a change. Consul adds
// up to wait/16 of jitter. It bounds how long a revoked token or a dead agent
// behind a silent network goes unnoticed: see Watch.
const consulWait = 5 * time.Second

// consulMinGap spaces consecutive queries of a watch, so that an index that
// keeps moving without a change cannot make it spin.
const consulMinGap = 50 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (Consul) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.consul",
		New: func() caddy.Module { return new(Consul) },
	}
}

// Provision checks the settings, loads the TLS files and builds the Consul client.
func (c *Consul) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	if err := c.Validate(); err != nil {
		return err
	}
	scheme, addr := splitConsulHost(c.Host)
	// secrets and paths may be placeholders ({env.CONSUL_TOKEN}, {file.*})
	repl := caddy.NewReplacer()
	token := repl.ReplaceKnown(c.ACLToken, "")
	user, pass := repl.ReplaceKnown(c.AuthUsername, ""), repl.ReplaceKnown(c.AuthPassword, "")
	certPath, keyPath := repl.ReplaceKnown(c.TLSCertPath, ""), repl.ReplaceKnown(c.TLSKeyPath, "")
	caPath := repl.ReplaceKnown(c.TLSCACertPath, "")
	// Address keeps the scheme: api.NewClient reads it from there.
	o := engineclient.ConsulOptions{
		Address:             c.Host,
		Datacenter:          c.Datacenter,
		Token:               token,
		MaxIdleConnsPerHost: 2,
	}
	if c.TLSEnabled || scheme == "https" {
		o.TLS = func(string) (*tls.Config, error) { return consulTLS(addr, certPath, keyPath, caPath) }
	} else if certPath != "" || keyPath != "" || caPath != "" {
		// the scheme stays http, also over a unix socket
		c.logger.Warn("consul_tls_* paths are ignored: TLS is off (set consul_tls_enabled or use an https:// consul_host)")
	}
	cfg, _, err := engineclient.ConsulConfig(o)
	if err != nil {
		return err
	}
	if user != "" || pass != "" {
		cfg.HttpAuth = &api.HttpBasicAuth{Username: user, Password: pass}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("consul_host %q: %w", c.Host, err)
	}
	c.client = client
	c.tokenless = token == "" && os.Getenv(api.HTTPTokenEnvName) == "" && os.Getenv(api.HTTPTokenFileEnvName) == ""
	c.seen = new(consulSeen)
	return nil
}

// consulTLS builds the TLS settings for HTTPS to Consul at addr (host:port)
// from the PEM files (each may be "").
func consulTLS(addr, certPath, keyPath, caPath string) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(addr)
	return clienttls.Config("consul_tls_", host, certPath, keyPath, caPath)
}

// splitConsulHost splits consul_host into its scheme ("" when none is
// written) and the rest.
func splitConsulHost(host string) (scheme, rest string) {
	scheme, rest, ok := strings.Cut(host, "://")
	if !ok {
		return "", host
	}
	if scheme == "http" || scheme == "https" {
		rest, _, _ = strings.Cut(rest, "/") // a path prefix is not part of the address
	}
	return scheme, rest
}

// Validate checks the settings.
func (c *Consul) Validate() error {
	if c.Host == "" {
		return fmt.Errorf("consul_host: required (the address of Consul's HTTP API, e.g. 127.0.0.1:8500)")
	}
	scheme, addr := splitConsulHost(c.Host)
	switch scheme {
	case "", "http", "https":
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			return fmt.Errorf("consul_host %q: want host:port, http(s)://host:port or unix:///path", c.Host)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("consul_host %q: port %q must be a number from 1 to 65535", c.Host, port)
		}
	case "unix":
		if addr == "" {
			return fmt.Errorf("consul_host %q: unix:// needs a socket path", c.Host)
		}
		if c.TLSEnabled {
			return fmt.Errorf("consul_tls_enabled: not supported with a unix:// consul_host")
		}
	default:
		return fmt.Errorf("consul_host %q: unknown scheme %q (want http, https or unix)", c.Host, scheme)
	}
	if scheme == "http" && c.TLSEnabled {
		return fmt.Errorf("consul_host %q: http:// contradicts consul_tls_enabled", c.Host)
	}
	if c.ServiceName == "" {
		return fmt.Errorf("consul_service_name: required")
	}
	if (c.TLSCertPath == "") != (c.TLSKeyPath == "") {
		return fmt.Errorf("consul_tls_cert_path and consul_tls_key_path: set both or neither")
	}
	return c.ValidateCommon()
}

// Fetch lists the service's instances once.
func (c *Consul) Fetch(ctx context.Context) ([]backend.Backend, error) {
	list, index, err := c.query(ctx, 0, 0)
	if err != nil {
		// a failed fetch may have emptied the list (failpolicy setempty):
		// the next watch must report the current list, even if unchanged
		c.seen.set(0, nil)
		return nil, err
	}
	c.seen.set(index, list)
	return list, nil
}

// Watch follows the service with Consul's blocking queries and reports every
// changed list, until ctx ends or a query fails.
//
// A blocking query that ends without a new index (its wait passed, or the
// agent's streaming view answered from its cache) is followed by a plain
// query. That one goes to the servers, so a token revoked meanwhile shows up
// as an error within a wait instead of the agent's cached list forever.
func (c *Consul) Watch(ctx context.Context, update func([]backend.Backend)) error {
	wait := consulWait
	if c.wait > 0 {
		wait = c.wait
	}
	index, last := c.seen.get()
	reported := index != 0
	var started time.Time
	for {
		if gap := consulMinGap - time.Since(started); gap > 0 && !sleep(ctx, gap) {
			return nil
		}
		started = time.Now()
		qctx, cancel := context.WithTimeout(ctx, wait+wait/16+c.FetchTimeout())
		list, next, err := c.query(qctx, index, wait)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.seen.set(0, nil)
			return err
		}
		// Also Consul's rule for an index that goes backwards (a restored
		// snapshot, a new cluster): start over with a plain query.
		if next <= index {
			next = 0
		}
		index = next
		if !reported || !sameBackends(list, last) {
			update(list)
			last, reported = list, true
		}
		c.seen.set(index, last)
	}
}

// query asks Consul for the service's instances; with index > 0 it blocks
// until the list changes past index or wait passes. It returns the list and
// Consul's index for the next blocking query.
func (c *Consul) query(ctx context.Context, index uint64, wait time.Duration) ([]backend.Backend, uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := c.client.Health().Service(c.ServiceName, c.ServiceTag, c.ServicePassingOnly, q)
	if err != nil {
		return nil, 0, c.explain(err)
	}
	if meta.ResultsFilteredByACLs {
		// Consul hides what a token may not read instead of refusing: an
		// empty list here would remove every backend for a wrong token.
		return nil, 0, fmt.Errorf("consul: permission denied: the ACL token may not read every instance of service %q at %s, "+
			"Consul hid some (it needs service:read on the service and node:read on its nodes; check consul_acl_token)", c.ServiceName, c.Host)
	}
	if len(entries) == 0 && c.tokenless && meta.DefaultACLPolicy == "deny" {
		// Consul does not flag what ACLs hide from the anonymous token
		return nil, 0, fmt.Errorf("consul: permission denied: Consul at %s denies by default (ACL default_policy deny) "+
			"and shows no instance of service %q without a token; set consul_acl_token to a token with "+
			"service:read on the service and node:read on its nodes", c.Host, c.ServiceName)
	}
	return c.backends(entries), meta.LastIndex, nil
}

// explain turns a failed request into an error that says what to check.
func (c *Consul) explain(err error) error {
	var status api.StatusError
	if errors.As(err, &status) {
		switch status.Code {
		case http.StatusForbidden:
			return fmt.Errorf("consul: permission denied reading service %q at %s (check consul_acl_token): %w", c.ServiceName, c.Host, err)
		case http.StatusUnauthorized:
			return fmt.Errorf("consul: %s refused the credentials (check consul_auth_username and consul_auth_password): %w", c.Host, err)
		}
	}
	return fmt.Errorf("consul: service %q at %s: %w", c.ServiceName, c.Host, err)
}

// backends turns Consul's service entries into backends.
func (c *Consul) backends(entries []*api.ServiceEntry) []backend.Backend {
	out := make([]backend.Backend, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		s := e.Service
		host := s.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if !usableAddress(host, s.Port) {
			c.logger.Warn("consul: skipping a service instance without a usable address",
				zap.String("service", s.Service), zap.String("id", s.ID),
				zap.String("host", host), zap.Int("port", s.Port))
			continue
		}
		b := backend.Backend{Host: host, Port: strconv.Itoa(s.Port), Weight: 1, Priority: 1}
		for _, tag := range s.Tags {
			if v, ok := strings.CutPrefix(tag, "sni="); ok {
				b.SNI = v
			}
		}
		if s.Weights.Passing != 0 || s.Weights.Warning != 0 {
			b.Weight = max(s.Weights.Passing, 0)
			if e.Checks.AggregatedStatus() == api.HealthWarning {
				b.Weight = max(s.Weights.Warning, 0)
			}
		}
		out = append(out, b)
	}
	return out
}

// sameBackends reports whether two lists hold the same backends with the
// same attributes in the same order.
func sameBackends(a, b []backend.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].SameAttributes(&b[i]) {
			return false
		}
	}
	return true
}

// UnmarshalCaddyfile reads
//
//	discovery consul {
//		host                 ADDRESS
//		service_name         NAME
//		service_tag          TAG
//		service_passing_only [true|false]
//		datacenter           DC
//		auth_username        USER
//		auth_password        PASSWORD
//		acl_token            TOKEN
//		tls_enabled          [true|false]
//		tls_cert_path        FILE
//		tls_key_path         FILE
//		tls_cacert_path      FILE
//		interval, timeout, failpolicy
//	}
//
// Each field is gobetween's without the consul_ prefix (the full name works
// too). A flag without a value means true.
func (c *Consul) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		name := strings.TrimPrefix(key, "consul_")
		var str *string
		var flag *bool
		switch name {
		case "host":
			str = &c.Host
		case "service_name":
			str = &c.ServiceName
		case "service_tag":
			str = &c.ServiceTag
		case "datacenter":
			str = &c.Datacenter
		case "auth_username":
			str = &c.AuthUsername
		case "auth_password":
			str = &c.AuthPassword
		case "acl_token":
			str = &c.ACLToken
		case "tls_cert_path":
			str = &c.TLSCertPath
		case "tls_key_path":
			str = &c.TLSKeyPath
		case "tls_cacert_path":
			str = &c.TLSCACertPath
		case "service_passing_only":
			flag = &c.ServicePassingOnly
		case "tls_enabled":
			flag = &c.TLSEnabled
		default:
			if err := c.UnmarshalCommon(d); err != nil {
				return err
			}
			continue
		}
		args := d.RemainingArgs()
		switch {
		case str != nil:
			if len(args) != 1 {
				return d.ArgErr()
			}
			*str = args[0]
		case len(args) == 0:
			*flag = true
		case len(args) == 1:
			v, err := strconv.ParseBool(args[0])
			if err != nil {
				return d.Errf("%s %q: want true or false", key, args[0])
			}
			*flag = v
		default:
			return d.ArgErr()
		}
	}
	return nil
}

var (
	_ Configured            = (*Consul)(nil)
	_ Watcher               = (*Consul)(nil)
	_ caddy.Provisioner     = (*Consul)(nil)
	_ caddy.Validator       = (*Consul)(nil)
	_ caddyfile.Unmarshaler = (*Consul)(nil)
)
