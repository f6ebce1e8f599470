// Package httpupstreams feeds Caddy's HTTP reverse_proxy from Between's
// discovery sources: the module http.reverse_proxy.upstreams.between is a
// dynamic upstream source that wraps any between.discovery module (static,
// srv, docker, json, plaintext, exec, consul, lxd, etcd).
package httpupstreams

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/discovery"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a dynamic upstream source for the HTTP reverse_proxy handler
// that takes its backends from a Between discovery source: any
// between.discovery module (static, srv, docker, json, plaintext, exec,
// consul, lxd, etcd) with its own fields and the common interval, timeout
// and failpolicy.
//
// Discovery runs in the background, started by the first request, and
// reverse_proxy gets the latest list on every request without waiting on
// the source. The first request waits for the first fetch (at most the
// source's timeout). A reload that leaves the discovery config unchanged
// keeps the running discovery and its list; every reverse_proxy handler
// with the same discovery config shares one.
//
// What reaches reverse_proxy from each discovered backend:
//   - host:port becomes the upstream's dial address;
//   - max_connections becomes the upstream's max_requests (0 = unlimited);
//   - priority: only the backends of the lowest priority number that
//     discovery lists are returned. Higher numbers are used only while
//     discovery lists none of the lower ones;
//   - weight and sni are not used: choose the balancing with
//     reverse_proxy's lb_policy (e.g. weighted_round_robin, whose weights
//     are written there), and set the TLS server name in its transport.
//
// Between's health checks are not part of this source: use reverse_proxy's
// own active and passive health checks (active ones do not run on dynamic
// upstreams; passive ones do).
type Upstreams struct {
	// The discovery source, a between.discovery module named by its "kind",
	// e.g. {"kind": "static", "static_list": ["10.0.0.1:8080"]}. Required.
	DiscoveryRaw json.RawMessage `json:"discovery,omitempty" caddy:"namespace=between.discovery inline_key=kind"`

	key      string
	feed     *feed
	released bool
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.between",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// feeds holds the running discovery of every discovery config in use, keyed
// by the hash of that config, so that a reload hands an unchanged config the
// same running discovery and list.
var feeds = caddy.NewUsagePool()

// Provision loads the discovery source and joins (or creates) the shared
// discovery of the same config. Nothing starts here: caddy validate and
// caddy adapt provision modules too.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	if len(u.DiscoveryRaw) == 0 {
		return fmt.Errorf(`discovery: required (e.g. {"kind":"static","static_list":["127.0.0.1:8080"]})`)
	}
	key, err := configKey(u.DiscoveryRaw)
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	mod, err := ctx.LoadModule(u, "DiscoveryRaw")
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	src, ok := mod.(discovery.Configured)
	if !ok {
		return fmt.Errorf("discovery: module %T is not a discovery source", mod)
	}
	if err := src.Settings().ValidateCommon(); err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	logger := ctx.Logger().With(zap.String("source", src.(caddy.Module).CaddyModule().ID.Name()))
	val, _, err := feeds.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newFeed(src, logger), nil
	})
	if err != nil {
		return err
	}
	u.key, u.feed = key, val.(*feed)
	return nil
}

// configKey identifies a discovery config: the hash of its compacted JSON.
func configKey(raw json.RawMessage) (string, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:]), nil
}

// GetUpstreams returns the backends discovery lists now (the lowest priority
// group). The first call starts discovery and waits for its first result.
//
// Every call returns new Upstream values (two allocations, whatever the
// number of backends): reverse_proxy writes into each returned Upstream on
// every request, so sharing them between concurrent requests would race.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	f := u.feed
	f.start()
	list := f.list.Load()
	if list == nil {
		if list = f.await(r.Context()); list == nil {
			return nil, f.notReady()
		}
	}
	n := len(list.targets)
	if n == 0 {
		return nil, nil
	}
	ups := make([]reverseproxy.Upstream, n)
	out := make([]*reverseproxy.Upstream, n)
	for i := range list.targets {
		ups[i].Dial = list.targets[i].dial
		ups[i].MaxRequests = list.targets[i].maxRequests
		out[i] = &ups[i]
	}
	return out, nil
}

// Cleanup lets go of the shared discovery; the last config using it stops it.
func (u *Upstreams) Cleanup() error {
	// u.feed stays set: a request of the old config may still be running
	// and is served from the last list.
	if u.feed == nil || u.released {
		return nil
	}
	u.released = true
	_, err := feeds.Delete(u.key)
	return err
}

// UnmarshalCaddyfile reads the source inside reverse_proxy:
//
//	reverse_proxy {
//		dynamic between KIND [ARGS...] [{
//			SUBDIRECTIVE VALUE...
//		}]
//	}
//
// KIND, its arguments and its block are exactly those of the layer4
// between handler's `discovery KIND ...` subdirective (the kind prefix of a
// field is dropped: consul_service_name -> service_name), including the
// common interval, timeout and failpolicy. Example:
//
//	dynamic between consul {
//		host 127.0.0.1:8500
//		service_name web
//	}
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "between"
	if !d.NextArg() || d.Val() == "{" {
		return d.Err("dynamic between: missing discovery kind (e.g. dynamic between static 127.0.0.1:8080)")
	}
	kind := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "between.discovery."+kind)
	if err != nil {
		// the source's own error names the subdirective and the position
		return err
	}
	u.DiscoveryRaw = caddyconfig.JSONModuleObject(unm, "kind", kind, nil)
	return nil
}

// target is one upstream as reverse_proxy gets it.
type target struct {
	dial        string
	maxRequests int
}

// upstreamList is one discovery result reduced to what reverse_proxy uses.
// It is replaced, never modified.
type upstreamList struct {
	targets []target
}

func (l *upstreamList) equal(o *upstreamList) bool {
	if len(l.targets) != len(o.targets) {
		return false
	}
	for i := range l.targets {
		if l.targets[i] != o.targets[i] {
			return false
		}
	}
	return true
}

// feed runs one discovery source for every Upstreams module with the same
// discovery config, across reloads.
type feed struct {
	source    discovery.Configured
	logger    *zap.Logger
	firstWait time.Duration

	// list is the current result; nil until the first successful fetch.
	list atomic.Pointer[upstreamList]
	// lastErr is the newest fetch error, reported while there is no list.
	lastErr atomic.Pointer[error]

	// ready is closed when the first fetch has ended (or the feed stopped),
	// so that the first requests wait for the list instead of failing.
	ready     chan struct{}
	readyOnce sync.Once

	started atomic.Bool
	mu      sync.Mutex // guards starting and stopping
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func newFeed(src discovery.Configured, logger *zap.Logger) *feed {
	return &feed{
		source:    src,
		logger:    logger,
		firstWait: src.Settings().FetchTimeout(),
		ready:     make(chan struct{}),
	}
}

// start runs discovery in the background, once.
func (f *feed) start() {
	if f.started.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started.Load() || f.stopped {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	r := &discovery.Runner{
		Source: f.source,
		Update: f.update,
		OnFetch: func(err error) {
			// a good list marks readiness once update installed it
			if err != nil {
				f.markReady()
			}
		},
		OnError: func(err error) {
			f.lastErr.Store(&err)
			f.logger.Warn("discovery failed; keeping the last good upstream list unless failpolicy is setempty", zap.Error(err))
		},
	}
	f.logger.Info("upstream discovery started")
	go func() {
		defer close(f.done)
		r.Run(ctx)
	}()
	f.started.Store(true)
}

// Destruct stops discovery when the last config using it is gone.
func (f *feed) Destruct() error {
	f.mu.Lock()
	f.stopped = true
	cancel, done := f.cancel, f.done
	f.mu.Unlock()
	f.markReady()
	if cancel != nil {
		cancel()
		<-done
		f.logger.Info("upstream discovery stopped")
	}
	return nil
}

// update installs a discovery result: the lowest priority group, in the
// order discovery listed it, without duplicates.
func (f *feed) update(list []backend.Backend) {
	next := reduce(list, f.logger)
	prev := f.list.Load()
	if prev == nil || !prev.equal(next) {
		f.list.Store(next)
		f.logChange(prev, next)
	}
	f.markReady()
}

// reduce keeps the backends reverse_proxy should get.
func reduce(list []backend.Backend, logger *zap.Logger) *upstreamList {
	best := -1
	for i := range list {
		if usable(&list[i]) && (best < 0 || list[i].Priority < best) {
			best = list[i].Priority
		}
	}
	out := &upstreamList{}
	seen := make(map[string]bool, len(list))
	for i := range list {
		b := &list[i]
		if !usable(b) {
			logger.Warn("skipping a discovered backend without host or port", zap.String("backend", b.String()))
			continue
		}
		if b.Priority != best {
			continue
		}
		addr := b.Address()
		if seen[addr] {
			continue
		}
		seen[addr] = true
		out.targets = append(out.targets, target{dial: addr, maxRequests: b.MaxConnections})
	}
	return out
}

func usable(b *backend.Backend) bool {
	port, err := strconv.Atoi(b.Port)
	return b.Host != "" && err == nil && port > 0 && port < 65536
}

func (f *feed) logChange(prev, next *upstreamList) {
	added, removed := len(next.targets), 0
	if prev != nil {
		had := make(map[string]bool, len(prev.targets))
		for _, t := range prev.targets {
			had[t.dial] = true
		}
		has := make(map[string]bool, len(next.targets))
		for _, t := range next.targets {
			has[t.dial] = true
			if had[t.dial] {
				added--
			}
		}
		for _, t := range prev.targets {
			if !has[t.dial] {
				removed++
			}
		}
	}
	dials := make([]string, len(next.targets))
	for i, t := range next.targets {
		dials[i] = t.dial
	}
	f.logger.Info("upstreams updated",
		zap.Int("count", len(next.targets)), zap.Int("added", added), zap.Int("removed", removed),
		zap.Strings("upstreams", dials))
}

func (f *feed) markReady() {
	f.readyOnce.Do(func() { close(f.ready) })
}

// await waits for the first fetch, at most the source's fetch timeout or
// until the request ends, and returns the list it produced, if any.
func (f *feed) await(ctx context.Context) *upstreamList {
	select {
	case <-f.ready:
	default:
		t := time.NewTimer(f.firstWait)
		defer t.Stop()
		select {
		case <-f.ready:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return f.list.Load()
}

// errNoList is returned while discovery has produced no list yet.
var errNoList = errors.New("between upstreams: discovery has no backend list yet")

func (f *feed) notReady() error {
	if p := f.lastErr.Load(); p != nil {
		return fmt.Errorf("%w: %w", errNoList, *p)
	}
	return errNoList
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ caddy.CleanerUpper          = (*Upstreams)(nil)
	_ caddyfile.Unmarshaler       = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
	_ caddy.Destructor            = (*feed)(nil)
)
