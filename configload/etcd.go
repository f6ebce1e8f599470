package configload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"
)

func init() {
	caddy.RegisterModule(Etcd{})
}

// Etcd loads Caddy's config from one key of an etcd v3 cluster and follows
// it: every change of the key's value is applied within moments (an etcd
// watch), to every Caddy instance that follows the key.
//
// Put it in admin.config.load of a bootstrap config, with a load_delay:
//
//	{"admin": {"config": {
//		"load": {"module": "between_etcd", "endpoints": ["http://127.0.0.1:2379"], "key": "/between/config"},
//		"load_delay": "100ms"
//	}}}
//
// The key holds a Caddy JSON config, or any format that a config adapter
// reads (adapter: "caddyfile", "gobetween", ...). The loader applies it
// with this loader written into its admin.config.load, so the config that
// runs keeps following the key. The package documentation says what happens
// on each change and each failure.
type Etcd struct {
	// The etcd endpoints: "http://host:port", "https://host:port" or
	// "host:port", all with the same scheme. Default:
	// ["http://127.0.0.1:2379"].
	Endpoints []string `json:"endpoints,omitempty"`
	// User name for etcd authentication; needs password. The user needs
	// read permission on the key. Placeholders such as {env.ETCD_USER} are
	// replaced; the config written back into admin.config.load keeps the
	// placeholder.
	Username string `json:"username,omitempty"`
	// Password of username; placeholders like {env.ETCD_PASSWORD} or
	// {file./run/secrets/etcd} are replaced.
	Password string `json:"password,omitempty"`
	// The key whose value is the config (required), e.g. "/between/config".
	Key string `json:"key,omitempty"`
	// TLS to etcd (implied by https:// endpoints).
	TLS *TLS `json:"tls,omitempty"`
	// Config adapter for the value: "caddyfile", "gobetween", any adapter
	// this Caddy has. The key is passed to it as the file name (the
	// gobetween adapter reads a key ending in .json as JSON). Default: none,
	// the value is Caddy JSON.
	Adapter string `json:"adapter,omitempty"`
	// Bounds connecting and logging in, each read of the key, and the
	// keepalive that notices a silent network failure. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	loader
}

// etcdDefaultTimeout is the default of dial_timeout.
const etcdDefaultTimeout = 5 * time.Second

// CaddyModule returns the Caddy module information.
func (Etcd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.config_loaders.between_etcd",
		New: func() caddy.Module { return new(Etcd) },
	}
}

// Provision checks the settings and joins the process's follower of this
// key (the first loader of a key creates it; it connects on first use).
func (e *Etcd) Provision(ctx caddy.Context) error {
	if err := e.Validate(); err != nil {
		return err
	}
	return e.provision(ctx, e.CaddyModule().ID, e, e.Adapter, e.newStore)
}

// Validate checks the settings.
func (e *Etcd) Validate() error {
	if e.Key == "" {
		return errors.New("key: required (the etcd key that holds the config)")
	}
	scheme, err := engineclient.CheckEtcdEndpoints("endpoints", e.Endpoints, false)
	if err != nil {
		return err
	}
	if scheme == "http" && e.TLS != nil {
		return errors.New("endpoints: http:// endpoints with tls; use https:// or host:port")
	}
	if (e.Username == "") != (e.Password == "") {
		return errors.New("username and password: set both or neither")
	}
	if e.DialTimeout < 0 {
		return fmt.Errorf("dial_timeout %s: must not be negative", time.Duration(e.DialTimeout))
	}
	if err := e.TLS.validate(); err != nil {
		return err
	}
	return validateAdapter(e.Adapter)
}

// LoadConfig applies the key's value (the first call of a process, or of a
// config that this loader did not load itself, at once; later calls when
// the value changes) and returns nil once the applied config runs. It
// returns an error when etcd cannot be read; Caddy logs it and calls again
// after load_delay. See the package documentation.
func (e *Etcd) LoadConfig(ctx caddy.Context) ([]byte, error) {
	return e.load(ctx)
}

// Cleanup leaves the key's follower; the last loader of a key closes its
// client.
func (e *Etcd) Cleanup() error {
	return e.cleanup()
}

// newStore prepares the client's settings; the client connects on first
// use, so that etcd being down does not fail the config that holds the
// loader.
func (e *Etcd) newStore() (store, error) {
	repl := caddy.NewReplacer()
	endpoints := e.Endpoints
	if len(endpoints) == 0 {
		endpoints = []string{"http://127.0.0.1:2379"}
	}
	timeout := time.Duration(e.DialTimeout)
	if timeout == 0 {
		timeout = etcdDefaultTimeout
	}
	s := &etcdStore{key: e.Key, endpoints: endpoints, timeout: timeout,
		username: repl.ReplaceKnown(e.Username, ""), password: repl.ReplaceKnown(e.Password, "")}
	if engineclient.UsesTLS(e.TLS != nil, endpoints) {
		t := e.TLS
		if t == nil {
			t = new(TLS)
		}
		cfg, err := t.config(repl, "")
		if err != nil {
			return nil, err
		}
		s.tls = cfg
	}
	return s, nil
}

// etcdStore reads one key of etcd.
type etcdStore struct {
	key                string
	endpoints          []string
	timeout            time.Duration
	username, password string
	tls                *tls.Config

	mu     sync.Mutex
	client *clientv3.Client
	closed bool
}

func (s *etcdStore) where() string {
	return fmt.Sprintf("etcd %s key %q", strings.Join(s.endpoints, ","), s.key)
}

// connect returns the client, creating it on first use.
func (s *etcdStore) connect() (*clientv3.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("closed")
	}
	if s.client != nil {
		return s.client, nil
	}
	cli, err := clientv3.New(engineclient.EtcdConfig(engineclient.EtcdOptions{
		Endpoints:   s.endpoints,
		DialTimeout: s.timeout,
		// a silent network failure ends the watch after at most
		// 10s + timeout instead of never
		KeepAliveTime:    10 * time.Second,
		KeepAliveTimeout: s.timeout,
		TLS:              s.tls,
		Username:         s.username,
		Password:         s.password,
		// the client's retry warnings repeat the errors LoadConfig returns
		// (EtcdConfig keeps only its errors)
		Logger: caddy.Log().Named("config_loaders.between_etcd.client"),
		// etcd coming back should be noticed within about a second
		FastReconnect: true,
	}))
	if err != nil {
		return nil, fmt.Errorf("%s: connecting: %w", s.where(), err)
	}
	s.client = cli
	return cli, nil
}

func (s *etcdStore) read(ctx context.Context) (reading, error) {
	cli, err := s.connect()
	if err != nil {
		return reading{}, err
	}
	gctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := cli.Get(gctx, s.key)
	if err != nil {
		return reading{}, fmt.Errorf("%s: reading: %w", s.where(), err)
	}
	r := reading{pos: uint64(resp.Header.Revision)}
	if len(resp.Kvs) > 0 {
		r.value, r.found = resp.Kvs[0].Value, true
	}
	return r, nil
}

// next watches the key from the revision after pos until an event for it
// arrives, the connection to etcd is lost, or ctx ends.
func (s *etcdStore) next(ctx context.Context, pos uint64) (reading, error) {
	cli, err := s.connect()
	if err != nil {
		return reading{}, err
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: the state goroutine ends with wctx
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The client retries a broken watch forever, silently: end the watch
	// instead when no endpoint can be reached.
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := cli.ActiveConnection()
		for st := conn.GetState(); ; st = conn.GetState() {
			if st == connectivity.TransientFailure || st == connectivity.Shutdown {
				cancel(fmt.Errorf("%s: watch: lost the connection", s.where()))
				return
			}
			if !conn.WaitForStateChange(wctx, st) {
				return
			}
		}
	}()
	wch := cli.Watch(clientv3.WithRequireLeader(wctx), s.key, clientv3.WithRev(int64(pos)+1))
	for {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return reading{}, ctx.Err()
			}
			return reading{}, context.Cause(wctx)
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return reading{}, ctx.Err()
				}
				if cause := context.Cause(wctx); cause != nil {
					return reading{}, cause
				}
				return reading{}, fmt.Errorf("%s: watch ended", s.where())
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					return reading{}, fmt.Errorf("%s: watch from revision %d: history compacted up to revision %d: %w", s.where(), pos+1, wr.CompactRevision, err)
				}
				return reading{}, fmt.Errorf("%s: watch: %w", s.where(), err)
			}
			if len(wr.Events) == 0 {
				continue // progress notification or watch created
			}
			ev := wr.Events[len(wr.Events)-1]
			r := reading{pos: uint64(ev.Kv.ModRevision)}
			if ev.Type != clientv3.EventTypeDelete {
				r.value, r.found = ev.Kv.Value, true
			}
			return r, nil
		}
	}
}

func (s *etcdStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.client != nil {
		s.client.Close()
		s.client = nil
	}
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Etcd)(nil)
	_ caddy.Validator    = (*Etcd)(nil)
	_ caddy.CleanerUpper = (*Etcd)(nil)
	_ caddy.ConfigLoader = (*Etcd)(nil)
)
