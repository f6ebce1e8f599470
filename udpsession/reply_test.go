package udpsession

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
)

// funcConn is a fakeConn that also is a FuncReader, as a between+udp conn is:
// Serve reads it without a buffer of its own.
type funcConn struct{ *fakeConn }

func (c funcConn) ReadFunc(fn func(p []byte)) error {
	select {
	case d := <-c.in:
		fn(d)
		return nil
	case <-c.timer.C:
		return os.ErrDeadlineExceeded
	case <-c.closed:
		return net.ErrClosed
	}
}

// startServeFunc is startServe with the client conn read through FuncReader.
func startServeFunc(t testing.TB, cfg *Config, el *testElector) *rig {
	t.Helper()
	r := &rig{
		c: newFakeConn(256), el: el, ctr: new(Counters), total: new(backend.Stats),
		client: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), done: make(chan error, 1),
	}
	r.fwd = cfg.Forwarder
	r.base = runtime.NumGoroutine()
	go func() { r.done <- Serve(funcConn{r.c}, r.client, cfg, r.el, r.ctr, r.total) }()
	return r
}

// TestServeFuncReader: through FuncReader, requests are relayed, virtual
// sessions end on their limits, the client session ends when idle, and
// relaying allocates nothing.
func TestServeFuncReader(t *testing.T) {
	echo := startEcho(t, 1, false)
	r := startServeFunc(t, &Config{MaxResponses: 1, ClientIdle: 200 * time.Millisecond}, newElector(echo.b))
	for i := range 20 {
		r.exchange(t, msg(i))
	}
	waitPackets(t, r.ctr, 20, 20)
	if n := echo.b.Stats.Snapshot().Total; n != 20 {
		t.Errorf("%d virtual sessions, want 20 (max_responses 1)", n)
	}
	if !raceEnabled {
		req := []byte("a request of some size, like a DNS query")
		if a := testing.AllocsPerRun(500, func() {
			r.c.in <- req
			r.c.free <- <-r.c.out
		}); a != 0 {
			t.Errorf("%v allocations per request and reply", a)
		}
	}
	r.wait(t, 3*time.Second) // idle end
}

// TestReplyReader: the reply reader returns each datagram whole, honours
// the conn's read deadline (also when moved while it waits), reports a
// refused send (ICMP port unreachable) and returns net.ErrClosed once the
// conn is closed.
func TestReplyReader(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	conn, err := net.DialUDP("udp", nil, be.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	rr, err := newReplyReader(conn)
	if err != nil {
		t.Fatal(err)
	}

	// A datagram, whole, of each size.
	for _, size := range []int{0, 1, 1400, 65507} {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(i)
		}
		if _, err := be.WriteToUDP(p, conn.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		bp, n, err := rr.next()
		if err != nil || n != size || string((*bp)[:n]) != string(p) {
			t.Fatalf("size %d: got %d bytes, %v", size, n, err)
		}
		bufPool.Put(bp)
	}

	// The deadline.
	conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, _, err := rr.next(); !isTimeout(err) {
		t.Fatalf("past the deadline: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Errorf("deadline fired after %s", d)
	}
	// A deadline moved while waiting applies.
	conn.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		bp, _, err := rr.next()
		if bp != nil {
			bufPool.Put(bp)
		}
		errc <- err
	}()
	time.Sleep(30 * time.Millisecond)
	conn.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	select {
	case err := <-errc:
		if !isTimeout(err) {
			t.Fatalf("after a moved deadline: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a deadline set while waiting did not apply")
	}
	conn.SetReadDeadline(time.Time{})

	// Close wakes a waiting reader with net.ErrClosed.
	go func() {
		_, _, err := rr.next()
		errc <- err
	}()
	time.Sleep(30 * time.Millisecond)
	conn.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not wake the reader")
	}

	// A send to a closed port comes back as ECONNREFUSED.
	dead := closedPort(t)
	conn, err = net.DialUDP("udp", nil, dead.UDPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if rr, err = newReplyReader(conn); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	conn.Write([]byte("anyone?"))
	if _, _, err := rr.next(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("send to a closed port: %v, want ECONNREFUSED", err)
	}
}

// TestServeIdleMemory: a client session read through FuncReader whose
// virtual session completed (max_responses 1, its socket parked) holds no
// datagram buffer: what n idle sessions add to the heap and the stacks,
// goroutines included, stays far below one 64 KiB buffer each (it was two
// of them, 128 KiB, before reads waited without one).
func TestServeIdleMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes memory use; run without -race")
	}
	const n = 200
	echo := startEcho(t, 1, false)
	el := newElector(echo.b)
	cfg := &Config{MaxResponses: 1, ClientIdle: time.Minute}
	conns := make([]*fakeConn, n)
	for i := range conns {
		conns[i] = newFakeConn(1)
	}
	before := heapAndStacks()
	base := runtime.NumGoroutine()
	done := make(chan error, n)
	for i, c := range conns {
		client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+i))
		go func() { done <- Serve(funcConn{c}, client, cfg, el, new(Counters), new(backend.Stats)) }()
		c.send("query")
		if got := c.recv(t, 3*time.Second); got != "query" {
			t.Fatalf("reply %q", got)
		}
	}
	// Every reader is parked again (no buffer taken).
	time.Sleep(50 * time.Millisecond)
	after := heapAndStacks()
	per := (int64(after) - int64(before)) / n
	t.Logf("%d idle sessions: %d goroutines, %d bytes each (heap in use + stacks)", n, runtime.NumGoroutine()-base, per)
	if per > maxIdleSessionBytes {
		t.Errorf("%d bytes per idle session, want at most %d", per, maxIdleSessionBytes)
	}
	for _, c := range conns {
		c.Close()
	}
	for range n {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// maxIdleSessionBytes bounds TestServeIdleMemory: two goroutines (Serve's
// and the parked reader's, 8 KiB of stack each at most here), the session,
// virtual session and socket structures. Holding a 64 KiB buffer would fail.
const maxIdleSessionBytes = 24 << 10

// heapAndStacks returns the bytes in use on the heap and the goroutine
// stacks, after two collections (the second empties sync.Pool's victims).
func heapAndStacks() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
