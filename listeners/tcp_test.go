package listeners

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// freePort returns a port that was free on host a moment ago.
func freePort(t testing.TB, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// open returns a virtual listener on host:port through the registered
// ListenerFunc and closes it at the end of the test.
func open(t testing.TB, host, port string) *listener {
	t.Helper()
	return openOn(t, tcpKind, host, port)
}

// echoOne reads one byte from c, writes it back and closes c.
func echoOne(c net.Conn) {
	defer c.Close()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err == nil {
		_, _ = c.Write(b[:])
	}
}

// roundTrip dials addr, sends one byte and expects it back.
func roundTrip(addr string, b byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{b}); err != nil {
		return err
	}
	var got [1]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return err
	}
	if got[0] != b {
		return fmt.Errorf("echo: got %d, want %d", got[0], b)
	}
	return nil
}

func TestRegistered(t *testing.T) {
	checkRegistered(t, tcpKind)
}

func TestIsNetworkTCP(t *testing.T) {
	checkIsNetwork(t, "IsNetworkTCP", IsNetworkTCP, []networkCase{
		{"between+tcp/:6380", true},
		{"between+tcp/[::1]:80", true},
		{"BETWEEN+TCP/127.0.0.1:80-90", true},
		{" between+tcp /:80", true},
		{":6380", false},
		{"tcp/:6380", false},
		{"between+udp/:53", false},
		{"unix//run/between+tcp/x.sock", false},
		{"between+tcp", false},
	})
}

func TestResolvePort(t *testing.T) {
	for _, tc := range []struct {
		portRange string
		offset    uint
		want      uint16
		wantErr   bool
	}{
		{"6380", 0, 6380, false},
		{"0", 0, 0, false},
		{"65535", 0, 65535, false},
		{"80-82", 0, 80, false},
		{"80-82", 2, 82, false},
		{"80-82", 3, 0, true},
		{"80", 1, 0, true},
		{"", 0, 0, true},
		{"http", 0, 0, true},
		{"65536", 0, 0, true},
		{"-1", 0, 0, true},
		{"90-80", 0, 0, true},
		{"80-", 0, 0, true},
	} {
		got, err := resolvePort(tc.portRange, tc.offset)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("resolvePort(%q, %d) = %d, %v; want %d, error %v", tc.portRange, tc.offset, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestListenRejectsBadAddresses(t *testing.T) {
	checkListenRejects(t, tcpKind, []badAddr{
		{"127.0.0.1", ""},
		{"127.0.0.1", "http"},
		{"192.0.2.1", "6380"}, // TEST-NET-1: not a local address
	}, nil)
}

// TestQueuedConnsMoveToNewListener: connections queued on A while it is the
// newest listener are accepted by B once B registers and A closes.
func TestQueuedConnsMoveToNewListener(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	a := open(t, "127.0.0.1", port)
	addr := a.Addr().String()

	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- roundTrip(addr, byte(i)) }()
	}
	// All of them reach A's queue (nobody accepts on A).
	waitFor(t, 10*time.Second, "connections queued on A", func() bool { return len(a.queue) == n })

	b := open(t, "127.0.0.1", port)
	if b.Addr().String() != addr {
		t.Fatalf("B.Addr() = %v, want %v (the shared socket)", b.Addr(), addr)
	}
	go func() {
		for {
			c, err := b.Accept()
			if err != nil {
				return
			}
			go echoOne(c)
		}
	}()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on closed A: %v, want net.ErrClosed", err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestNewestListenerGetsConns: with several open listeners the newest gets
// each connection; when it closes, the newest remaining one does.
func TestNewestListenerGetsConns(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	ls := []*listener{open(t, "127.0.0.1", port), open(t, "127.0.0.1", port), open(t, "127.0.0.1", port)}
	addr := ls[0].Addr().String()
	for _, want := range []int{2, 1, 0} {
		if want < 2 {
			ls[want+1].Close()
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the connection to be dispatched", func() bool {
			return len(ls[0].queue)+len(ls[1].queue)+len(ls[2].queue) == 1
		})
		if len(ls[want].queue) != 1 {
			t.Fatalf("connection went to listener %d's queue sizes %d %d %d, want listener %d",
				want, len(ls[0].queue), len(ls[1].queue), len(ls[2].queue), want)
		}
		got, err := ls[want].Accept()
		if err != nil {
			t.Fatal(err)
		}
		got.Close()
		c.Close()
	}
}

// TestReloadLoop simulates config reloads: two virtual listeners alternate
// 50 times while clients keep connecting. Before each switch the current
// listener stops accepting until connections are queued on it, so every
// switch has queued connections to hand over. Every connection must be served.
func TestReloadLoop(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	const (
		reloads  = 50
		minConns = 2000
		clients  = 4
	)

	var served, handedOver atomic.Int64
	type server struct {
		l      *listener
		paused atomic.Bool
		done   chan struct{}
	}
	start := func() *server {
		s := &server{l: open(t, "127.0.0.1", port), done: make(chan struct{})}
		go func() {
			defer close(s.done)
			for !s.paused.Load() {
				c, err := s.l.Accept()
				if err != nil {
					return
				}
				if _, ok := c.(*net.TCPConn); !ok {
					t.Errorf("accepted %T, want *net.TCPConn", c)
				}
				served.Add(1)
				go echoOne(c)
			}
		}()
		return s
	}

	cur := start()
	addr := cur.l.Addr().String()

	var (
		reloadsDone atomic.Bool
		dialed      atomic.Int64
		failed      atomic.Int64
		wg          sync.WaitGroup
		firstErr    sync.Once
	)
	for range clients {
		wg.Go(func() {
			for i := 0; dialed.Load() < minConns || !reloadsDone.Load(); i++ {
				dialed.Add(1)
				if err := roundTrip(addr, byte(i)); err != nil {
					failed.Add(1)
					firstErr.Do(func() { t.Errorf("client: %v", err) })
				}
			}
		})
	}
	clientsDone := make(chan struct{})
	go func() { wg.Wait(); close(clientsDone) }()

	for range reloads {
		cur.paused.Store(true)
		waitFor(t, 10*time.Second, "a connection queued on the old listener", func() bool {
			select {
			case <-clientsDone:
				return true
			default:
				return len(cur.l.queue) > 0
			}
		})
		next := start()
		handedOver.Add(int64(len(cur.l.queue)))
		if err := cur.l.Close(); err != nil {
			t.Fatal(err)
		}
		<-cur.done
		cur = next
	}
	reloadsDone.Store(true)
	<-clientsDone
	if err := cur.l.Close(); err != nil {
		t.Fatal(err)
	}
	<-cur.done

	if failed.Load() != 0 || served.Load() != dialed.Load() {
		t.Fatalf("%d connections dialed, %d served, %d failed", dialed.Load(), served.Load(), failed.Load())
	}
	t.Logf("%d connections over %d reloads, all served; at least %d were queued on a closing listener", dialed.Load(), reloads, handedOver.Load())
}

// TestAcceptedConnIsTCPConn: the consumer gets the *net.TCPConn itself (so
// it can splice), on IPv4 and IPv6.
func TestAcceptedConnIsTCPConn(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			if host == "::1" {
				if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
					t.Skipf("cannot bind ::1: %v", err)
				} else {
					ln.Close()
				}
			}
			l := open(t, host, freePort(t, host))
			ta := l.Addr().(*net.TCPAddr)
			if !ta.IP.Equal(net.ParseIP(host)) {
				t.Fatalf("Addr() = %v, want host %s", ta, host)
			}
			errc := make(chan error, 1)
			go func() { errc <- roundTrip(l.Addr().String(), 7) }()
			c, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := c.(*net.TCPConn); !ok {
				t.Fatalf("accepted %T, want *net.TCPConn", c)
			}
			// keepalive is off by default (the between handler may turn it on)
			if ka := keepaliveOf(t, c.(*net.TCPConn)); ka != 0 {
				t.Errorf("SO_KEEPALIVE = %d on an accepted connection, want 0", ka)
			}
			echoOne(c)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// keepaliveOf returns c's SO_KEEPALIVE option.
func keepaliveOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = getsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestLastCloseClosesSocket: the socket stays while any listener is open;
// closing the last one closes it (dials are refused), drops the registry
// entry and ends the accept goroutine.
func TestLastCloseClosesSocket(t *testing.T) {
	baseline := runtime.NumGoroutine()
	port := freePort(t, "127.0.0.1")
	a := open(t, "127.0.0.1", port)
	b := open(t, "127.0.0.1", port)
	addr := a.Addr().String()

	// A connection left queued when the last listener closes is closed
	// (not leaked).
	queued, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	waitFor(t, 5*time.Second, "the connection queued on B", func() bool { return len(b.queue) == 1 })

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("dial with one listener left: %v", err)
	} else {
		c.Close()
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	_ = queued.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := queued.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a connection queued at last close: %v, want EOF or reset", err)
	}
	if _, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after last close: %v, want connection refused", err)
	}
	registry.Lock()
	_, stillThere := registry.sockets[addr]
	registry.Unlock()
	if stillThere {
		t.Fatal("socket still in the registry after the last close")
	}
	waitFor(t, 5*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline })

	// The address can be listened on again: a fresh socket.
	c := open(t, "127.0.0.1", port)
	if c.sock == a.sock {
		t.Fatal("a closed socket was reused")
	}
}

// TestCloseIdempotentAndAccept: Close twice is fine; a blocked Accept is
// released by Close and any later Accept returns net.ErrClosed.
func TestCloseIdempotentAndAccept(t *testing.T) {
	checkCloseIdempotentAndAccept(t, tcpKind, func(other bool) string {
		if other {
			return "not last"
		}
		return "last"
	})
}

// TestPortZeroNotShared: port 0 binds a fresh socket per call.
func TestPortZeroNotShared(t *testing.T) {
	checkPortZeroNotShared(t, tcpKind)
}

// TestThroughCaddy: a "between+tcp/…" address listened on through Caddy's
// NetworkAddress gives this package's listener, shared per address.
func TestThroughCaddy(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()

	port := freePort(t, "127.0.0.1")
	got := listenTwiceThroughCaddy(t, tcpKind, ctx, port, nil)

	errc := make(chan error, 1)
	go func() { errc <- roundTrip(got[0].Addr().String(), 1) }()
	c, err := got[1].Accept()
	if err != nil {
		t.Fatal(err)
	}
	echoOne(c)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// Cancelling the config's context closes its listeners (a config whose
	// start failed is cancelled without Close): Accept ends with
	// net.ErrClosed, and with no listener left the socket is closed.
	cancel()
	deadline := time.Now().Add(3 * time.Second)
	for _, l := range got {
		_, err := l.Accept()
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after the context ended: %v, want net.ErrClosed", err)
		}
	}
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the socket still accepts after the context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeListener fails Accept a few times, then blocks until closed.
type fakeListener struct {
	failures int
	calls    chan time.Time
	closed   chan struct{}
	once     sync.Once
}

func (f *fakeListener) Accept() (net.Conn, error) {
	f.calls <- time.Now()
	if f.failures > 0 {
		f.failures--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	<-f.closed
	return nil, net.ErrClosed
}

func (f *fakeListener) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// TestAcceptErrorBackoff: failed accepts are retried after 5ms, 10ms, 20ms…
// and Close still ends the accept goroutine.
func TestAcceptErrorBackoff(t *testing.T) {
	const failures = 4
	f := &fakeListener{failures: failures, calls: make(chan time.Time, failures+1), closed: make(chan struct{})}
	s := newSocket(f)
	registry.Lock()
	l := s.join()
	registry.Unlock()
	go s.acceptLoop()

	prev := <-f.calls
	want := minBackoff
	for i := range failures {
		next := <-f.calls
		if gap := next.Sub(prev); gap < want {
			t.Errorf("retry %d after %v, want at least %v", i+1, gap, want)
		}
		prev, want = next, min(2*want, maxBackoff)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	default:
		t.Fatal("accept goroutine still running after Close returned")
	}
}
