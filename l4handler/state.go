package l4handler

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/udpsession"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

// states holds the runtime state of every handler, keyed by handler name and
// config hash, so that a reload which leaves a handler unchanged hands the new
// config the same state: statistics, health, discovery and open connections
// carry over without a gap.
var states = caddy.NewUsagePool()

// state is the part of a handler that outlives one config load.
type state struct {
	name   string
	logger *zap.Logger
	stats  *backend.Stats // handler totals, shared with the state this one replaced

	refusals refusalLog // rate limit of the refusal lines

	// inherited are the backend stats of the state this one replaced, by
	// address, handed to the same backends when discovery finds them.
	inherited map[string]*backend.Stats

	source discovery.Configured
	health healthTracker

	// pool is the election snapshot: discovered, healthy backends sorted by
	// (priority, address). It is replaced, never modified.
	pool atomic.Pointer[[]*backend.Backend]

	mu         sync.Mutex
	discovered map[string]*backend.Backend // by address

	// ready is closed when the first discovery attempt has finished, so that
	// clients arriving right after a (re)start wait for the backend list
	// instead of being refused; at most firstWait (set once, in newState).
	ready     chan struct{}
	readyOnce sync.Once
	firstWait time.Duration

	conns sync.Map // net.Conn -> struct{}: open client connections, for draining

	// udp holds a UDP handler's datagram and session totals, shared with
	// the state this one replaced; fwd the fire-and-forget per-backend
	// sockets (max_requests 1), opened on first use.
	udp *udpsession.Counters
	fwd *udpsession.Forwarder

	// events is where backend and discovery events go: the events app of the
	// newest config that started this state. Until the first one has started
	// (Caddy starts apps in no fixed order, and an events app subscribes its
	// handlers in its own Start), events wait in pending.
	evMu    sync.Mutex
	events  *eventSink
	pending []pendingEvent

	// fetches is the discovery Runner and the totals inherited from the
	// state this one replaced, read by the metrics collector; set at start.
	fetches atomic.Pointer[fetchCounter]

	startOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// healthTracker is what the state needs from health checking.
type healthTracker interface {
	Update(backends []*backend.Backend)
	Healthy(addr string) bool
	DialFailed(addr string)
	DialSucceeded(addr string)
	Stop()
}

func newState(h *Handler) *state {
	st := &state{
		name:       h.Name,
		logger:     h.logger,
		source:     h.source,
		discovered: map[string]*backend.Backend{},
		ready:      make(chan struct{}),
	}
	empty := []*backend.Backend{}
	st.pool.Store(&empty)
	// A client may arrive before the companion app has started discovery
	// (Caddy starts apps in no fixed order): it waits for the first result
	// at most as long as one fetch may take.
	st.firstWait = h.source.Settings().FetchTimeout()

	// A changed handler's new state takes over from the running one: its
	// totals, the stats of backends it still has, and what health checks
	// knew, so statistics do not fall back to zero and known-down backends
	// get no traffic when a handler's config is edited.
	var prev *state
	if ph, ok := running.get(h.Name); ok {
		prev = ph.state
	}
	st.health = newHealth(h, st, prev)
	st.stats = new(backend.Stats)
	st.udp = new(udpsession.Counters)
	if h.udp != nil && h.udp.cfg.MaxRequests == 1 && !h.udp.cfg.Transparent {
		st.fwd = udpsession.NewForwarder() // no socket until the first datagram
	}
	if prev != nil {
		st.stats = prev.stats
		st.udp = prev.udp
		prev.mu.Lock()
		st.inherited = make(map[string]*backend.Stats, len(prev.discovered))
		for addr, b := range prev.discovered {
			st.inherited[addr] = b.Stats
		}
		prev.mu.Unlock()
	}
	return st
}

// Destruct stops the state's goroutines when the last config using it is gone.
func (st *state) Destruct() error {
	if st.cancel != nil {
		st.cancel()
	}
	st.wg.Wait()
	st.health.Stop()
	if st.fwd != nil {
		st.fwd.Close()
	}
	return nil
}

// start runs discovery and rate sampling; only the first config that starts
// the state does it.
func (st *state) start() {
	st.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		st.cancel = cancel
		r := &discovery.Runner{
			Source: st.source,
			Update: st.setDiscovered,
			OnFetch: func(err error) {
				if err != nil { // a good list marks readiness once it is installed
					st.markReady()
				}
			},
			OnError: func(err error) {
				st.logger.Warn("discovery failed; keeping the last good backend list unless failpolicy is setempty", zap.Error(err))
			},
		}
		fc := &fetchCounter{runner: r}
		if ph, ok := running.get(st.name); ok && ph.state != st {
			fc.base = ph.state.fetchCounts() // a changed handler keeps counting on
		}
		st.fetches.Store(fc)
		st.wg.Add(2)
		go func() { defer st.wg.Done(); r.Run(ctx) }()
		go func() { defer st.wg.Done(); st.sample(ctx) }()
	})
}

// sample keeps the per-second rates of the handler and its backends current.
func (st *state) sample(ctx context.Context) {
	t := time.NewTicker(backend.RateInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st.stats.Sample(now)
			st.refusals.flush(st.logger, now.Unix())
			st.mu.Lock()
			for _, b := range st.discovered {
				b.Stats.Sample(now)
			}
			st.mu.Unlock()
		}
	}
}

// setDiscovered installs a new discovery result. Backends keep their Stats
// across updates; a backend that leaves gets no new connections while its
// open ones continue.
func (st *state) setDiscovered(list []backend.Backend) {
	st.mu.Lock()
	next := make(map[string]*backend.Backend, len(list))
	added, removed := 0, 0
	for i := range list {
		nb := list[i]
		nb.Order = i
		addr := nb.Address()
		if _, dup := next[addr]; dup {
			continue
		}
		if old, ok := st.discovered[addr]; ok {
			if old.SameAttributes(&nb) {
				next[addr] = old
				continue
			}
			nb.Stats = old.Stats
		} else {
			nb.Stats = st.inherited[addr]
			if nb.Stats == nil {
				nb.Stats = new(backend.Stats)
			}
			added++
		}
		nb.Freeze()
		next[addr] = &nb
	}
	for addr := range st.discovered {
		if _, ok := next[addr]; !ok {
			removed++
		}
	}
	st.discovered = next
	backends := st.sortedLocked()
	st.mu.Unlock()
	if added > 0 || removed > 0 {
		st.logger.Info("backends discovered", zap.Int("count", len(backends)), zap.Int("added", added), zap.Int("removed", removed))
		st.emit("between.discovery_updated", map[string]any{"handler": st.name, "count": len(backends), "added": added, "removed": removed})
	}
	st.health.Update(checked(st.name, backends)) // maint: checks paused
	st.rebuild()
	st.markReady()
}

// markReady ends the wait of clients that arrived before the first discovery result.
func (st *state) markReady() {
	st.readyOnce.Do(func() { close(st.ready) })
}

func (st *state) sortedLocked() []*backend.Backend {
	out := make([]*backend.Backend, 0, len(st.discovered))
	for _, b := range st.discovered {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *backend.Backend) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		return strings.Compare(a.Address(), b.Address())
	})
	return out
}

// rebuild publishes a new election snapshot from discovery, health and the
// backend states (drain and maint backends get no new connections).
func (st *state) rebuild() {
	states := backendStates.of(st.name)
	st.mu.Lock()
	defer st.mu.Unlock()
	all := st.sortedLocked()
	pool := all[:0]
	for _, b := range all {
		if _, held := states[b.Address()]; !held && st.health.Healthy(b.Address()) {
			pool = append(pool, b)
		}
	}
	st.pool.Store(&pool)
}

// healthChanged is called by health checking on every transition.
func (st *state) healthChanged(addr string, healthy bool, reason string) {
	from, to, event := "up", "down", "between.backend_down"
	if healthy {
		from, to, event = "down", "up", "between.backend_up"
	}
	st.logger.Info("backend health changed", zap.String("backend", addr), zap.String("from", from), zap.String("to", to), zap.String("reason", reason))
	st.rebuild()
	st.emit(event, map[string]any{"handler": st.name, "backend": addr, "reason": reason})
}

// eventSink is one config's events app.
type eventSink struct {
	ctx caddy.Context
	app *caddyevents.App
}

// pendingEvent is an event emitted before any events app could take it.
type pendingEvent struct {
	name string
	data map[string]any
}

// maxPending bounds the events kept for the first events app.
const maxPending = 64

// emit sends a Caddy event through the newest config's events app.
func (st *state) emit(name string, data map[string]any) {
	st.evMu.Lock()
	sink := st.events
	if sink == nil {
		if len(st.pending) < maxPending {
			st.pending = append(st.pending, pendingEvent{name, data})
		}
		st.evMu.Unlock()
		return
	}
	st.evMu.Unlock()
	sink.app.Emit(sink.ctx, name, data)
}

// setEvents makes sink the destination of the state's events and sends it
// the ones that waited.
func (st *state) setEvents(sink *eventSink) {
	st.evMu.Lock()
	st.events = sink
	pending := st.pending
	st.pending = nil
	st.evMu.Unlock()
	for _, e := range pending {
		sink.app.Emit(sink.ctx, e.name, e.data)
	}
}

// awaitDiscovery waits, at most the discovery timeout, for the first
// discovery attempt after the state started.
func (st *state) awaitDiscovery() {
	select {
	case <-st.ready:
		return
	default:
	}
	t := time.NewTimer(st.firstWait)
	defer t.Stop()
	select {
	case <-st.ready:
	case <-t.C:
	}
}

// discoveredCount reports how many backends discovery currently lists.
func (st *state) discoveredCount() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.discovered)
}

// closeConnsAfter closes every open client connection after d.
func (st *state) closeConnsAfter(d time.Duration) {
	time.AfterFunc(d, func() {
		n := 0
		st.conns.Range(func(k, _ any) bool {
			k.(net.Conn).Close()
			n++
			return true
		})
		if n > 0 {
			st.logger.Info("drain timeout reached; closed remaining connections", zap.Int("connections", n))
		}
	})
}
