package configload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
)

func init() {
	caddy.RegisterModule(Consul{})
}

// Consul loads Caddy's config from one key of Consul's KV store and follows
// it: every change of the key's value is applied within moments (Consul
// blocking queries), to every Caddy instance that follows the key.
//
// Put it in admin.config.load of a bootstrap config, with a load_delay:
//
//	{"admin": {"config": {
//		"load": {"module": "between_consul", "key": "between/config"},
//		"load_delay": "100ms"
//	}}}
//
// The key holds a Caddy JSON config, or any format that a config adapter
// reads (adapter: "caddyfile", "gobetween", ...). The loader applies it
// with this loader written into its admin.config.load, so the config that
// runs keeps following the key. The package documentation says what happens
// on each change and each failure.
//
// Like every Consul client, an empty token falls back to the
// CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE environment variable.
type Consul struct {
	// Address of Consul's HTTP API: "host:port" or "unix:///path/to/socket".
	// Default: 127.0.0.1:8500.
	Address string `json:"address,omitempty"`
	// "http" or "https". Default: "https" when tls is set, else "http".
	Scheme string `json:"scheme,omitempty"`
	// Datacenter to read the key from. Default: the agent's own.
	Datacenter string `json:"datacenter,omitempty"`
	// ACL token with key:read on the key. Placeholders such as
	// {env.CONSUL_TOKEN} or {file./run/secrets/token} are replaced; the
	// config written back into admin.config.load keeps the placeholder.
	Token string `json:"token,omitempty"`
	// The key whose value is the config (required), e.g. "between/config".
	Key string `json:"key,omitempty"`
	// TLS to Consul (turns scheme https on).
	TLS *TLS `json:"tls,omitempty"`
	// Config adapter for the value: "caddyfile", "gobetween", any adapter
	// this Caddy has. The key is passed to it as the file name (the
	// gobetween adapter reads a key ending in .json as JSON). Default: none,
	// the value is Caddy JSON.
	Adapter string `json:"adapter,omitempty"`
	// Longest time one blocking query waits for a change before it is asked
	// again (Consul caps it at 10m). It bounds how long an agent that
	// stopped answering without closing the connection goes unnoticed.
	// Default: 5m.
	Wait caddy.Duration `json:"wait,omitempty"`

	loader
}

// consulDefaultWait is the default of wait.
const consulDefaultWait = 5 * time.Minute

// consulReadTimeout bounds a plain read, and a blocking query beyond its
// wait.
const consulReadTimeout = 10 * time.Second

// consulMinGap spaces the queries of a watch, so that an index that keeps
// moving without a change cannot make it spin.
const consulMinGap = 50 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (Consul) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.config_loaders.between_consul",
		New: func() caddy.Module { return new(Consul) },
	}
}

// Provision checks the settings and joins the process's follower of this
// key (the first loader of a key creates it, with the Consul client).
func (c *Consul) Provision(ctx caddy.Context) error {
	if err := c.Validate(); err != nil {
		return err
	}
	return c.provision(ctx, c.CaddyModule().ID, c, c.Adapter, c.newStore)
}

// Validate checks the settings.
func (c *Consul) Validate() error {
	if c.Key == "" {
		return errors.New("key: required (the Consul KV key that holds the config)")
	}
	if strings.HasPrefix(c.Key, "/") {
		return fmt.Errorf("key %q: Consul keys do not start with /", c.Key)
	}
	switch c.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf("scheme %q: want http or https", c.Scheme)
	}
	if c.Scheme == "http" && c.TLS != nil {
		return errors.New("scheme http contradicts tls: use https")
	}
	if addr, ok := strings.CutPrefix(c.Address, "unix://"); ok {
		if addr == "" {
			return fmt.Errorf("address %q: unix:// needs a socket path", c.Address)
		}
		if c.TLS != nil || c.Scheme == "https" {
			return errors.New("tls: not supported with a unix:// address")
		}
	} else if c.Address != "" {
		host, port, err := net.SplitHostPort(c.Address)
		if err != nil || host == "" {
			return fmt.Errorf("address %q: want host:port or unix:///path", c.Address)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("address %q: port %q must be a number from 1 to 65535", c.Address, port)
		}
	}
	if c.Wait < 0 {
		return fmt.Errorf("wait %s: must not be negative", time.Duration(c.Wait))
	}
	if err := c.TLS.validate(); err != nil {
		return err
	}
	return validateAdapter(c.Adapter)
}

// LoadConfig applies the key's value (the first call of a process, or of a
// config that this loader did not load itself, at once; later calls when
// the value changes) and returns nil once the applied config runs. It
// returns an error when Consul cannot be read; Caddy logs it and calls
// again after load_delay. See the package documentation.
func (c *Consul) LoadConfig(ctx caddy.Context) ([]byte, error) {
	return c.load(ctx)
}

// Cleanup leaves the key's follower; the last loader of a key closes it.
func (c *Consul) Cleanup() error {
	return c.cleanup()
}

// newStore builds the Consul client.
func (c *Consul) newStore() (store, error) {
	repl := caddy.NewReplacer()
	o := engineclient.ConsulOptions{
		Address:             c.Address,
		Scheme:              c.Scheme,
		Datacenter:          c.Datacenter,
		Token:               repl.ReplaceKnown(c.Token, ""),
		MaxIdleConnsPerHost: 2,
	}
	if c.TLS != nil {
		o.TLS = func(host string) (*tls.Config, error) { return c.TLS.config(repl, host) }
	}
	cfg, transport, err := engineclient.ConsulConfig(o)
	if err != nil {
		return nil, err
	}
	addr := cfg.Address // before api.NewClient, which cuts a unix:// off it
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	wait := time.Duration(c.Wait)
	if wait == 0 {
		wait = consulDefaultWait
	}
	return &consulStore{kv: client.KV(), key: c.Key, addr: addr, wait: wait, transport: transport}, nil
}

// consulStore reads one key of Consul's KV store.
type consulStore struct {
	kv        *api.KV
	key, addr string
	wait      time.Duration
	transport *http.Transport
	lastQuery time.Time // of next; only one LoadConfig runs at a time
}

func (s *consulStore) where() string {
	return fmt.Sprintf("consul %s key %q", s.addr, s.key)
}

func (s *consulStore) read(ctx context.Context) (reading, error) {
	qctx, cancel := context.WithTimeout(ctx, consulReadTimeout)
	defer cancel()
	return s.get(qctx, 0)
}

func (s *consulStore) next(ctx context.Context, pos uint64) (reading, error) {
	if gap := consulMinGap - time.Since(s.lastQuery); gap > 0 && !sleep(ctx, gap) {
		return reading{}, ctx.Err()
	}
	s.lastQuery = time.Now()
	qctx, cancel := context.WithTimeout(ctx, s.wait+s.wait/16+consulReadTimeout)
	defer cancel()
	r, err := s.get(qctx, pos)
	if err == nil && r.pos < pos {
		// Consul's rule for an index that goes backwards (a restored
		// snapshot, a new cluster): the next query starts over
		r.pos = 0
	}
	return r, err
}

// get reads the key; with index > 0 it blocks until the key's index passes
// index or the wait ends.
func (s *consulStore) get(ctx context.Context, index uint64) (reading, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.wait}).WithContext(ctx)
	pair, meta, err := s.kv.Get(s.key, q)
	if err != nil {
		var status api.StatusError
		if errors.As(err, &status) && status.Code == http.StatusForbidden {
			return reading{}, fmt.Errorf("%s: permission denied (the token needs key:read on the key): %w", s.where(), err)
		}
		return reading{}, fmt.Errorf("%s: %w", s.where(), err)
	}
	if pair == nil {
		return reading{found: false, pos: meta.LastIndex}, nil
	}
	return reading{value: pair.Value, found: true, pos: meta.LastIndex}, nil
}

func (s *consulStore) close() {
	s.transport.CloseIdleConnections()
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Consul)(nil)
	_ caddy.Validator    = (*Consul)(nil)
	_ caddy.CleanerUpper = (*Consul)(nil)
	_ caddy.ConfigLoader = (*Consul)(nil)
)
