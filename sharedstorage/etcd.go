package sharedstorage

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Etcd{})
}

// etcdMaxRequest is etcd's default limit on one request
// (--max-request-bytes, 1.5 MiB).
const etcdMaxRequest = 1536 * 1024

// etcdMaxValue is the largest value Store sends: the request limit less
// room for the two keys and the framing of the transaction. Certificates
// and keys are a few KiB.
const etcdMaxValue = etcdMaxRequest - 4096

// Etcd is a Caddy storage module that keeps certmagic's data and locks in
// etcd v3, so that every Caddy instance pointed at the same etcd cluster and
// prefix shares certificates, ACME accounts and locks:
//
//	{"storage": {"module": "between_etcd", "endpoints": ["https://10.0.0.5:2379"], "prefix": "caddy/"}}
//
// Each certmagic key K is the etcd key PREFIX+K holding the value as is; its
// modification time is written to PREFIX.meta/K (PREFIX with ".meta/" for
// its final "/") in the same transaction, so a value and its time never
// disagree. Values larger than 1.5 MiB less 4 KiB (etcd's default request
// limit) are refused before anything is sent.
//
// A lock is an etcd lease of lock_ttl and a key under PREFIX.locks/ (the
// etcd concurrency package's mutex): the holder keeps the lease alive while
// it holds the lock; a holder that dies stops renewing, the lease expires
// after lock_ttl and etcd deletes the key, which lets the next waiter in.
//
// The client connects on first use, not at provisioning (so `caddy
// validate` contacts nothing), and is shared by the configs that use the
// same settings, so locks survive a config reload.
type Etcd struct {
	// The etcd client endpoints: "host:port", "http://host:port" or
	// "https://host:port". Required.
	Endpoints []string `json:"endpoints,omitempty"`
	// User name for etcd authentication; requires password. The user needs
	// read-write permission on the prefix and its two sibling prefixes
	// (see the package documentation), e.g. the key range "caddy" to
	// "caddz" for the default prefix.
	Username string `json:"username,omitempty"`
	// Password for etcd authentication; may be a placeholder such as
	// {env.ETCD_PASSWORD}.
	Password string `json:"password,omitempty"`
	// TLS to etcd. Present (even empty), or with https:// endpoints, TLS
	// is on.
	TLS *TLS `json:"tls,omitempty"`
	// Key prefix of this fleet's data. Default "caddy/"; a "/" is added
	// when missing. Every instance of a fleet must use the same prefix.
	Prefix string `json:"prefix,omitempty"`
	// How long connecting may take. Default 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// How long one storage request may take (waiting for a lock is not
	// bounded by it). Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Time to live of a lock's lease, in whole seconds (at least 2s).
	// The holder renews the lease every third of it, so a lock survives
	// etcd being unreachable for about two thirds of lock_ttl; an instance
	// that dies holding a lock blocks the others for at most lock_ttl.
	// Default 15s: an ACME order takes seconds, etcd elects a new leader in
	// about a second, and a fleet waits at most 15s behind a crashed
	// instance.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	ns      namespaces
	timeout time.Duration
	ttl     int // seconds
	logger  *zap.Logger
	poolKey string
	conn    *etcdConn
}

// CaddyModule returns the Caddy module information.
func (Etcd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.between_etcd",
		New: func() caddy.Module { return new(Etcd) },
	}
}

// Provision applies the defaults, loads the TLS files and joins the client
// shared by configs with the same settings. It does not connect.
func (e *Etcd) Provision(ctx caddy.Context) error {
	e.logger = ctx.Logger()
	if err := e.Validate(); err != nil {
		return err
	}
	e.ns = newNamespaces(e.Prefix)
	e.timeout = durationOr(e.Timeout, defaultTimeout)
	ttl := durationOr(e.LockTTL, defaultLockTTL)
	e.ttl = int((ttl + time.Second - 1) / time.Second)
	repl := caddy.NewReplacer()
	var tc *tls.Config
	if e.usesTLS() {
		t := e.TLS
		if t == nil {
			t = new(TLS)
		}
		var err error
		if tc, err = t.config(); err != nil {
			return err
		}
	}
	endpoints := make([]string, len(e.Endpoints))
	for i, ep := range e.Endpoints {
		endpoints[i] = strings.TrimPrefix(strings.TrimPrefix(ep, "https://"), "http://")
	}
	cfg := engineclient.EtcdConfig(engineclient.EtcdOptions{
		Endpoints:   endpoints,
		DialTimeout: durationOr(e.DialTimeout, 5*time.Second),
		// notice a silent network failure while a lock is held
		KeepAliveTime:    5 * time.Second,
		KeepAliveTimeout: 5 * time.Second,
		TLS:              tc,
		Username:         repl.ReplaceKnown(e.Username, ""),
		Password:         repl.ReplaceKnown(e.Password, ""),
		Logger:           e.logger.Named("client"),
	})
	key, err := json.Marshal(e)
	if err != nil {
		return err
	}
	e.poolKey = "between_etcd " + string(key)
	conn, _, err := pool.LoadOrNew(e.poolKey, func() (caddy.Destructor, error) {
		c := &etcdConn{cfg: cfg, locks: make(map[string]*etcdLock)}
		c.ctx, c.cancel = context.WithCancel(context.Background())
		return c, nil
	})
	if err != nil {
		return err
	}
	e.conn = conn.(*etcdConn)
	return nil
}

// usesTLS reports whether the settings ask for TLS.
func (e *Etcd) usesTLS() bool {
	return engineclient.UsesTLS(e.TLS != nil, e.Endpoints)
}

// Validate checks the settings.
func (e *Etcd) Validate() error {
	if len(e.Endpoints) == 0 {
		return errors.New("endpoints: at least one etcd endpoint is required")
	}
	for i, ep := range e.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			return fmt.Errorf("endpoints[%d] %q: %w", i, ep, err)
		}
		if e.TLS != nil && strings.HasPrefix(ep, "http://") {
			return fmt.Errorf("endpoints[%d] %q: http:// with a tls block; use https:// or host:port", i, ep)
		}
	}
	if (e.Username == "") != (e.Password == "") {
		return errors.New("username and password: set both or neither")
	}
	if strings.Trim(e.Prefix, "/") == "" && e.Prefix != "" {
		return fmt.Errorf("prefix %q: must contain more than slashes", e.Prefix)
	}
	if e.LockTTL != 0 && time.Duration(e.LockTTL) < 2*time.Second {
		return fmt.Errorf("lock_ttl %s: must be at least 2s (etcd's shortest lease)", time.Duration(e.LockTTL))
	}
	if e.DialTimeout < 0 || e.Timeout < 0 || e.LockTTL < 0 {
		return errors.New("dial_timeout, timeout and lock_ttl: must not be negative")
	}
	return e.TLS.validate("tls")
}

// checkEndpoint checks one etcd endpoint.
func checkEndpoint(ep string) error {
	rest := ep
	if scheme, r, ok := strings.Cut(ep, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("unknown scheme %q (want http or https)", scheme)
		}
		rest = r
	}
	u, err := url.Parse("//" + rest)
	if err != nil || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return errors.New("want host:port, http://host:port or https://host:port")
	}
	return nil
}

// Cleanup leaves the shared client; the last config to leave closes it.
func (e *Etcd) Cleanup() error {
	if e.poolKey == "" {
		return nil
	}
	_, err := pool.Delete(e.poolKey)
	return err
}

// CertMagicStorage returns the storage itself.
func (e *Etcd) CertMagicStorage() (certmagic.Storage, error) {
	return e, nil
}

// etcdConn is the client and the held locks, shared by the configs that use
// the same settings (a caddy.UsagePool value).
type etcdConn struct {
	cfg    clientv3.Config
	ctx    context.Context // ends when the last config leaves
	cancel context.CancelFunc

	mu     sync.Mutex
	client *clientv3.Client
	locks  map[string]*etcdLock // lock key -> held lock
}

// etcdLock is a lock this process holds.
type etcdLock struct {
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// get returns the client, creating it on first use.
func (c *etcdConn) get() (*clientv3.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, nil
	}
	if c.ctx.Err() != nil {
		return nil, errors.New("etcd storage: the client was closed (config unloaded)")
	}
	cfg := c.cfg
	cfg.Context = c.ctx
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd storage: connecting to %s: %w", strings.Join(c.cfg.Endpoints, ","), err)
	}
	c.client = cli
	return cli, nil
}

// Destruct closes the client. Locks still held are not released here: their
// leases expire after lock_ttl.
func (c *etcdConn) Destruct() error {
	c.cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil
	}
	return c.client.Close()
}

// request runs f with the client under the request timeout, and names the
// engine and key in its error.
func (e *Etcd) request(ctx context.Context, op, key string, f func(ctx context.Context, cli *clientv3.Client) error) error {
	cli, err := e.conn.get()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	if err := f(ctx, cli); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return fmt.Errorf("etcd storage: %s %q at %s: %w", op, key, strings.Join(e.cfg().Endpoints, ","), err)
	}
	return nil
}

func (e *Etcd) cfg() *clientv3.Config { return &e.conn.cfg }

// Store puts value at key, with the time of the write as its modification
// time, in one transaction.
func (e *Etcd) Store(ctx context.Context, key string, value []byte) error {
	key = cleanKey(key)
	if key == "" {
		return errEmptyKey
	}
	if len(value) > etcdMaxValue {
		return tooLarge("etcd (default --max-request-bytes 1.5 MiB)", key, len(value), etcdMaxValue)
	}
	modified := time.Now().UTC().Format(time.RFC3339Nano)
	return e.request(ctx, "storing", key, func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.Txn(ctx).Then(
			clientv3.OpPut(e.ns.data+key, string(value)),
			clientv3.OpPut(e.ns.meta+key, modified),
		).Commit()
		return err
	})
}

// Load returns the value at key, or an fs.ErrNotExist error.
func (e *Etcd) Load(ctx context.Context, key string) ([]byte, error) {
	key = cleanKey(key)
	var value []byte
	err := e.request(ctx, "loading", key, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Get(ctx, e.ns.data+key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return notExist("load", key)
		}
		value = resp.Kvs[0].Value
		return nil
	})
	return value, err
}

// Delete removes key and every key below it, atomically. A missing key is
// not an error.
func (e *Etcd) Delete(ctx context.Context, key string) error {
	key = cleanKey(key)
	if key == "" {
		return errEmptyKey
	}
	return e.request(ctx, "deleting", key, func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.Txn(ctx).Then(
			clientv3.OpDelete(e.ns.data+key),
			clientv3.OpDelete(e.ns.data+key+"/", clientv3.WithPrefix()),
			clientv3.OpDelete(e.ns.meta+key),
			clientv3.OpDelete(e.ns.meta+key+"/", clientv3.WithPrefix()),
		).Commit()
		return err
	})
}

// Exists reports whether key is a file or a directory (a prefix of files).
func (e *Etcd) Exists(ctx context.Context, key string) bool {
	_, err := e.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file (its size and modification time) or a
// directory; an fs.ErrNotExist error when it is neither.
func (e *Etcd) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = cleanKey(key)
	var info certmagic.KeyInfo
	err := e.request(ctx, "stat of", key, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Txn(ctx).Then(
			clientv3.OpGet(e.ns.data+key),
			clientv3.OpGet(e.ns.meta+key),
			clientv3.OpGet(e.ns.dir(key), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return err
		}
		data := resp.Responses[0].GetResponseRange().Kvs
		meta := resp.Responses[1].GetResponseRange().Kvs
		below := resp.Responses[2].GetResponseRange().Count
		switch {
		case key != "" && len(data) > 0:
			info = certmagic.KeyInfo{Key: key, Size: int64(len(data[0].Value)), IsTerminal: true}
			if len(meta) > 0 {
				info.Modified, _ = time.Parse(time.RFC3339Nano, string(meta[0].Value))
			}
		case below > 0 || key == "":
			info = certmagic.KeyInfo{Key: key, IsTerminal: false}
		default:
			return notExist("stat", key)
		}
		return nil
	})
	return info, err
}

// List returns the keys below dir: with recursive every file and
// directory at any depth, otherwise the direct children. A dir that is a
// file has no children; a dir that does not exist is an fs.ErrNotExist
// error ("" is the root and always exists).
func (e *Etcd) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = cleanKey(dir)
	var keys []string
	err := e.request(ctx, "listing", dir, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Txn(ctx).Then(
			clientv3.OpGet(e.ns.dir(dir), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			clientv3.OpGet(e.ns.data+dir, clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return err
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 && dir != "" && resp.Responses[1].GetResponseRange().Count == 0 {
			return notExist("list", dir)
		}
		all := make([]string, len(kvs))
		for i, kv := range kvs {
			all[i] = strings.TrimPrefix(string(kv.Key), e.ns.data)
		}
		keys = children(dir, all, recursive)
		return nil
	})
	return keys, err
}

// Lock takes the named lock, waiting until it is free or ctx ends. The
// lease behind it is renewed until Unlock; if this process dies the lock
// frees itself after lock_ttl.
func (e *Etcd) Lock(ctx context.Context, name string) error {
	_, err := e.lock(ctx, name, true)
	return err
}

// TryLock takes the named lock if it is free and reports whether it did.
func (e *Etcd) TryLock(ctx context.Context, name string) (bool, error) {
	return e.lock(ctx, name, false)
}

func (e *Etcd) lock(ctx context.Context, name string, wait bool) (bool, error) {
	cli, err := e.conn.get()
	if err != nil {
		return false, err
	}
	key := e.ns.locks + name
	fail := func(err error) error {
		return fmt.Errorf("etcd storage: lock %q at %s: %w", name, strings.Join(e.cfg().Endpoints, ","), err)
	}
	// Grant the lease under the caller's context (NewSession would wait
	// under the session's, which does not end), then keep it alive under
	// the shared one.
	gctx, cancel := context.WithTimeout(ctx, e.timeout)
	lease, err := cli.Grant(gctx, int64(e.ttl))
	cancel()
	if err != nil {
		return false, fail(err)
	}
	s, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(e.ttl), concurrency.WithContext(e.conn.ctx))
	if err != nil {
		cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return false, fail(err)
	}
	m := concurrency.NewMutex(s, key)
	if wait {
		err = m.Lock(ctx)
	} else {
		err = m.TryLock(ctx)
	}
	if err != nil {
		s.Close()
		if errors.Is(err, concurrency.ErrLocked) {
			return false, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fail(err)
	}
	e.conn.mu.Lock()
	e.conn.locks[key] = &etcdLock{session: s, mutex: m}
	e.conn.mu.Unlock()
	go func() {
		<-s.Done()
		e.conn.mu.Lock()
		held := e.conn.locks[key]
		e.conn.mu.Unlock()
		if held != nil && held.session == s {
			e.logger.Warn("etcd storage: lost a held lock: its lease could not be renewed",
				zap.String("lock", name), zap.Int("lock_ttl_seconds", e.ttl))
		}
	}()
	return true, nil
}

// Unlock releases the named lock. It fails when this process does not hold
// it, or when the lease expired while it was held (another instance may
// then have taken the lock).
func (e *Etcd) Unlock(ctx context.Context, name string) error {
	key := e.ns.locks + name
	e.conn.mu.Lock()
	held := e.conn.locks[key]
	delete(e.conn.locks, key)
	e.conn.mu.Unlock()
	if held == nil {
		return fmt.Errorf("etcd storage: unlock %q: not locked by this process", name)
	}
	select {
	case <-held.session.Done():
		held.session.Close()
		return fmt.Errorf("etcd storage: unlock %q: the lock was lost while held (its lease expired)", name)
	default:
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
	err := held.mutex.Unlock(uctx)
	cancel()
	// revoking the lease also deletes the key if the delete above failed
	if cerr := held.session.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("etcd storage: unlock %q: %w", name, err)
	}
	return nil
}

// String names the storage in certmagic's logs.
func (e *Etcd) String() string {
	return "etcd:" + strings.Join(e.Endpoints, ",") + "/" + e.ns.data
}

// UnmarshalCaddyfile reads
//
//	storage between_etcd [ENDPOINT ...] {
//		endpoints ENDPOINT ...
//		username NAME
//		password SECRET
//		prefix PREFIX
//		dial_timeout DURATION
//		timeout DURATION
//		lock_ttl DURATION
//		tls {
//			cacert_path PATH
//			cert_path PATH
//			key_path PATH
//			insecure_skip_verify
//			server_name NAME
//		}
//	}
func (e *Etcd) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	e.Endpoints = append(e.Endpoints, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "endpoints":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			e.Endpoints = append(e.Endpoints, args...)
		case "username":
			if !d.Args(&e.Username) || d.NextArg() {
				return d.ArgErr()
			}
		case "password":
			if !d.Args(&e.Password) || d.NextArg() {
				return d.ArgErr()
			}
		case "prefix":
			if !d.Args(&e.Prefix) || d.NextArg() {
				return d.ArgErr()
			}
		case "dial_timeout", "timeout", "lock_ttl":
			dst := map[string]*caddy.Duration{"dial_timeout": &e.DialTimeout, "timeout": &e.Timeout, "lock_ttl": &e.LockTTL}[d.Val()]
			if err := parseDuration(d, dst); err != nil {
				return err
			}
		case "tls":
			e.TLS = new(TLS)
			if err := e.TLS.unmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unknown option %q", d.Val())
		}
	}
	return nil
}

var (
	_ caddy.Provisioner      = (*Etcd)(nil)
	_ caddy.Validator        = (*Etcd)(nil)
	_ caddy.CleanerUpper     = (*Etcd)(nil)
	_ caddy.StorageConverter = (*Etcd)(nil)
	_ certmagic.Storage      = (*Etcd)(nil)
	_ certmagic.TryLocker    = (*Etcd)(nil)
	_ caddyfile.Unmarshaler  = (*Etcd)(nil)
	_ caddy.Destructor       = (*etcdConn)(nil)
)
