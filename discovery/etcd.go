package discovery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/clienttls"
	"github.com/caddy-between/between/internal/engineclient"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"
)

func init() {
	caddy.RegisterModule(Etcd{})
}

// Etcd finds backends in an etcd v3 key space. Every key under the prefix
// names one backend: the key PREFIX/HOST:PORT is the backend HOST:PORT, and
// its value holds the backend's optional attributes in gobetween backend-line
// syntax ("weight=2 sni=db.example.com"; an empty value means the defaults).
// A key or value that does not parse is skipped and logged; the other
// backends stay.
//
// The source reads the prefix once and then watches it, so a put or delete
// reaches the balancer within moments. When the watch breaks (etcd
// unreachable, no leader, history compacted) the error is logged and the list
// is read again after interval (1s when interval is 0), then watched again.
//
// timeout (default 5s) bounds connecting and logging in, every read of the
// prefix, and the keepalive that notices a silent network failure.
//
// etcd_username, etcd_password and the TLS paths accept Caddy's global
// placeholders, e.g. "{env.ETCD_PASSWORD}", so secrets need not be written
// in the config.
type Etcd struct {
	Common
	// The etcd endpoints: "host:port", "http://host:port" or
	// "https://host:port". Required. All endpoints use the same scheme.
	Endpoints []string `json:"etcd_endpoints,omitempty"`
	// The key prefix. Each key PREFIX/HOST:PORT is one backend; a "/" is
	// added when the prefix does not end in one. Required.
	Prefix string `json:"etcd_prefix,omitempty"`
	// User name for etcd authentication. Requires etcd_password. The user
	// needs read permission on the prefix.
	Username string `json:"etcd_username,omitempty"`
	// Password for etcd authentication. Requires etcd_username.
	Password string `json:"etcd_password,omitempty"`
	// Talk TLS to "host:port" endpoints, verifying etcd against the system's
	// roots unless etcd_tls_cacert_path is set. Implied by https:// endpoints
	// and by any of the TLS paths.
	TLSEnabled bool `json:"etcd_tls_enabled,omitempty"`
	// Client certificate (PEM) for etcd's client certificate authentication.
	// Requires etcd_tls_key_path.
	TLSCertPath string `json:"etcd_tls_cert_path,omitempty"`
	// Private key (PEM) of the client certificate. Requires
	// etcd_tls_cert_path.
	TLSKeyPath string `json:"etcd_tls_key_path,omitempty"`
	// CA certificates (PEM) that etcd's server certificate must chain to,
	// instead of the system's roots.
	TLSCACertPath string `json:"etcd_tls_cacert_path,omitempty"`

	logger   *zap.Logger
	dir      string      // Prefix with a trailing "/": the watched range
	tls      *tls.Config // nil without TLS
	username string      // Username and Password with placeholders replaced
	password string

	live *etcdLive // set in Provision
}

// etcdLive is the mutable part of an Etcd source, behind a pointer so that
// the module value can be copied.
type etcdLive struct {
	mu      sync.Mutex
	client  *clientv3.Client
	users   int              // Fetch and Watch calls using client
	cleaned bool             // Cleanup was called: close the client when unused
	skipped map[string]int64 // bad key -> mod revision already logged
}

// CaddyModule returns the Caddy module information.
func (Etcd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.etcd",
		New: func() caddy.Module { return new(Etcd) },
	}
}

// Provision replaces placeholders and loads the TLS files. It does not
// connect: the client is created on the first fetch.
func (e *Etcd) Provision(ctx caddy.Context) error {
	e.logger = ctx.Logger()
	e.live = new(etcdLive)
	repl := caddy.NewReplacer()
	e.username = repl.ReplaceKnown(e.Username, "")
	e.password = repl.ReplaceKnown(e.Password, "")
	e.dir = e.Prefix
	if !strings.HasSuffix(e.dir, "/") {
		e.dir += "/"
	}
	e.tls = nil
	if !e.usesTLS() {
		return nil
	}
	cfg, err := clienttls.Config("etcd_tls_", "", repl.ReplaceKnown(e.TLSCertPath, ""), repl.ReplaceKnown(e.TLSKeyPath, ""), repl.ReplaceKnown(e.TLSCACertPath, ""))
	if err != nil {
		return err
	}
	e.tls = cfg
	return nil
}

// usesTLS reports whether the settings ask for TLS.
func (e *Etcd) usesTLS() bool {
	return engineclient.UsesTLS(e.TLSEnabled || e.TLSCertPath != "" || e.TLSKeyPath != "" || e.TLSCACertPath != "", e.Endpoints)
}

// Validate checks the settings.
func (e *Etcd) Validate() error {
	if len(e.Endpoints) == 0 {
		return fmt.Errorf("etcd_endpoints: at least one endpoint is required")
	}
	scheme, err := engineclient.CheckEtcdEndpoints("etcd_endpoints", e.Endpoints, true)
	if err != nil {
		return err
	}
	if scheme == "http" && e.usesTLS() {
		return fmt.Errorf("etcd_endpoints: http:// endpoints with TLS settings; use https:// or host:port")
	}
	if e.Prefix == "" {
		return fmt.Errorf("etcd_prefix: required (keys PREFIX/HOST:PORT are the backends)")
	}
	if (e.Username == "") != (e.Password == "") {
		return fmt.Errorf("etcd_username and etcd_password: give both or neither")
	}
	if (e.TLSCertPath == "") != (e.TLSKeyPath == "") {
		return fmt.Errorf("etcd_tls_cert_path and etcd_tls_key_path: give both or neither")
	}
	return e.ValidateCommon()
}

// acquire returns the source's client, creating it on first use. Every
// acquire is paired with a release.
func (e *Etcd) acquire() (*clientv3.Client, error) {
	l := e.live
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.client == nil {
		cli, err := e.newClient()
		if err != nil {
			return nil, err
		}
		l.client = cli
	}
	l.users++
	return l.client, nil
}

// release ends a use of the client. After Cleanup the client closes when its
// last user is done.
func (e *Etcd) release() {
	l := e.live
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users--
	l.closeIfUnusedLocked()
}

func (l *etcdLive) closeIfUnusedLocked() {
	if l.cleaned && l.users == 0 && l.client != nil {
		l.client.Close()
		l.client = nil
	}
}

// Cleanup closes the client. A reload that keeps the server unchanged keeps
// its discovery running on this module after Cleanup: the client then stays
// open while a Fetch or Watch uses it and closes when the last one ends, so
// nothing outlives the server's discovery.
func (e *Etcd) Cleanup() error {
	l := e.live
	if l == nil {
		return nil // never provisioned
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleaned = true
	l.closeIfUnusedLocked()
	return nil
}

// newClient connects to etcd. Without authentication this does not wait for
// the connection; with it, it logs in and fails (wrong credentials, etcd
// unreachable) within timeout.
func (e *Etcd) newClient() (*clientv3.Client, error) {
	timeout := e.FetchTimeout()
	logger := e.logger
	if logger == nil {
		logger = zap.NewNop()
	}
	cli, err := clientv3.New(engineclient.EtcdConfig(engineclient.EtcdOptions{
		Endpoints:   e.Endpoints,
		DialTimeout: timeout,
		// A silent network failure breaks the watch after at most
		// 10s + timeout instead of never.
		KeepAliveTime:    10 * time.Second,
		KeepAliveTimeout: timeout,
		TLS:              e.tls,
		Username:         e.username,
		Password:         e.password,
		// The client's own retry warnings repeat the errors that the Runner
		// logs once per failed fetch (EtcdConfig keeps only its errors).
		Logger: logger.Named("client"),
		// etcd coming back should be noticed within about a second.
		FastReconnect: true,
	}))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w%s", err, e.probe())
		}
		who := ""
		if e.username != "" {
			who = " as user " + strconv.Quote(e.username)
		}
		return nil, fmt.Errorf("etcd: connecting to %s%s: %w", strings.Join(e.Endpoints, ","), who, err)
	}
	return cli, nil
}

// probe explains why etcd did not answer, which gRPC does not tell: it
// connects to each endpoint (and shakes hands, under TLS) and returns the
// failures as " (ENDPOINT: ERROR; ...)", or "" when every endpoint looks fine.
func (e *Etcd) probe() string {
	var problems []string
	for _, ep := range e.Endpoints {
		hostport := ep
		if _, rest, ok := strings.Cut(ep, "://"); ok {
			hostport = strings.TrimSuffix(rest, "/")
		}
		if err := e.probeOne(hostport); err != nil {
			problems = append(problems, ep+": "+err.Error())
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return " (" + strings.Join(problems, "; ") + ")"
}

// probeTimeout bounds each endpoint's probe.
const probeTimeout = 500 * time.Millisecond

func (e *Etcd) probeOne(hostport string) error {
	conn, err := net.DialTimeout("tcp", hostport, probeTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if e.tls == nil {
		return nil
	}
	cfg := e.tls.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(hostport)
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	tc.SetDeadline(time.Now().Add(probeTimeout))
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("TLS: the server closed the connection during the handshake (does it speak TLS?): %w", err)
		}
		return fmt.Errorf("TLS: %w", err)
	}
	// Under TLS 1.3 the server judges the client certificate after the
	// client's handshake is done: a refusal arrives as the first read.
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("TLS: %w", err)
		}
	}
	return nil
}

// Fetch reads every key under the prefix.
func (e *Etcd) Fetch(ctx context.Context) ([]backend.Backend, error) {
	cli, err := e.acquire()
	if err != nil {
		return nil, err
	}
	defer e.release()
	kvs, _, err := e.get(ctx, cli)
	if err != nil {
		return nil, err
	}
	return e.backends(kvs), nil
}

// get reads the prefix; it returns the keys and values by key and the store
// revision of the read.
func (e *Etcd) get(ctx context.Context, cli *clientv3.Client) (map[string]keyValue, int64, error) {
	resp, err := cli.Get(ctx, e.dir, clientv3.WithPrefix())
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// gRPC waits for a connection until the deadline and then
			// reports only that: say where nothing answered, and why.
			err = fmt.Errorf("no answer from %s: %w%s", strings.Join(e.Endpoints, ","), err, e.probe())
		}
		return nil, 0, fmt.Errorf("etcd: reading prefix %q: %w", e.dir, err)
	}
	kvs := make(map[string]keyValue, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = keyValue{value: string(kv.Value), rev: kv.ModRevision}
	}
	return kvs, resp.Header.Revision, nil
}

// keyValue is a key's value and the revision that last changed it.
type keyValue struct {
	value string
	rev   int64
}

// Watch reads the prefix, hands over the list, then follows every change
// from the revision after that read until ctx ends or the watch breaks.
func (e *Etcd) Watch(ctx context.Context, update func([]backend.Backend)) error {
	cli, err := e.acquire()
	if err != nil {
		return err
	}
	defer e.release()
	gctx, cancel := context.WithTimeout(ctx, e.FetchTimeout())
	kvs, rev, err := e.get(gctx, cli)
	cancel()
	if err != nil {
		return err
	}
	update(e.backends(kvs))
	return e.follow(ctx, cli, kvs, rev+1, update)
}

// follow watches the prefix from revision rev on, applying changes to kvs
// and handing over the new list after every batch of events.
func (e *Etcd) follow(ctx context.Context, cli *clientv3.Client, kvs map[string]keyValue, rev int64, update func([]backend.Backend)) error {
	var wg sync.WaitGroup
	defer wg.Wait() // runs after cancel: the state goroutine ends with wctx
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The client retries a broken watch stream forever, silently (and
	// creating a watch waits for etcd): end the watch instead when no
	// endpoint can be reached.
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := cli.ActiveConnection()
		for s := conn.GetState(); ; s = conn.GetState() {
			if s == connectivity.TransientFailure || s == connectivity.Shutdown {
				cancel(fmt.Errorf("etcd: watch of %q: lost the connection to %s%s", e.dir, strings.Join(e.Endpoints, ","), e.probe()))
				return
			}
			if !conn.WaitForStateChange(wctx, s) {
				return
			}
		}
	}()
	stopped := func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return context.Cause(wctx)
	}
	wch := cli.Watch(clientv3.WithRequireLeader(wctx), e.dir, clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		select {
		case <-wctx.Done():
			return stopped()
		case wr, ok := <-wch:
			if !ok {
				if wctx.Err() != nil {
					return stopped()
				}
				return fmt.Errorf("etcd: watch of %q ended", e.dir)
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					return fmt.Errorf("etcd: watch of %q from revision %d: history compacted up to revision %d: %w", e.dir, rev, wr.CompactRevision, err)
				}
				return fmt.Errorf("etcd: watch of %q: %w", e.dir, err)
			}
			if len(wr.Events) == 0 {
				continue // progress notification or watch created
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(kvs, key)
				} else {
					kvs[key] = keyValue{value: string(ev.Kv.Value), rev: ev.Kv.ModRevision}
				}
			}
			update(e.backends(kvs))
		}
	}
}

// backends turns the keys under the prefix into backends, in key order.
// A bad key is logged once per revision of it and skipped.
func (e *Etcd) backends(kvs map[string]keyValue) []backend.Backend {
	keys := make([]string, 0, len(kvs))
	for k := range kvs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	l := e.live
	l.mu.Lock()
	defer l.mu.Unlock()
	skipped := make(map[string]int64)
	seen := make(map[string]string, len(keys)) // address -> key
	out := make([]backend.Backend, 0, len(keys))
	for _, key := range keys {
		kv := kvs[key]
		b, err := e.parseKey(key, kv.value)
		if err == nil {
			if first, dup := seen[b.Address()]; dup {
				err = fmt.Errorf("backend %s already given by key %q", b.Address(), first)
			}
		}
		if err != nil {
			skipped[key] = kv.rev
			if logged, ok := l.skipped[key]; (!ok || logged != kv.rev) && e.logger != nil {
				e.logger.Warn("etcd: skipping key", zap.String("key", key), zap.Int64("mod_revision", kv.rev), zap.Error(err))
			}
			continue
		}
		seen[b.Address()] = key
		out = append(out, b)
	}
	l.skipped = skipped
	return out
}

// parseKey reads one key PREFIX/HOST:PORT and its value of attributes.
func (e *Etcd) parseKey(key, value string) (backend.Backend, error) {
	addr := strings.TrimPrefix(key, e.dir)
	if addr == "" {
		return backend.Backend{}, errors.New("key is the prefix itself, without host:port")
	}
	if strings.ContainsFunc(addr, func(r rune) bool { return r <= ' ' }) {
		return backend.Backend{}, fmt.Errorf("key part %q after the prefix: want host:port without spaces", addr)
	}
	if _, _, err := backend.SplitHostPort(addr); err != nil {
		return backend.Backend{}, fmt.Errorf("key part after the prefix: %w", err)
	}
	b, err := backend.Parse(addr + " " + value)
	if err != nil {
		return backend.Backend{}, fmt.Errorf("value %q: %w", value, err)
	}
	return b, nil
}

// UnmarshalCaddyfile reads
//
//	discovery etcd [ENDPOINT ...] {
//		endpoints ENDPOINT ...
//		prefix PREFIX
//		username NAME
//		password SECRET
//		tls_enabled [true|false]
//		tls_cert_path PATH
//		tls_key_path PATH
//		tls_cacert_path PATH
//		interval, timeout, failpolicy
//	}
//
// ENDPOINT is host:port, http://host:port or https://host:port. The JSON
// names with the etcd_ prefix are accepted too.
func (e *Etcd) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	e.Endpoints = append(e.Endpoints, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := strings.TrimPrefix(d.Val(), "etcd_")
		var dst *string
		switch name {
		case "endpoints":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			e.Endpoints = append(e.Endpoints, args...)
			continue
		case "tls_enabled":
			args := d.RemainingArgs()
			switch len(args) {
			case 0:
				e.TLSEnabled = true
			case 1:
				v, err := strconv.ParseBool(args[0])
				if err != nil {
					return d.Errf("tls_enabled %q: want true or false", args[0])
				}
				e.TLSEnabled = v
			default:
				return d.ArgErr()
			}
			continue
		case "prefix":
			dst = &e.Prefix
		case "username":
			dst = &e.Username
		case "password":
			dst = &e.Password
		case "tls_cert_path":
			dst = &e.TLSCertPath
		case "tls_key_path":
			dst = &e.TLSKeyPath
		case "tls_cacert_path":
			dst = &e.TLSCACertPath
		default:
			if err := e.UnmarshalCommon(d); err != nil {
				return err
			}
			continue
		}
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

var (
	_ Configured            = (*Etcd)(nil)
	_ Watcher               = (*Etcd)(nil)
	_ caddy.Provisioner     = (*Etcd)(nil)
	_ caddy.Validator       = (*Etcd)(nil)
	_ caddy.CleanerUpper    = (*Etcd)(nil)
	_ caddyfile.Unmarshaler = (*Etcd)(nil)
)
