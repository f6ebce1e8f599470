package udpsession

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
)

// waitFor polls cond until it holds, failing the test after within.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitPackets waits for the packet counters: Serve counts a datagram after
// sending it, so its reply may be seen first.
func waitPackets(t testing.TB, ctr *Counters, in, out uint64) {
	t.Helper()
	waitFor(t, 3*time.Second, fmt.Sprintf("packets in %d out %d", in, out), func() bool {
		return ctr.PacketsIn.Load() == in && ctr.PacketsOut.Load() == out
	})
}

// fakeConn is the client side of a session in memory: the test feeds
// datagrams into in and takes replies from out. Replies are copied into
// buffers from free, which the test gives back, so a steady exchange
// allocates nothing.
type fakeConn struct {
	in     chan []byte
	out    chan []byte
	free   chan []byte
	closed chan struct{}
	once   sync.Once
	timer  *time.Timer
	fail   atomic.Bool   // Write fails
	lost   atomic.Uint64 // replies dropped for want of a free buffer
}

var errFakeWrite = errors.New("fake client write error")

func newFakeConn(n int) *fakeConn {
	c := &fakeConn{
		in: make(chan []byte, n), out: make(chan []byte, n), free: make(chan []byte, n),
		closed: make(chan struct{}), timer: time.NewTimer(time.Hour),
	}
	c.timer.Stop()
	for range n {
		c.free <- make([]byte, 2048)
	}
	return c
}

func (c *fakeConn) Read(p []byte) (int, error) {
	select {
	case d := <-c.in:
		return copy(p, d), nil
	case <-c.timer.C:
		return 0, os.ErrDeadlineExceeded
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.fail.Load() {
		return 0, errFakeWrite
	}
	select {
	case b := <-c.free:
		b = b[:cap(b)]
		n := copy(b, p)
		c.out <- b[:n]
		return n, nil
	default:
		c.lost.Add(1)
		return len(p), nil
	}
}

func (c *fakeConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		c.timer.Stop()
	} else {
		c.timer.Reset(time.Until(t))
	}
	return nil
}

func (c *fakeConn) Close() { c.once.Do(func() { close(c.closed) }) }

// send queues one client datagram.
func (c *fakeConn) send(s string) { c.in <- []byte(s) }

// recv returns the next reply, or fails the test after within.
func (c *fakeConn) recv(t testing.TB, within time.Duration) string {
	t.Helper()
	select {
	case b := <-c.out:
		s := string(b)
		c.free <- b
		return s
	case <-time.After(within):
		t.Fatalf("no reply within %s", within)
		return ""
	}
}

// tryRecv returns the next reply if one comes within d.
func (c *fakeConn) tryRecv(d time.Duration) (string, bool) {
	select {
	case b := <-c.out:
		s := string(b)
		c.free <- b
		return s, true
	case <-time.After(d):
		return "", false
	}
}

// echoServer is a UDP backend on loopback that answers each datagram with
// replies copies of it (0: a black hole).
type echoServer struct {
	conn    *net.UDPConn
	b       *backend.Backend
	replies int
	got     atomic.Int64
	record  bool
	mu      sync.Mutex
	sources map[netip.AddrPort]int // datagrams per source, when record
	done    chan struct{}
}

func startEcho(t testing.TB, replies int, record bool) *echoServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{
		conn: conn, replies: replies, record: record, done: make(chan struct{}),
		sources: make(map[netip.AddrPort]int),
	}
	e.b = newBackend(t, conn.LocalAddr().String())
	go func() {
		defer close(e.done)
		buf := make([]byte, bufSize)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if e.record {
				e.mu.Lock()
				e.sources[from]++
				e.mu.Unlock()
			}
			e.got.Add(1)
			for range e.replies {
				conn.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-e.done
	})
	return e
}

// sourceCounts returns how many datagrams came from each source, sorted.
func (e *echoServer) sourceCounts() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n []int
	for _, c := range e.sources {
		n = append(n, c)
	}
	slices.Sort(n)
	return n
}

func (e *echoServer) hasSource(a netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sources[a] > 0
}

func newBackend(t testing.TB, addr string) *backend.Backend {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend.Backend{Host: host, Port: port, Weight: 1, Priority: 1, Stats: &backend.Stats{}}
	b.Freeze()
	return b
}

// closedPort returns a backend on a loopback port nothing listens on: a
// datagram sent there comes back as ICMP port unreachable (ECONNREFUSED).
func closedPort(t testing.TB) *backend.Backend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return newBackend(t, addr)
}

var errNoBackend = errors.New("test elector: no backend")

// testElector elects round robin over pool (or as pick says), skipping
// tried backends and those reported failed.
type testElector struct {
	mu     sync.Mutex
	pool   []*backend.Backend
	pick   func(n int) int // start index of the nth election; nil = round robin
	n      int
	down   map[*backend.Backend]bool
	failed []error
	fails  []*backend.Backend
	tried  [][]*backend.Backend // a copy of tried per election that had any
}

func newElector(pool ...*backend.Backend) *testElector {
	return &testElector{pool: pool, down: make(map[*backend.Backend]bool)}
}

func (e *testElector) Elect(_ netip.AddrPort, tried []*backend.Backend) (*backend.Backend, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(tried) > 0 {
		e.tried = append(e.tried, slices.Clone(tried))
	}
	if len(e.pool) == 0 {
		return nil, errNoBackend
	}
	start := e.n
	if e.pick != nil {
		start = e.pick(e.n)
	}
	e.n++
	for i := range e.pool {
		b := e.pool[(start+i)%len(e.pool)]
		if e.down[b] || slices.Contains(tried, b) {
			continue
		}
		if b.Acquire() {
			return b, nil
		}
	}
	return nil, errNoBackend
}

func (e *testElector) Failed(b *backend.Backend, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.down[b] = true
	e.fails = append(e.fails, b)
	e.failed = append(e.failed, err)
}

func (e *testElector) setPool(pool ...*backend.Backend) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pool = pool
}

func (e *testElector) failures() ([]*backend.Backend, []error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.fails), slices.Clone(e.failed)
}

// rig is one Serve call under test.
type rig struct {
	c      *fakeConn
	el     *testElector
	ctr    *Counters
	total  *backend.Stats
	client netip.AddrPort
	done   chan error
	base   int        // goroutines before Serve
	fwd    *Forwarder // closed by stop, before the goroutine count
}

func startServe(t testing.TB, cfg *Config, el *testElector) *rig {
	t.Helper()
	r := &rig{
		c: newFakeConn(256), el: el, ctr: new(Counters), total: new(backend.Stats),
		client: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), done: make(chan error, 1),
	}
	r.start(cfg)
	return r
}

func (r *rig) start(cfg *Config) {
	r.fwd = cfg.Forwarder
	r.base = runtime.NumGoroutine()
	go func() { r.done <- Serve(r.c, r.client, cfg, r.el, r.ctr, r.total) }()
}

// exchange sends msg and waits for its echo.
func (r *rig) exchange(t testing.TB, msg string) {
	t.Helper()
	r.c.send(msg)
	if got := r.c.recv(t, 3*time.Second); got != msg {
		t.Fatalf("reply %q, want %q", got, msg)
	}
}

// wait waits for Serve to return and checks that it left nothing behind.
func (r *rig) wait(t testing.TB, within time.Duration) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(within):
		t.Fatalf("Serve did not return within %s", within)
	}
	if r.fwd != nil {
		r.fwd.Close()
	}
	r.checkClean(t)
}

// stop closes the client conn and waits for Serve.
func (r *rig) stop(t testing.TB) {
	t.Helper()
	r.c.Close()
	r.wait(t, 3*time.Second)
}

func (r *rig) checkClean(t testing.TB) {
	t.Helper()
	if n := r.ctr.Sessions.Load(); n != 0 {
		t.Errorf("Counters.Sessions = %d after Serve returned, want 0", n)
	}
	r.el.mu.Lock()
	pool := slices.Clone(r.el.pool)
	r.el.mu.Unlock()
	for _, b := range pool {
		if a := b.Stats.Active(); a != 0 {
			t.Errorf("backend %s: %d still acquired after Serve returned", b.Address(), a)
		}
	}
	waitFor(t, 3*time.Second, fmt.Sprintf("goroutines back to %d", r.base), func() bool {
		return runtime.NumGoroutine() <= r.base
	})
}

func (r *rig) returned() bool {
	select {
	case err := <-r.done:
		r.done <- err
		return true
	default:
		return false
	}
}

func msg(i int) string { return "datagram-" + strconv.Itoa(i) }

// TestServeLimits runs the combinations of max_requests and max_responses.
func TestServeLimits(t *testing.T) {
	cases := []struct {
		name     string
		cfg      Config
		replies  int // per request, by each echo backend
		backends int
		run      func(t *testing.T, r *rig, echoes []*echoServer, f *Forwarder)
	}{{
		name: "max_requests 1 forwards and drops replies", cfg: Config{MaxRequests: 1, ClientIdle: 10 * time.Second},
		replies: 1, backends: 2,
		run: func(t *testing.T, r *rig, echoes []*echoServer, f *Forwarder) {
			var bytes int64
			for i := range 10 {
				r.c.send(msg(i))
				bytes += int64(len(msg(i)))
			}
			waitFor(t, 3*time.Second, "both backends to get 5 datagrams", func() bool {
				return echoes[0].got.Load() == 5 && echoes[1].got.Load() == 5
			})
			waitFor(t, 3*time.Second, "the forwarder to drain 10 replies", func() bool { return f.drained.Load() == 10 })
			if n := len(r.c.out) + int(r.c.lost.Load()); n != 0 {
				t.Errorf("%d replies reached the client, want none", n)
			}
			waitPackets(t, r.ctr, 10, 0)
			if s := r.ctr.Sessions.Load(); s != 0 {
				t.Errorf("Sessions = %d, want 0 (fire-and-forget opens none)", s)
			}
			for _, e := range echoes {
				if st := e.b.Stats.Snapshot(); st.Total != 5 || st.Active != 0 {
					t.Errorf("backend %s: %+v, want 5 total, 0 active", e.b.Address(), st)
				}
			}
			if st := r.total.Snapshot(); st.Total != 10 || st.Tx != uint64(bytes) || st.Rx != 0 {
				t.Errorf("total %+v, want 10 total, tx %d, rx 0", st, bytes)
			}
		},
	}, {
		name: "max_requests 3 elects every 3 datagrams", cfg: Config{MaxRequests: 3, ClientIdle: 10 * time.Second},
		replies: 1, backends: 2,
		run: func(t *testing.T, r *rig, echoes []*echoServer, _ *Forwarder) {
			for i := range 9 {
				r.exchange(t, msg(i))
			}
			// round robin: sessions 1 and 3 on the first backend, 2 on the second
			if got := echoes[0].sourceCounts(); !slices.Equal(got, []int{3, 3}) {
				t.Errorf("first backend: datagrams per session %v, want [3 3]", got)
			}
			if got := echoes[1].sourceCounts(); !slices.Equal(got, []int{3}) {
				t.Errorf("second backend: datagrams per session %v, want [3]", got)
			}
			// the finished ones wait for late replies until they idle out
			if s := r.ctr.Sessions.Load(); s != 3 {
				t.Errorf("Sessions = %d, want 3", s)
			}
			if st := r.total.Snapshot(); st.Total != 3 {
				t.Errorf("total sessions %d, want 3", st.Total)
			}
		},
	}, {
		name: "max_responses 1 loses nothing of 100 back-to-back", cfg: Config{MaxResponses: 1, ClientIdle: 10 * time.Second},
		replies: 1, backends: 2,
		run: func(t *testing.T, r *rig, echoes []*echoServer, _ *Forwarder) {
			for i := range 100 {
				r.c.send(msg(i))
			}
			seen := make(map[string]bool)
			for range 100 {
				seen[r.c.recv(t, 3*time.Second)] = true
			}
			for i := range 100 {
				if !seen[msg(i)] {
					t.Errorf("no reply to %s", msg(i))
				}
			}
			waitFor(t, 3*time.Second, "every virtual session to complete", func() bool { return r.ctr.Sessions.Load() == 0 })
			waitPackets(t, r.ctr, 100, 100)
		},
	}, {
		name: "max_responses 2", cfg: Config{MaxResponses: 2, ClientIdle: 10 * time.Second},
		replies: 2, backends: 1,
		run: func(t *testing.T, r *rig, echoes []*echoServer, _ *Forwarder) {
			for i := range 5 {
				r.exchange(t, msg(i))
				if got := r.c.recv(t, 3*time.Second); got != msg(i) {
					t.Fatalf("second reply %q, want %q", got, msg(i))
				}
				waitFor(t, 3*time.Second, "the session to end after 2 replies", func() bool { return r.ctr.Sessions.Load() == 0 })
			}
			// five virtual sessions, one datagram each, on one socket
			// parked and reused
			if st := echoes[0].b.Stats.Snapshot(); st.Total != 5 || st.Active != 0 {
				t.Errorf("backend stats %+v, want 5 virtual sessions, none active", st)
			}
			if got := echoes[0].sourceCounts(); !slices.Equal(got, []int{5}) {
				t.Errorf("datagrams per socket %v, want 5 on one reused socket", got)
			}
			// back to back: every datagram gets both its replies
			for i := range 20 {
				r.c.send(msg(i))
			}
			for range 40 {
				r.c.recv(t, 3*time.Second)
			}
			waitFor(t, 3*time.Second, "every virtual session to complete", func() bool { return r.ctr.Sessions.Load() == 0 })
			if out := r.ctr.PacketsOut.Load(); out != 50 {
				t.Errorf("packets out %d, want 50", out)
			}
		},
	}, {
		name: "max_requests 2 and max_responses 1", cfg: Config{MaxRequests: 2, MaxResponses: 1, ClientIdle: 10 * time.Second},
		replies: 1, backends: 2,
		run: func(t *testing.T, r *rig, echoes []*echoServer, _ *Forwarder) {
			for i := range 10 {
				r.c.send(msg(i))
			}
			for range 10 {
				r.c.recv(t, 3*time.Second)
			}
			waitFor(t, 3*time.Second, "every virtual session to complete", func() bool { return r.ctr.Sessions.Load() == 0 })
			// sockets are reused, so sessions are counted, not sockets
			if n := r.total.Snapshot().Total; n < 5 {
				t.Errorf("%d virtual sessions for 10 datagrams, want at least 5", n)
			}
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var echoes []*echoServer
			var pool []*backend.Backend
			for range tc.backends {
				e := startEcho(t, tc.replies, true)
				echoes = append(echoes, e)
				pool = append(pool, e.b)
			}
			cfg := tc.cfg
			f := NewForwarder()
			defer f.Close()
			if cfg.MaxRequests == 1 {
				cfg.Forwarder = f
			}
			r := startServe(t, &cfg, newElector(pool...))
			tc.run(t, r, echoes, f)
			for i := range NumReasons {
				if n := r.ctr.Dropped[i].Load(); n != 0 {
					t.Errorf("dropped %d for %s", n, i)
				}
			}
			r.stop(t)
		})
	}
}

// TestServeIdleEnd: with nothing moving, Serve returns after the smaller
// non-zero idle timeout.
func TestServeIdleEnd(t *testing.T) {
	const idle = 200 * time.Millisecond
	for _, cfg := range []Config{
		{ClientIdle: idle},
		{BackendIdle: idle},
		{ClientIdle: 10 * time.Second, BackendIdle: idle},
		{ClientIdle: idle, BackendIdle: 10 * time.Second, MaxRequests: 2},
	} {
		t.Run(fmt.Sprintf("client %s backend %s", cfg.ClientIdle, cfg.BackendIdle), func(t *testing.T) {
			e := startEcho(t, 1, false)
			r := startServe(t, &cfg, newElector(e.b))
			r.exchange(t, "ping")
			start := time.Now()
			r.wait(t, idle+2*time.Second)
			if d := time.Since(start); d < idle-20*time.Millisecond {
				t.Errorf("Serve returned %s after the last datagram, before the idle timeout %s", d, idle)
			}
		})
	}
}

// TestServeIdleExtendedByActivity: a session that keeps exchanging lives
// past its idle timeout, and ends after it once quiet.
func TestServeIdleExtendedByActivity(t *testing.T) {
	const idle = 300 * time.Millisecond
	e := startEcho(t, 1, false)
	r := startServe(t, &Config{ClientIdle: idle}, newElector(e.b))
	end := time.Now().Add(3 * idle)
	for i := 0; time.Now().Before(end); i++ {
		r.exchange(t, msg(i))
		if r.returned() {
			t.Fatalf("Serve returned after %d exchanges, while active", i+1)
		}
		time.Sleep(idle / 4) // pacing the client, not waiting for a result
	}
	r.wait(t, idle+2*time.Second)
}

// TestServeSessionIdle: a virtual session that takes no more requests and
// gets no reply ends after the idle timeout, releasing its backend, while
// the client session goes on.
func TestServeSessionIdle(t *testing.T) {
	const idle = 400 * time.Millisecond
	hole, echo := startEcho(t, 0, false), startEcho(t, 1, false)
	el := newElector(hole.b, echo.b)
	el.pick = func(n int) int { return min(n, 1) } // the first session to the black hole
	r := startServe(t, &Config{MaxRequests: 2, ClientIdle: idle}, el)
	r.c.send("lost-1")
	r.c.send("lost-2")
	waitFor(t, 3*time.Second, "the black hole to get 2 datagrams", func() bool { return hole.got.Load() == 2 })
	start := time.Now()
	deadline := start.Add(3 * time.Second)
	for i := 0; hole.b.Stats.Active() != 0; i++ {
		if time.Now().After(deadline) {
			t.Fatal("the silent virtual session did not idle out")
		}
		r.exchange(t, msg(i))
		time.Sleep(idle / 8) // pacing the client
	}
	if d := time.Since(start); d < idle-50*time.Millisecond {
		t.Errorf("the silent session ended %s after its last datagram, before the idle timeout %s", d, idle)
	}
	if r.returned() {
		t.Fatal("Serve returned while the client was active")
	}
	r.stop(t)
}

// TestServeBackendDown: a backend whose port is closed answers with ICMP
// port unreachable; Failed is called with ECONNREFUSED and datagrams go
// elsewhere.
func TestServeBackendDown(t *testing.T) {
	for _, maxRequests := range []int{0, 1} {
		t.Run(fmt.Sprintf("max_requests %d", maxRequests), func(t *testing.T) {
			down, echo := closedPort(t), startEcho(t, 1, false)
			el := newElector(down, echo.b)
			cfg := &Config{MaxRequests: maxRequests, ClientIdle: 10 * time.Second}
			if maxRequests == 1 {
				cfg.Forwarder = NewForwarder()
			}
			r := startServe(t, cfg, el)
			deadline := time.Now().Add(5 * time.Second)
			for i := 0; ; i++ {
				if time.Now().After(deadline) {
					t.Fatal("no datagram reached the live backend")
				}
				r.c.send(msg(i))
				fails, _ := el.failures()
				if maxRequests == 1 && len(fails) > 0 && echo.got.Load() > 0 {
					break
				}
				if maxRequests != 1 {
					if _, ok := r.c.tryRecv(200 * time.Millisecond); ok {
						break
					}
				} else {
					time.Sleep(20 * time.Millisecond) // pacing: the refusal comes back asynchronously
				}
			}
			waitFor(t, 3*time.Second, "Failed to be called", func() bool { f, _ := el.failures(); return len(f) > 0 })
			fails, errs := el.failures()
			if fails[0] != down || !errors.Is(errs[0], syscall.ECONNREFUSED) {
				t.Errorf("Failed(%s, %v), want %s and ECONNREFUSED", fails[0].Address(), errs[0], down.Address())
			}
			waitFor(t, 3*time.Second, "the refused backend to be released", func() bool { return down.Stats.Active() == 0 })
			r.stop(t)
		})
	}
}

// TestServeDialFailure: a backend that cannot be dialled is reported, and
// the datagram is sent to another one; with none left it is dropped.
func TestServeDialFailure(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxRequests int
		transparent bool
	}{
		{"max_requests 0", 0, false},
		{"max_requests 1", 1, false},
		{"max_requests 1 transparent", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.transparent {
				if err := CheckTransparent(); err != nil {
					t.Skipf("transparent sockets: %v", err)
				}
			}
			echo := startEcho(t, 1, false)
			bad := &backend.Backend{Host: "127.0.0.1", Port: "99999", Weight: 1, Priority: 1, Stats: &backend.Stats{}}
			bad.Freeze()
			newCfg := func() *Config {
				cfg := &Config{MaxRequests: tc.maxRequests, ClientIdle: 10 * time.Second, Transparent: tc.transparent}
				if tc.maxRequests == 1 && !tc.transparent {
					cfg.Forwarder = NewForwarder()
				}
				return cfg
			}
			el := newElector(bad, echo.b)
			r := startServe(t, newCfg(), el)
			r.c.send("first")
			if tc.maxRequests == 0 {
				if got := r.c.recv(t, 3*time.Second); got != "first" {
					t.Fatalf("reply %q", got)
				}
			}
			waitFor(t, 3*time.Second, "the live backend to get the datagram", func() bool { return echo.got.Load() == 1 })
			fails, _ := el.failures()
			if len(fails) != 1 || fails[0] != bad {
				t.Errorf("Failed called for %v, want once for %s", fails, bad.Address())
			}
			el.mu.Lock()
			tried := slices.Clone(el.tried)
			el.mu.Unlock()
			if len(tried) != 1 || !slices.Equal(tried[0], []*backend.Backend{bad}) {
				t.Errorf("Elect got tried %v, want [[%s]]", tried, bad.Address())
			}
			if bad.Stats.Active() != 0 {
				t.Error("the failed backend was not released")
			}
			if r.ctr.Dropped[SendError].Load() != 0 {
				t.Error("the datagram was dropped")
			}
			r.stop(t)

			// only the bad backend: the datagram is dropped as a send error
			r = startServe(t, newCfg(), newElector(bad))
			r.c.send("second")
			waitFor(t, 3*time.Second, "a send_error drop", func() bool { return r.ctr.Dropped[SendError].Load() == 1 })
			r.stop(t)
		})
	}
}

// TestServeNoBackend: with no backend the datagram is dropped and counted,
// and the client session stays open for the next one.
func TestServeNoBackend(t *testing.T) {
	echo := startEcho(t, 1, false)
	el := newElector()
	r := startServe(t, &Config{ClientIdle: 10 * time.Second}, el)
	r.c.send("dropped")
	waitFor(t, 3*time.Second, "a no_backend drop", func() bool { return r.ctr.Dropped[NoBackend].Load() == 1 })
	el.setPool(echo.b)
	r.exchange(t, "served")
	r.stop(t)
}

// TestServeStats: bytes and packets are counted on the backend, the total
// and the counters.
func TestServeStats(t *testing.T) {
	echo := startEcho(t, 1, false)
	r := startServe(t, &Config{ClientIdle: 10 * time.Second}, newElector(echo.b))
	for _, m := range []string{"a", "bb", "ccc"} {
		r.exchange(t, m)
	}
	waitPackets(t, r.ctr, 3, 3)
	for _, st := range []backend.Snapshot{echo.b.Stats.Snapshot(), r.total.Snapshot()} {
		if st.Total != 1 || st.Tx != 6 || st.Rx != 6 {
			t.Errorf("stats %+v, want 1 total, tx 6, rx 6", st)
		}
	}
	if s := r.ctr.Sessions.Load(); s != 1 {
		t.Errorf("Sessions = %d, want 1", s)
	}
	r.stop(t)
}

// TestServeClientGone: a reply that cannot be written to the client is
// counted as client_write_error.
func TestServeClientGone(t *testing.T) {
	echo := startEcho(t, 1, false)
	r := startServe(t, &Config{ClientIdle: 10 * time.Second}, newElector(echo.b))
	r.c.fail.Store(true)
	r.c.send("x")
	waitFor(t, 3*time.Second, "a client_write_error drop", func() bool { return r.ctr.Dropped[ClientGone].Load() == 1 })
	if out := r.ctr.PacketsOut.Load(); out != 0 {
		t.Errorf("packets out %d, want 0", out)
	}
	r.stop(t)
}

// TestServeCloseReleasesEverything: closing the client conn ends Serve even
// with virtual sessions waiting for replies and no idle timeout.
func TestServeCloseReleasesEverything(t *testing.T) {
	a, b := startEcho(t, 0, false), startEcho(t, 0, false)
	r := startServe(t, &Config{MaxRequests: 2}, newElector(a.b, b.b))
	for i := range 4 {
		r.c.send(msg(i))
	}
	waitFor(t, 3*time.Second, "two virtual sessions", func() bool { return a.got.Load() == 2 && b.got.Load() == 2 })
	if s := r.ctr.Sessions.Load(); s != 2 {
		t.Errorf("Sessions = %d, want 2", s)
	}
	r.stop(t)
}

// TestServeNeedsForwarder: fire-and-forget without a Forwarder is a
// configuration error.
func TestServeNeedsForwarder(t *testing.T) {
	err := Serve(newFakeConn(1), netip.AddrPort{}, &Config{MaxRequests: 1}, newElector(), new(Counters), new(backend.Stats))
	if !errors.Is(err, errNoForwarder) {
		t.Fatalf("Serve = %v, want errNoForwarder", err)
	}
}

// TestServeTransparent: backends see the client's own address.
func TestServeTransparent(t *testing.T) {
	if err := CheckTransparent(); err != nil {
		t.Skipf("transparent sockets: %v", err)
	}
	for _, maxRequests := range []int{0, 1} {
		t.Run(fmt.Sprintf("max_requests %d", maxRequests), func(t *testing.T) {
			echo := startEcho(t, 1, true)
			r := &rig{
				c: newFakeConn(16), el: newElector(echo.b), ctr: new(Counters), total: new(backend.Stats),
				client: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), done: make(chan error, 1),
			}
			r.start(&Config{MaxRequests: maxRequests, ClientIdle: 10 * time.Second, Transparent: true, DialTimeout: time.Second})
			if maxRequests == 0 {
				r.exchange(t, "hello") // the reply reaches the socket bound to the client's address
			} else {
				r.c.send("hello")
			}
			waitFor(t, 3*time.Second, "the backend to see the client's address", func() bool { return echo.hasSource(r.client) })
			r.stop(t)
		})
	}
}

// freePort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func TestConfigIdle(t *testing.T) {
	for _, tc := range []struct{ client, backend, want time.Duration }{
		{0, 0, 0}, {time.Second, 0, time.Second}, {0, time.Second, time.Second},
		{time.Second, 2 * time.Second, time.Second}, {3 * time.Second, 2 * time.Second, 2 * time.Second},
	} {
		cfg := Config{ClientIdle: tc.client, BackendIdle: tc.backend}
		if got := cfg.idle(); got != tc.want {
			t.Errorf("idle(client %s, backend %s) = %s, want %s", tc.client, tc.backend, got, tc.want)
		}
	}
}

func TestReasonString(t *testing.T) {
	want := []string{"no_backend", "send_error", "max_sessions", "refused", "client_write_error"}
	for r := range NumReasons {
		if r.String() != want[r] {
			t.Errorf("Reason(%d) = %q, want %q", r, r.String(), want[r])
		}
	}
	if s := NumReasons.String(); s != "reason(5)" {
		t.Errorf("out of range: %q", s)
	}
}

// TestServeZeroAlloc: once a virtual session is open, relaying a request
// and its reply allocates nothing.
func TestServeZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race")
	}
	echo := startEcho(t, 1, false)
	r := startServe(t, &Config{ClientIdle: time.Minute}, newElector(echo.b))
	req := []byte("a request of some size, like a DNS query")
	exchange := func() {
		r.c.in <- req
		b := <-r.c.out
		r.c.free <- b
	}
	for range 10 {
		exchange() // the session opens and the buffers are taken
	}
	if a := testing.AllocsPerRun(1000, exchange); a != 0 {
		t.Errorf("%v allocations per request and reply", a)
	}
	r.stop(t)
}

// TestServeReuseParked: with max_responses 1 every datagram is a virtual
// session of its own, but a completed one parks its socket and the next
// session to the same backend reuses it: 50 sequential requests over 2
// backends open 2 sockets, count 50 sessions, and hold no backend between
// requests.
func TestServeReuseParked(t *testing.T) {
	a, b := startEcho(t, 1, true), startEcho(t, 1, true)
	a.b.MaxConnections, b.b.MaxConnections = 1, 1 // parked sockets must not hold them
	r := startServe(t, &Config{MaxResponses: 1, ClientIdle: 10 * time.Second}, newElector(a.b, b.b))
	for i := range 50 {
		r.exchange(t, msg(i))
		waitFor(t, 3*time.Second, "the session to park", func() bool {
			return r.ctr.Sessions.Load() == 0 && a.b.Stats.Active() == 0 && b.b.Stats.Active() == 0
		})
	}
	for _, e := range []*echoServer{a, b} {
		if got := e.sourceCounts(); !slices.Equal(got, []int{25}) {
			t.Errorf("backend %s: datagrams per socket %v, want 25 on one socket", e.b.Address(), got)
		}
		if st := e.b.Stats.Snapshot(); st.Total != 25 || st.Tx != st.Rx {
			t.Errorf("backend %s: %+v, want 25 virtual sessions, tx = rx", e.b.Address(), st)
		}
	}
	if st := r.total.Snapshot(); st.Total != 50 {
		t.Errorf("total sessions %d, want 50", st.Total)
	}
	waitPackets(t, r.ctr, 50, 50)
	r.stop(t)
}

// TestServeReuseRetired: max_requests 2 with max_responses 1 parks a
// session once it took 2 requests and relayed both replies; back to back,
// with sockets parked and reused, every request gets exactly its reply.
func TestServeReuseRetired(t *testing.T) {
	var pool []*backend.Backend
	for range 3 {
		pool = append(pool, startEcho(t, 1, false).b)
	}
	r := startServe(t, &Config{MaxRequests: 2, MaxResponses: 1, ClientIdle: 10 * time.Second}, newElector(pool...))
	for round := range 4 {
		const n = 50
		for i := range n {
			r.c.send(msg(round*n + i))
		}
		seen := make(map[string]int)
		for range n {
			seen[r.c.recv(t, 3*time.Second)]++
		}
		for i := range n {
			if c := seen[msg(round*n+i)]; c != 1 {
				t.Errorf("%d replies to %s, want 1", c, msg(round*n+i))
			}
		}
		waitFor(t, 3*time.Second, "every session to park", func() bool { return r.ctr.Sessions.Load() == 0 })
	}
	if _, ok := r.c.tryRecv(50 * time.Millisecond); ok {
		t.Error("a reply too many")
	}
	if n := r.total.Snapshot().Total; n < 100 {
		t.Errorf("%d virtual sessions for 200 datagrams, want at least 100", n)
	}
	r.stop(t)
}

// TestServeParkedStraggler: a backend that answers twice with max_responses
// 1: the second reply arrives while the socket is parked and is discarded,
// so the reply to the next request on the reused socket is its own.
func TestServeParkedStraggler(t *testing.T) {
	e := startEcho(t, 2, true)
	r := startServe(t, &Config{MaxResponses: 1, ClientIdle: 10 * time.Second}, newElector(e.b))
	for i := range 10 {
		r.exchange(t, msg(i))
		// pacing: the second copy reaches the parked socket meanwhile
		time.Sleep(20 * time.Millisecond)
	}
	if got, ok := r.c.tryRecv(100 * time.Millisecond); ok {
		t.Errorf("a late reply %q reached the client", got)
	}
	if got := e.sourceCounts(); !slices.Equal(got, []int{10}) {
		t.Errorf("datagrams per socket %v, want 10 on one reused socket", got)
	}
	waitPackets(t, r.ctr, 10, 10)
	if st := e.b.Stats.Snapshot(); st.Rx != st.Tx {
		t.Errorf("stats %+v: discarded replies counted as relayed", st)
	}
	r.stop(t)
}

// settleGoroutines waits until the goroutine count held still for a while:
// the goroutines of earlier tests (echo servers) may still be on their way
// out when the next one counts its baseline.
func settleGoroutines(t *testing.T) {
	t.Helper()
	n, since := runtime.NumGoroutine(), time.Now()
	for deadline := time.Now().Add(3 * time.Second); time.Since(since) < 100*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("the goroutine count does not settle")
		}
		time.Sleep(5 * time.Millisecond)
		if m := runtime.NumGoroutine(); m != n {
			n, since = m, time.Now()
		}
	}
}

// goroutinesAt waits for the goroutine count to be n.
func goroutinesAt(t *testing.T, n int, what string) {
	t.Helper()
	waitFor(t, 3*time.Second, fmt.Sprintf("%d goroutines (%s)", n, what), func() bool { return runtime.NumGoroutine() == n })
}

// TestServeParkedEviction: a client session parks at most maxParked
// sockets; parking one more closes the oldest.
func TestServeParkedEviction(t *testing.T) {
	const n = maxParked + 2
	var echoes []*echoServer
	var pool []*backend.Backend
	for range n {
		e := startEcho(t, 1, true)
		echoes = append(echoes, e)
		pool = append(pool, e.b)
	}
	settleGoroutines(t)
	el := newElector(pool...)
	var order []int // the backend of each election
	el.pick = func(k int) int { return order[k] }
	for i := range n {
		order = append(order, i) // one session to each: 0 and 1 are evicted
	}
	for i := n - 1; i >= 2; i-- {
		order = append(order, i) // the parked ones, newest first: all reused
	}
	order = append(order, 0, 1) // evicted: new sockets
	r := startServe(t, &Config{MaxResponses: 1, ClientIdle: 10 * time.Second}, el)
	for i := range n {
		r.exchange(t, msg(i))
	}
	goroutinesAt(t, r.base+1+maxParked, "Serve and the parked readers")
	for i := n; i < len(order); i++ {
		r.exchange(t, msg(i))
	}
	for i, e := range echoes {
		want := []int{2}
		if i < 2 {
			want = []int{1, 1}
		}
		if got := e.sourceCounts(); !slices.Equal(got, want) {
			t.Errorf("backend %d: datagrams per socket %v, want %v", i, got, want)
		}
	}
	goroutinesAt(t, r.base+1+maxParked, "Serve and the parked readers")
	if st := r.total.Snapshot(); st.Total != uint64(len(order)) {
		t.Errorf("total sessions %d, want %d", st.Total, len(order))
	}
	r.stop(t)
}

// TestServeParkedIdle: a parked socket closes after the idle timeout while
// the client session goes on; the next session to its backend opens a new
// one.
func TestServeParkedIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	settleGoroutines(t)
	a, b := startEcho(t, 1, true), startEcho(t, 1, true)
	el := newElector(a.b, b.b)
	el.pick = func(k int) int {
		if k == 0 || k == 12 {
			return 0 // a, then a again once its socket idled out
		}
		return 1
	}
	r := startServe(t, &Config{MaxResponses: 1, ClientIdle: idle}, el)
	r.exchange(t, "to a")
	r.exchange(t, "to b")
	goroutinesAt(t, r.base+3, "Serve and two parked readers")
	parkedAt := time.Now()
	for i := range 10 { // b stays busy for about 2.5 idle timeouts
		time.Sleep(idle / 4) // pacing the client
		r.exchange(t, msg(i))
		if n := runtime.NumGoroutine(); time.Since(parkedAt) < idle-50*time.Millisecond && n != r.base+3 {
			t.Errorf("%d goroutines %s after a parked, before its idle timeout, want %d", n, time.Since(parkedAt), r.base+3)
		}
	}
	goroutinesAt(t, r.base+2, "a's parked socket closed as idle")
	r.exchange(t, "to a again")
	if got := a.sourceCounts(); !slices.Equal(got, []int{1, 1}) {
		t.Errorf("a: datagrams per socket %v, want a new socket after the idle close", got)
	}
	if got := b.sourceCounts(); !slices.Equal(got, []int{11}) {
		t.Errorf("b: datagrams per socket %v, want 11 on one reused socket", got)
	}
	if r.returned() {
		t.Fatal("Serve returned while the client was active")
	}
	r.wait(t, idle+2*time.Second) // the client goes quiet: everything closes
}

// TestServeLinger: with Linger, a client session whose virtual sessions
// all completed ends after Linger without a datagram, long before the idle
// timeout; one still waiting for a reply, or one without max_responses
// (nothing ever completes), lasts until the idle timeout.
func TestServeLinger(t *testing.T) {
	const linger, idle = 150 * time.Millisecond, 1200 * time.Millisecond
	for _, tc := range []struct {
		name    string
		cfg     Config
		replies int
		early   bool // ends after linger, not idle
	}{
		{"completed", Config{MaxResponses: 1, ClientIdle: idle, Linger: linger}, 1, true},
		{"fire and forget", Config{MaxRequests: 1, ClientIdle: idle, Linger: linger}, 1, true},
		{"reply pending", Config{MaxResponses: 1, ClientIdle: idle, Linger: linger}, 0, false},
		{"no max_responses", Config{ClientIdle: idle, Linger: linger}, 1, false},
		{"no linger", Config{MaxResponses: 1, ClientIdle: idle}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEcho(t, tc.replies, false)
			cfg := tc.cfg
			if cfg.MaxRequests == 1 {
				cfg.Forwarder = NewForwarder()
			}
			r := startServe(t, &cfg, newElector(e.b))
			if tc.replies > 0 && cfg.MaxRequests != 1 {
				r.exchange(t, "ping")
			} else {
				r.c.send("ping")
				waitFor(t, 3*time.Second, "the backend to get the datagram", func() bool { return e.got.Load() == 1 })
			}
			start := time.Now()
			if tc.early {
				r.wait(t, idle-200*time.Millisecond)
				return
			}
			r.wait(t, idle+2*time.Second)
			if d := time.Since(start); d < idle-200*time.Millisecond {
				t.Fatalf("Serve returned %s after the last datagram: before the idle timeout %s", d, idle)
			}
		})
	}
}
