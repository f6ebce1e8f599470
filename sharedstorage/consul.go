package sharedstorage

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Consul{})
}

// consulMaxValue is Consul's default limit on one KV value
// (limits.kv_max_value_size, 512 KiB).
const consulMaxValue = 512 * 1024

// consulWait bounds one blocking query while a lock is awaited.
const consulWait = 10 * time.Second

// Consul is a Caddy storage module that keeps certmagic's data and locks in
// Consul's KV store, so that every Caddy instance pointed at the same Consul
// datacenter and prefix shares certificates, ACME accounts and locks:
//
//	{"storage": {"module": "between_consul", "address": "127.0.0.1:8500", "prefix": "caddy/"}}
//
// Each certmagic key K is the Consul key PREFIX+K holding the value as is;
// its modification time (Unix nanoseconds) is the key's flags, written in
// the same request. Values larger than 512 KiB (Consul's default
// kv_max_value_size) are refused before anything is sent.
//
// A lock is a Consul session with a TTL of lock_ttl and behavior "delete"
// that acquires the key PREFIX.locks/NAME (PREFIX with ".locks/" for its
// final "/"). The holder renews the session every half TTL while it holds
// the lock; a holder that dies stops renewing, Consul invalidates the
// session (between lock_ttl and twice lock_ttl later: Consul's grace) and
// deletes the key, which lets the next waiter in. Waiters follow the key
// with blocking queries.
//
// The ACL token needs key:write on the prefix and its ".locks/" sibling
// (a key_prefix rule on the prefix without its final "/", e.g. "caddy",
// covers both) and session:write on the agent's node.
type Consul struct {
	// Address of Consul's HTTP API: "host:port" (default
	// "127.0.0.1:8500") or "unix:///path/to/consul.sock".
	Address string `json:"address,omitempty"`
	// "http" (default) or "https". A tls block implies "https".
	Scheme string `json:"scheme,omitempty"`
	// ACL token; may be a placeholder such as {env.CONSUL_TOKEN}. Empty:
	// like every Consul client, the CONSUL_HTTP_TOKEN environment variable.
	Token string `json:"token,omitempty"`
	// Datacenter. Default: the agent's.
	Datacenter string `json:"datacenter,omitempty"`
	// TLS to Consul's HTTPS port. Present (even empty), TLS is on.
	TLS *TLS `json:"tls,omitempty"`
	// Key prefix of this fleet's data. Default "caddy/"; a "/" is added
	// when missing. Every instance of a fleet must use the same prefix.
	Prefix string `json:"prefix,omitempty"`
	// How long one storage request may take (waiting for a lock is not
	// bounded by it). Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// TTL of a lock's session, from 10s (Consul's minimum) to 24h.
	// Default 15s. The holder renews it every half TTL; Consul ends a
	// session that was not renewed between one and two TTLs after the last
	// renewal, so an instance that dies holding a lock blocks the others
	// for at most twice lock_ttl.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	ns      namespaces
	timeout time.Duration
	ttl     time.Duration
	logger  *zap.Logger
	poolKey string
	conn    *consulConn
}

// CaddyModule returns the Caddy module information.
func (Consul) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.between_consul",
		New: func() caddy.Module { return new(Consul) },
	}
}

// Provision applies the defaults, loads the TLS files and builds the
// client (Consul's client connects per request: nothing is contacted here).
func (c *Consul) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	if err := c.Validate(); err != nil {
		return err
	}
	c.ns = newNamespaces(c.Prefix)
	c.timeout = durationOr(c.Timeout, defaultTimeout)
	c.ttl = durationOr(c.LockTTL, defaultLockTTL)
	key, err := json.Marshal(c)
	if err != nil {
		return err
	}
	c.poolKey = "between_consul " + string(key)
	conn, _, err := pool.LoadOrNew(c.poolKey, func() (caddy.Destructor, error) {
		client, err := c.client()
		if err != nil {
			return nil, err
		}
		cc := &consulConn{client: client, locks: make(map[string]*consulLock)}
		return cc, nil
	})
	if err != nil {
		return err
	}
	c.conn = conn.(*consulConn)
	return nil
}

// client builds the Consul API client.
func (c *Consul) client() (*api.Client, error) {
	repl := caddy.NewReplacer()
	o := engineclient.ConsulOptions{
		Address:             c.Address,
		Scheme:              c.Scheme,
		Datacenter:          c.Datacenter,
		Token:               repl.ReplaceKnown(c.Token, ""),
		MaxIdleConnsPerHost: 4,
	}
	if c.TLS != nil {
		o.TLS = func(host string) (*tls.Config, error) {
			tc, err := c.TLS.config()
			if err != nil {
				return nil, err
			}
			if tc.ServerName == "" {
				tc.ServerName = host
			}
			return tc, nil
		}
	}
	cfg, _, err := engineclient.ConsulConfig(o)
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", c.Address, err)
	}
	return client, nil
}

// Validate checks the settings.
func (c *Consul) Validate() error {
	if c.Address != "" && !strings.HasPrefix(c.Address, "unix://") {
		host, port, err := net.SplitHostPort(c.Address)
		if err != nil || host == "" || port == "" || strings.Contains(c.Address, "://") {
			return fmt.Errorf("address %q: want host:port or unix:///path (the scheme goes in scheme)", c.Address)
		}
	}
	switch c.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf("scheme %q: want http or https", c.Scheme)
	}
	if c.Scheme == "http" && c.TLS != nil {
		return errors.New("scheme http with a tls block: use https or leave scheme out")
	}
	if strings.HasPrefix(c.Address, "unix://") && (c.TLS != nil || c.Scheme == "https") {
		return errors.New("tls: not supported with a unix:// address")
	}
	if strings.Trim(c.Prefix, "/") == "" && c.Prefix != "" {
		return fmt.Errorf("prefix %q: must contain more than slashes", c.Prefix)
	}
	if c.LockTTL != 0 && (time.Duration(c.LockTTL) < 10*time.Second || time.Duration(c.LockTTL) > 24*time.Hour) {
		return fmt.Errorf("lock_ttl %s: Consul accepts session TTLs from 10s to 24h", time.Duration(c.LockTTL))
	}
	if c.Timeout < 0 {
		return errors.New("timeout: must not be negative")
	}
	return c.TLS.validate("tls")
}

// Cleanup leaves the shared client; the last config to leave stops the
// renewal of locks still held (their sessions then expire).
func (c *Consul) Cleanup() error {
	if c.poolKey == "" {
		return nil
	}
	_, err := pool.Delete(c.poolKey)
	return err
}

// CertMagicStorage returns the storage itself.
func (c *Consul) CertMagicStorage() (certmagic.Storage, error) {
	return c, nil
}

// consulConn is the client and the held locks, shared by the configs that
// use the same settings (a caddy.UsagePool value).
type consulConn struct {
	client *api.Client
	mu     sync.Mutex
	locks  map[string]*consulLock // lock key -> held lock
}

// consulLock is a lock this process holds: its session and the renewal.
type consulLock struct {
	session string
	stop    context.CancelFunc // ends the renewal
	done    chan struct{}      // closed when the renewal ended
	lost    chan struct{}      // closed when the session could not be renewed
}

// Destruct stops renewing the sessions of locks still held; they expire.
func (cc *consulConn) Destruct() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for _, l := range cc.locks {
		l.stop()
	}
	return nil
}

func (c *Consul) write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

func (c *Consul) query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

// request runs f under the request timeout and names Consul and the key in
// its error.
func (c *Consul) request(ctx context.Context, op, key string, f func(ctx context.Context, kv *api.KV) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := f(ctx, c.conn.client.KV()); err != nil {
		if errors.Is(err, errNotExistSentinel) {
			return notExist(op, key)
		}
		return fmt.Errorf("consul storage: %s %q at %s: %w", op, key, c.addr(), err)
	}
	return nil
}

// errNotExistSentinel tells request that the key is missing.
var errNotExistSentinel = errors.New("not found")

func (c *Consul) addr() string {
	if c.Address == "" {
		return "127.0.0.1:8500"
	}
	return c.Address
}

// Store puts value at key, with the time of the write in the key's flags.
func (c *Consul) Store(ctx context.Context, key string, value []byte) error {
	key = cleanKey(key)
	if key == "" {
		return errEmptyKey
	}
	if len(value) > consulMaxValue {
		return tooLarge("Consul (default kv_max_value_size 512 KiB)", key, len(value), consulMaxValue)
	}
	modified := uint64(time.Now().UnixNano())
	return c.request(ctx, "store", key, func(ctx context.Context, kv *api.KV) error {
		_, err := kv.Put(&api.KVPair{Key: c.ns.data + key, Value: value, Flags: modified}, c.write(ctx))
		return err
	})
}

// Load returns the value at key, or an fs.ErrNotExist error.
func (c *Consul) Load(ctx context.Context, key string) ([]byte, error) {
	key = cleanKey(key)
	var value []byte
	err := c.request(ctx, "load", key, func(ctx context.Context, kv *api.KV) error {
		if key == "" {
			return errNotExistSentinel
		}
		pair, _, err := kv.Get(c.ns.data+key, c.query(ctx))
		if err != nil {
			return err
		}
		if pair == nil {
			return errNotExistSentinel
		}
		value = pair.Value
		if value == nil {
			value = []byte{}
		}
		return nil
	})
	return value, err
}

// Delete removes key and every key below it in one transaction. A missing
// key is not an error.
func (c *Consul) Delete(ctx context.Context, key string) error {
	key = cleanKey(key)
	if key == "" {
		return errEmptyKey
	}
	return c.request(ctx, "delete", key, func(ctx context.Context, kv *api.KV) error {
		ok, resp, _, err := kv.Txn(api.KVTxnOps{
			{Verb: api.KVDelete, Key: c.ns.data + key},
			{Verb: api.KVDeleteTree, Key: c.ns.data + key + "/"},
		}, c.query(ctx))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("transaction rolled back: %v", txnErrors(resp))
		}
		return nil
	})
}

func txnErrors(resp *api.KVTxnResponse) []string {
	if resp == nil {
		return nil
	}
	var out []string
	for _, e := range resp.Errors {
		out = append(out, e.What)
	}
	return out
}

// Exists reports whether key is a file or a directory (a prefix of files).
func (c *Consul) Exists(ctx context.Context, key string) bool {
	_, err := c.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file (its size and modification time) or a
// directory; an fs.ErrNotExist error when it is neither.
func (c *Consul) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = cleanKey(key)
	var info certmagic.KeyInfo
	err := c.request(ctx, "stat", key, func(ctx context.Context, kv *api.KV) error {
		if key != "" {
			pair, _, err := kv.Get(c.ns.data+key, c.query(ctx))
			if err != nil {
				return err
			}
			if pair != nil {
				info = certmagic.KeyInfo{Key: key, Size: int64(len(pair.Value)), IsTerminal: true}
				if pair.Flags != 0 {
					info.Modified = time.Unix(0, int64(pair.Flags))
				}
				return nil
			}
		}
		below, _, err := kv.Keys(c.ns.dir(key), "/", c.query(ctx))
		if err != nil {
			return err
		}
		if len(below) == 0 && key != "" {
			return errNotExistSentinel
		}
		info = certmagic.KeyInfo{Key: key, IsTerminal: false}
		return nil
	})
	return info, err
}

// List returns the keys below dir: with recursive every file and
// directory at any depth, otherwise the direct children. A dir that is a
// file has no children; a dir that does not exist is an fs.ErrNotExist
// error ("" is the root and always exists).
func (c *Consul) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = cleanKey(dir)
	var keys []string
	err := c.request(ctx, "list", dir, func(ctx context.Context, kv *api.KV) error {
		sep := "/" // Consul folds deeper keys into "dir/" entries
		if recursive {
			sep = ""
		}
		found, _, err := kv.Keys(c.ns.dir(dir), sep, c.query(ctx))
		if err != nil {
			return err
		}
		if len(found) == 0 && dir != "" {
			pair, _, err := kv.Get(c.ns.data+dir, c.query(ctx))
			if err != nil {
				return err
			}
			if pair == nil {
				return errNotExistSentinel
			}
		}
		all := make([]string, len(found))
		for i, k := range found {
			all[i] = strings.TrimSuffix(strings.TrimPrefix(k, c.ns.data), "/")
		}
		keys = children(dir, all, recursive)
		return nil
	})
	return keys, err
}

// Lock takes the named lock, waiting until it is free or ctx ends. Its
// session is renewed until Unlock; if this process dies Consul ends the
// session and deletes the lock key within two lock_ttl.
func (c *Consul) Lock(ctx context.Context, name string) error {
	_, err := c.lock(ctx, name, true)
	return err
}

// TryLock takes the named lock if it is free and reports whether it did.
func (c *Consul) TryLock(ctx context.Context, name string) (bool, error) {
	return c.lock(ctx, name, false)
}

func (c *Consul) lock(ctx context.Context, name string, wait bool) (bool, error) {
	key := c.ns.locks + name
	fail := func(err error) error {
		return fmt.Errorf("consul storage: lock %q at %s: %w", name, c.addr(), err)
	}
	sessions := c.conn.client.Session()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	host, _ := os.Hostname()
	id, _, err := sessions.Create(&api.SessionEntry{
		Name:     "caddy storage lock " + name,
		TTL:      c.ttl.String(),
		Behavior: api.SessionBehaviorDelete,
		// A dead holder's key is deleted when its session ends; a
		// lock-delay (Consul's default 15s) would only add that wait.
		LockDelay: time.Millisecond,
	}, c.write(cctx))
	cancel()
	if err != nil {
		return false, fail(fmt.Errorf("creating a session: %w", err))
	}
	held := c.renew(id, name)
	value := fmt.Sprintf(`{"host":%q,"pid":%d,"since":%q}`, host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	giveUp := func(err error) (bool, error) {
		held.stop()
		<-held.done
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		sessions.Destroy(id, c.write(dctx))
		cancel()
		return false, err
	}
	kv := c.conn.client.KV()
	var index uint64
	for {
		actx, cancel := context.WithTimeout(ctx, c.timeout)
		ok, _, err := kv.Acquire(&api.KVPair{Key: key, Value: []byte(value), Session: id}, c.write(actx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return giveUp(ctx.Err())
			}
			return giveUp(fail(err))
		}
		if ok {
			break
		}
		if !wait {
			return giveUp(nil)
		}
		// wait until the key changes (released, deleted, taken again)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: consulWait}).WithContext(ctx)
		pair, meta, err := kv.Get(key, q)
		if ctx.Err() != nil {
			return giveUp(ctx.Err())
		}
		if err != nil {
			return giveUp(fail(err))
		}
		if (pair == nil || pair.Session == "") && meta.LastIndex == index {
			// free but refused (lock-delay): retry a moment later
			select {
			case <-ctx.Done():
				return giveUp(ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		index = meta.LastIndex
	}
	c.conn.mu.Lock()
	c.conn.locks[key] = held
	c.conn.mu.Unlock()
	return true, nil
}

// renew keeps the session alive every half TTL until stopped; when Consul
// no longer knows the session it closes lost and ends.
func (c *Consul) renew(id, name string) *consulLock {
	ctx, stop := context.WithCancel(context.Background())
	l := &consulLock{session: id, stop: stop, done: make(chan struct{}), lost: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(c.ttl / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, c.timeout)
			entry, _, err := c.conn.client.Session().Renew(id, c.write(rctx))
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err == nil && entry == nil {
				close(l.lost)
				c.logger.Warn("consul storage: lost a held lock: its session ended", zap.String("lock", name), zap.Duration("lock_ttl", c.ttl))
				return
			}
			if err != nil {
				c.logger.Warn("consul storage: renewing a lock's session", zap.String("lock", name), zap.Error(err))
			}
		}
	}()
	return l
}

// Unlock releases the named lock: it deletes the lock key if this
// process's session still holds it and ends the session. It fails when this
// process does not hold the lock or the session ended while it was held
// (another instance may then have taken the lock).
func (c *Consul) Unlock(ctx context.Context, name string) error {
	key := c.ns.locks + name
	c.conn.mu.Lock()
	held := c.conn.locks[key]
	delete(c.conn.locks, key)
	c.conn.mu.Unlock()
	if held == nil {
		return fmt.Errorf("consul storage: unlock %q: not locked by this process", name)
	}
	held.stop()
	<-held.done
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	// delete the key only while our session holds it, then end the session
	// (ending it first would leave the key to Consul's lock-delay)
	ok, _, _, err := c.conn.client.KV().Txn(api.KVTxnOps{
		{Verb: api.KVCheckSession, Key: key, Session: held.session},
		{Verb: api.KVDelete, Key: key},
	}, c.query(uctx))
	if _, derr := c.conn.client.Session().Destroy(held.session, c.write(uctx)); err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("consul storage: unlock %q at %s: %w", name, c.addr(), err)
	}
	if !ok {
		return fmt.Errorf("consul storage: unlock %q: the lock was lost while held (its session ended)", name)
	}
	return nil
}

// String names the storage in certmagic's logs.
func (c *Consul) String() string {
	return "consul:" + c.addr() + "/" + c.ns.data
}

// UnmarshalCaddyfile reads
//
//	storage between_consul [ADDRESS] {
//		address ADDRESS
//		scheme http|https
//		token TOKEN
//		datacenter DC
//		prefix PREFIX
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
func (c *Consul) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		c.Address = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *string
		switch d.Val() {
		case "address":
			dst = &c.Address
		case "scheme":
			dst = &c.Scheme
		case "token":
			dst = &c.Token
		case "datacenter":
			dst = &c.Datacenter
		case "prefix":
			dst = &c.Prefix
		case "timeout":
			if err := parseDuration(d, &c.Timeout); err != nil {
				return err
			}
			continue
		case "lock_ttl":
			if err := parseDuration(d, &c.LockTTL); err != nil {
				return err
			}
			continue
		case "tls":
			c.TLS = new(TLS)
			if err := c.TLS.unmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		default:
			return d.Errf("unknown option %q", d.Val())
		}
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

var (
	_ caddy.Provisioner      = (*Consul)(nil)
	_ caddy.Validator        = (*Consul)(nil)
	_ caddy.CleanerUpper     = (*Consul)(nil)
	_ caddy.StorageConverter = (*Consul)(nil)
	_ certmagic.Storage      = (*Consul)(nil)
	_ certmagic.TryLocker    = (*Consul)(nil)
	_ caddyfile.Unmarshaler  = (*Consul)(nil)
	_ caddy.Destructor       = (*consulConn)(nil)
)
