package listeners

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// freeUDPPort returns a UDP port that was free on host a moment ago.
func freeUDPPort(t testing.TB, host string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
}

// openUDP returns a virtual UDP listener on host:port through the registered
// ListenerFunc and closes it at the end of the test.
func openUDP(t testing.TB, host, port string) *udpListener {
	t.Helper()
	return openOn(t, udpKind, host, port)
}

// dialUDP returns a client socket connected to l's address.
func dialUDP(t testing.TB, l *udpListener) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, l.sock.laddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// send writes one datagram from client c.
func send(t testing.TB, c *net.UDPConn, p []byte) {
	t.Helper()
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
}

// recv reads one datagram on client c, waiting at most 5 s.
func recv(t testing.TB, c *net.UDPConn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1<<16)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// accept returns the next session of l, waiting at most 5 s.
func accept(t testing.TB, l *udpListener) *UDPConn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.c.(*UDPConn)
	case <-time.After(5 * time.Second):
		t.Fatal("no session accepted within 5s")
		return nil
	}
}

// readDatagram reads one datagram from c with a 5 s deadline.
func readDatagram(t testing.TB, c *UDPConn) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// stats returns the counters of l's socket.
func stats(t testing.TB, l *udpListener) UDPSocketStats {
	t.Helper()
	addr := l.sock.laddr.String()
	for _, s := range UDPListenerStats() {
		if s.Addr == addr {
			return s
		}
	}
	t.Fatalf("no stats for %s", addr)
	return UDPSocketStats{}
}

// serveEcho accepts sessions on l and answers every datagram with prefix +
// the datagram, until l closes. Each session ends when its Read fails.
func serveEcho(l *udpListener, prefix string) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1<<16)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(append([]byte(prefix), buf[:n]...)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// pattern returns n bytes that differ per position and seed.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) + seed
	}
	return p
}

func TestUDPRegistered(t *testing.T) {
	checkRegistered(t, udpKind)
}

func TestIsNetworkUDP(t *testing.T) {
	checkIsNetwork(t, "IsNetworkUDP", IsNetworkUDP, []networkCase{
		{"between+udp/:5353", true},
		{"between+udp/[::1]:53", true},
		{"BETWEEN+UDP/127.0.0.1:53-55", true},
		{" between+udp /:53", true},
		{":53", false},
		{"udp/:53", false},
		{"between+tcp/:53", false},
		{"between+udp", false},
	})
}

func TestUDPListenRejectsBadAddresses(t *testing.T) {
	checkListenRejects(t, udpKind, []badAddr{
		{"127.0.0.1", ""},
		{"127.0.0.1", "dns"},
		{"127.0.0.1", "70000"},
		{"192.0.2.1", "5353"}, // TEST-NET-1: not a local address
	}, func(tc badAddr, err error) {
		if !bytes.HasPrefix([]byte(err.Error()), []byte(NetworkUDP+": ")) {
			t.Errorf("listen %q %q: error %q does not name %s", tc.host, tc.port, err, NetworkUDP)
		}
	})
}

// TestUDPDatagramBoundaries: every Read returns exactly one datagram, up to
// the largest IPv4 UDP payload; a short buffer gets the datagram in pieces
// and never bytes of the next one.
func TestUDPDatagramBoundaries(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)

	sizes := []int{1, 100, 512, 513, 1500, 2048, 2049, 8192, 9000, 40000, 65507}
	for i, n := range sizes {
		send(t, client, pattern(n, byte(i)))
	}
	c := accept(t, l)
	if got := c.ClientAddrPort(); got != client.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("ClientAddrPort() = %v, want %v", got, client.LocalAddr())
	}
	if got, want := c.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Fatalf("RemoteAddr() = %s, want %s", got, want)
	}
	if got, want := c.LocalAddr().String(), l.Addr().String(); got != want {
		t.Fatalf("LocalAddr() = %s, want %s", got, want)
	}
	for i, n := range sizes {
		if got := readDatagram(t, c); !bytes.Equal(got, pattern(n, byte(i))) {
			t.Fatalf("datagram %d: got %d bytes, want %d (or contents differ)", i, len(got), n)
		}
	}

	// Short buffer: 5000 bytes in 2048-byte reads, then the next datagram.
	send(t, client, pattern(5000, 1))
	send(t, client, pattern(10, 2))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	chunk := make([]byte, 2048)
	for _, want := range []int{2048, 2048, 904} {
		n, err := c.Read(chunk)
		if err != nil || n != want {
			t.Fatalf("partial read: %d, %v; want %d bytes", n, err, want)
		}
		got = append(got, chunk[:n]...)
	}
	if !bytes.Equal(got, pattern(5000, 1)) {
		t.Fatal("the pieces of a datagram do not add up to it")
	}
	if got := readDatagram(t, c); !bytes.Equal(got, pattern(10, 2)) {
		t.Fatalf("after the pieces: got %d bytes, want the next datagram", len(got))
	}

	// Write sends one datagram to the client, whatever its size.
	for _, n := range []int{1, 65507} {
		if _, err := c.Write(pattern(n, 9)); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, client); !bytes.Equal(got, pattern(n, 9)) {
			t.Fatalf("reply: got %d bytes, want %d", len(got), n)
		}
	}
}

// TestUDPTakeFrames: read the way caddy-l4 prefetches (2048-byte chunks);
// TakeFrames returns the lengths of the datagrams started, then records no more.
func TestUDPTakeFrames(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)
	sizes := []int{3000, 10, 500, 4000}
	for i, n := range sizes {
		send(t, client, pattern(n, byte(i)))
	}
	c := accept(t, l)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var matched []byte
	chunk := make([]byte, 2048)
	// 3000 = 2048+952, 10, 500, then the first 2048 of 4000.
	for range 5 {
		n, err := c.Read(chunk)
		if err != nil {
			t.Fatal(err)
		}
		matched = append(matched, chunk[:n]...)
	}
	frames := c.TakeFrames(nil)
	if fmt.Sprint(frames) != fmt.Sprint(sizes) {
		t.Fatalf("TakeFrames = %v, want %v", frames, sizes)
	}
	// Recover the datagrams: the buffer first, frame by frame, then the conn.
	r := io.MultiReader(bytes.NewReader(matched), c)
	for i, n := range frames {
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, pattern(n, byte(i))) {
			t.Fatalf("frame %d differs", i)
		}
	}
	send(t, client, []byte("later"))
	if got := readDatagram(t, c); string(got) != "later" {
		t.Fatalf("got %q", got)
	}
	if frames := c.TakeFrames(nil); len(frames) != 0 {
		t.Fatalf("TakeFrames after TakeFrames = %v, want none", frames)
	}
}

// TestUDPRecordingBounded: a handler that never calls TakeFrames does not
// make the session record forever.
func TestUDPRecordingBounded(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)
	send(t, client, []byte("x"))
	c := accept(t, l)
	readDatagram(t, c)
	for range 40 {
		send(t, client, pattern(1000, 0))
		readDatagram(t, c)
	}
	if frames := c.TakeFrames(nil); len(frames) > 1+udpMaxRecorded/1000+1 {
		t.Fatalf("%d frames recorded, want recording to stop after %d bytes", len(frames), udpMaxRecorded)
	}
}

// TestUDPManyClients: 200 clients at once, each with its own session, all
// echoed correctly.
func TestUDPManyClients(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	serveEcho(l, "")
	const clients, rounds = 200, 5
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		client := dialUDP(t, l)
		wg.Go(func() {
			buf := make([]byte, 2048)
			for r := range rounds {
				msg := []byte(fmt.Sprintf("client %d round %d", i, r))
				// A datagram may be lost on a busy loopback: retry.
				var err error
				for try := 0; try < 5; try++ {
					if _, err = client.Write(msg); err != nil {
						break
					}
					_ = client.SetReadDeadline(time.Now().Add(time.Second))
					var n int
					if n, err = client.Read(buf); err == nil {
						if !bytes.Equal(buf[:n], msg) {
							err = fmt.Errorf("client %d: got %q, want %q", i, buf[:n], msg)
						}
						break
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := stats(t, l); s.Sessions != clients {
		t.Fatalf("%d sessions open, want %d", s.Sessions, clients)
	}
}

// waitPackets waits until l's socket has received want datagrams in all.
func waitPackets(t *testing.T, l *udpListener, want uint64) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("%d datagrams received", want), func() bool { return l.sock.packets.Load() >= want })
}

// TestUDPStalledSession: a session nobody reads fills its queue; the rest of
// its datagrams are dropped and counted, and other clients are not held up.
func TestUDPStalledSession(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	stalled := dialUDP(t, l)
	send(t, stalled, []byte("0"))
	accept(t, l) // accepted, never read
	waitPackets(t, l, 1)

	const extra = 50
	total := uint64(1)
	for i := 1; i < udpQueueLen+extra; i++ {
		send(t, stalled, []byte(strconv.Itoa(i)))
		total++
		if i%16 == 0 {
			waitPackets(t, l, total)
		}
	}
	waitPackets(t, l, total)
	if s := stats(t, l); s.DroppedQueueFull != extra {
		t.Fatalf("dropped queue_full = %d, want %d", s.DroppedQueueFull, extra)
	}

	serveEcho(l, "")
	other := dialUDP(t, l)
	for i := range 10 {
		msg := []byte("other " + strconv.Itoa(i))
		send(t, other, msg)
		if got := recv(t, other); !bytes.Equal(got, msg) {
			t.Fatalf("got %q, want %q", got, msg)
		}
	}
}

// TestUDPMaxSessions: over the cap, datagrams that would start a session are
// dropped and counted; a closed session makes room.
func TestUDPMaxSessions(t *testing.T) {
	port := freeUDPPort(t, "127.0.0.1")
	addr := NetworkUDP + "/127.0.0.1:" + port
	SetUDPMaxSessions(addr, 3)
	t.Cleanup(func() { SetUDPMaxSessions(addr, 0) })
	l := openUDP(t, "127.0.0.1", port)
	if got := l.sock.maxSessions.Load(); got != 3 {
		t.Fatalf("max sessions %d, want 3", got)
	}

	var conns []*UDPConn
	clients := make([]*net.UDPConn, 5)
	for i := range clients {
		clients[i] = dialUDP(t, l)
		send(t, clients[i], []byte("hi"))
		waitPackets(t, l, uint64(i+1))
		if i < 3 {
			conns = append(conns, accept(t, l))
		}
	}
	s := stats(t, l)
	if s.Sessions != 3 || s.DroppedMaxSessions != 2 {
		t.Fatalf("sessions %d, dropped max_sessions %d; want 3, 2", s.Sessions, s.DroppedMaxSessions)
	}
	// Datagrams of existing sessions still pass.
	send(t, clients[0], []byte("again"))
	readDatagram(t, conns[0])
	readDatagram(t, conns[0])

	conns[1].Close()
	send(t, clients[4], []byte("now"))
	if got := readDatagram(t, accept(t, l)); string(got) != "now" {
		t.Fatalf("got %q", got)
	}

	// The cap changes on the open socket; 0 restores the default.
	SetUDPMaxSessions(addr, 0)
	if got := l.sock.maxSessions.Load(); got != defaultUDPMaxSessions {
		t.Fatalf("max sessions %d after reset, want %d", got, defaultUDPMaxSessions)
	}
	SetUDPMaxSessions(NetworkUDP+"/127.0.0.1:"+port+"-"+port, 7)
	if got := l.sock.maxSessions.Load(); got != 7 {
		t.Fatalf("max sessions %d after a range, want 7", got)
	}
	SetUDPMaxSessions("between+tcp/127.0.0.1:"+port, 9) // ignored
	if got := l.sock.maxSessions.Load(); got != 7 {
		t.Fatalf("a between+tcp address changed the UDP cap to %d", got)
	}
}

// TestUDPBacklog: with nobody accepting, new sessions beyond the backlog are
// dropped and counted.
func TestUDPBacklog(t *testing.T) {
	old := udpBacklog
	udpBacklog = 4
	t.Cleanup(func() { udpBacklog = old })
	l := openUDP(t, "127.0.0.1", "0")
	for i := range 6 {
		send(t, dialUDP(t, l), []byte("x"))
		waitPackets(t, l, uint64(i+1))
	}
	s := stats(t, l)
	if s.DroppedBacklog != 2 || s.Sessions != 4 || len(l.queue) != 4 {
		t.Fatalf("dropped backlog %d, sessions %d, queued %d; want 2, 4, 4", s.DroppedBacklog, s.Sessions, len(l.queue))
	}
}

// TestUDPReload: a second listener on the address takes new sessions; the
// old listener's accepted sessions keep working, and the sessions queued on
// it when it closes go to the new one.
func TestUDPReload(t *testing.T) {
	port := freeUDPPort(t, "127.0.0.1")
	a := openUDP(t, "127.0.0.1", port)

	c1 := dialUDP(t, a)
	send(t, c1, []byte("one"))
	s1 := accept(t, a)
	if got := readDatagram(t, s1); string(got) != "one" {
		t.Fatalf("got %q", got)
	}

	// Queued on A, not accepted.
	queued := make([]*net.UDPConn, 3)
	for i := range queued {
		queued[i] = dialUDP(t, a)
		send(t, queued[i], []byte("queued "+strconv.Itoa(i)))
	}
	waitFor(t, 5*time.Second, "3 sessions queued on A", func() bool { return len(a.queue) == 3 })

	b := openUDP(t, "127.0.0.1", port)
	if b.sock != a.sock {
		t.Fatal("the second listener did not share the socket")
	}
	c2 := dialUDP(t, a)
	send(t, c2, []byte("two"))
	waitFor(t, 5*time.Second, "the new session queued on B", func() bool { return len(b.queue) == 1 })
	if len(a.queue) != 3 {
		t.Fatalf("A's queue holds %d, want 3", len(a.queue))
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on closed A: %v, want net.ErrClosed", err)
	}
	serveEcho(b, "B:")
	for i, q := range queued {
		if got, want := string(recv(t, q)), "B:queued "+strconv.Itoa(i); got != want {
			t.Fatalf("queued client %d: got %q, want %q", i, got, want)
		}
	}
	if got := string(recv(t, c2)); got != "B:two" {
		t.Fatalf("new client: got %q", got)
	}

	// The session A accepted still belongs to its conn.
	send(t, c1, []byte("still"))
	if got := readDatagram(t, s1); string(got) != "still" {
		t.Fatalf("old session after A closed: got %q", got)
	}
	if _, err := s1.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if got := string(recv(t, c1)); got != "reply" {
		t.Fatalf("old session's reply: got %q", got)
	}
}

// TestUDPNewestListenerGetsSessions: with several listeners open the newest
// gets each new session; when it closes, the newest remaining one does.
func TestUDPNewestListenerGetsSessions(t *testing.T) {
	port := freeUDPPort(t, "127.0.0.1")
	ls := []*udpListener{openUDP(t, "127.0.0.1", port), openUDP(t, "127.0.0.1", port), openUDP(t, "127.0.0.1", port)}
	for _, want := range []int{2, 1, 0} {
		if want < 2 {
			ls[want+1].Close()
		}
		client := dialUDP(t, ls[0])
		send(t, client, []byte("x"))
		waitFor(t, 5*time.Second, "the session to be dispatched", func() bool {
			return len(ls[0].queue)+len(ls[1].queue)+len(ls[2].queue) == 1
		})
		if len(ls[want].queue) != 1 {
			t.Fatalf("session went to queue sizes %d %d %d, want listener %d",
				len(ls[0].queue), len(ls[1].queue), len(ls[2].queue), want)
		}
		accept(t, ls[want]).Close()
	}
}

// TestUDPLastClose: closing the last listener closes the socket, every
// session (Read returns promptly), frees the port and ends the goroutines.
func TestUDPLastClose(t *testing.T) {
	baseline := runtime.NumGoroutine()
	port := freeUDPPort(t, "127.0.0.1")
	a := openUDP(t, "127.0.0.1", port)
	b := openUDP(t, "127.0.0.1", port)
	sock := a.sock

	c1 := dialUDP(t, a)
	send(t, c1, []byte("accepted"))
	s1 := accept(t, b)
	c2 := dialUDP(t, a)
	send(t, c2, []byte("queued"))
	waitFor(t, 5*time.Second, "a session queued on B", func() bool { return len(b.queue) == 1 })

	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 100)
		for {
			if _, err := s1.Read(buf); err != nil {
				readErr <- err
				return
			}
		}
	}()

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("Read after the socket closed: %v, want io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after the socket closed")
	}
	if _, err := s1.Write([]byte("x")); err == nil {
		t.Fatal("Write after the socket closed succeeded")
	}
	if n := sock.sessions.Load(); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
	for _, s := range UDPListenerStats() {
		if s.Addr == "127.0.0.1:"+port {
			t.Fatal("stats still list the closed socket")
		}
	}
	udpRegistry.Lock()
	_, stillThere := udpRegistry.sockets["127.0.0.1:"+port]
	udpRegistry.Unlock()
	if stillThere {
		t.Fatal("socket still in the registry after the last close")
	}
	// The port is free again.
	pc, err := net.ListenPacket("udp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatalf("port not free after the last close: %v", err)
	}
	pc.Close()
	// Close the test's client sockets too before counting goroutines.
	c1.Close()
	c2.Close()
	waitFor(t, 5*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline })

	c := openUDP(t, "127.0.0.1", port)
	if c.sock == sock {
		t.Fatal("a closed socket was reused")
	}
}

// TestUDPCloseIdempotentAndAccept: Close twice is fine; a blocked Accept is
// released by Close and any later Accept returns net.ErrClosed.
func TestUDPCloseIdempotentAndAccept(t *testing.T) {
	checkCloseIdempotentAndAccept(t, udpKind, func(other bool) string {
		return fmt.Sprintf("other=%v", other)
	})
}

// TestUDPConnClose: a closed session reads net.ErrClosed and cannot write;
// the client's next datagram starts a new session.
func TestUDPConnClose(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)
	send(t, client, []byte("a"))
	send(t, client, []byte("b")) // left queued: discarded by Close
	first := accept(t, l)
	waitFor(t, 5*time.Second, "two datagrams queued", func() bool { return first.queued() == 2 })

	blocked := make(chan error, 1)
	readDatagram(t, first)
	readDatagram(t, first)
	go func() {
		_, err := first.Read(make([]byte, 10))
		blocked <- err
	}()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := first.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := first.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if n := l.sock.sessions.Load(); n != 0 {
		t.Fatalf("%d sessions after Close, want 0", n)
	}

	send(t, client, []byte("c"))
	second := accept(t, l)
	if second == first {
		t.Fatal("a closed session was reused")
	}
	if got := readDatagram(t, second); string(got) != "c" {
		t.Fatalf("new session got %q, want %q", got, "c")
	}
}

// TestUDPDeadlines: read deadlines in the past, in the future, moved while a
// Read waits, and cleared.
func TestUDPDeadlines(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)
	send(t, client, []byte("x"))
	c := accept(t, l)
	readDatagram(t, c)
	buf := make([]byte, 10)

	isTimeout := func(err error) bool {
		var ne net.Error
		return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
	}
	_ = c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := c.Read(buf); !isTimeout(err) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(buf); !isTimeout(err) {
		t.Fatalf("Read with a near deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 15*time.Millisecond {
		t.Fatalf("timed out after %v, before the deadline", d)
	}

	// A waiting Read sees a deadline set meanwhile, from no deadline.
	_ = c.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("Read without a deadline returned %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	_ = c.SetReadDeadline(time.Now())
	select {
	case err := <-errc:
		if !isTimeout(err) {
			t.Fatalf("interrupted Read: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("setting a past deadline did not interrupt Read")
	}

	// Extended while waiting: the datagram arriving before it is read.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	go func() {
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) != "late" {
			err = fmt.Errorf("got %q", buf[:n])
		}
		errc <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	time.AfterFunc(30*time.Millisecond, func() { _, _ = client.Write([]byte("late")) })
	if err := <-errc; err != nil {
		t.Fatalf("Read with an extended deadline: %v", err)
	}
	if err := c.SetWriteDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("w")); err != nil {
		t.Fatalf("Write after SetWriteDeadline: %v", err)
	}
}

// TestUDPIdleSweep: a session without traffic is closed by the sweeper; one
// with traffic is not, nor one whose Read waits with a deadline (its handler
// has its own idle timer) until that Read ends.
func TestUDPIdleSweep(t *testing.T) {
	oldIdle, oldEvery := udpIdleTimeout, udpSweepInterval
	udpIdleTimeout, udpSweepInterval = 60*time.Millisecond, 10*time.Millisecond
	t.Cleanup(func() { udpIdleTimeout, udpSweepInterval = oldIdle, oldEvery })
	l := openUDP(t, "127.0.0.1", "0")

	idleClient := dialUDP(t, l)
	send(t, idleClient, []byte("idle"))
	idle := accept(t, l)
	readDatagram(t, idle)
	_ = idle.SetReadDeadline(time.Time{}) // its Read waits without a deadline
	busyClient := dialUDP(t, l)
	send(t, busyClient, []byte("busy"))
	busy := accept(t, l)
	readDatagram(t, busy)
	timedClient := dialUDP(t, l)
	send(t, timedClient, []byte("timed"))
	timed := accept(t, l)
	readDatagram(t, timed)
	_ = timed.SetReadDeadline(time.Now().Add(time.Minute))
	timedErr := make(chan error, 1)
	go func() {
		_, err := timed.Read(make([]byte, 10))
		timedErr <- err
	}()
	waitFor(t, 5*time.Second, "the timed Read to wait", func() bool { return timed.timedWaits.Load() == 1 })

	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := idle.Read(make([]byte, 10))
		errc <- err
	}()
	// Keep the busy session going until the idle one has been swept.
	for done := false; !done; {
		select {
		case err := <-errc:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("idle session's Read: %v, want io.EOF", err)
			}
			if d := time.Since(start); d < udpIdleTimeout-udpSweepInterval {
				t.Fatalf("swept after %v, idle timeout %v", d, udpIdleTimeout)
			}
			done = true
		default:
			send(t, busyClient, []byte("ping"))
			if got := readDatagram(t, busy); string(got) != "ping" {
				t.Fatalf("busy session got %q", got)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("the idle session was not swept within 5s")
			}
		}
	}
	if busy.closed.Load() || timed.closed.Load() {
		t.Fatalf("swept: busy session %v, session read with a deadline %v", busy.closed.Load(), timed.closed.Load())
	}
	if n := l.sock.sessions.Load(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	// Once its Read has ended, the timed session is idle too.
	_ = timed.SetReadDeadline(time.Now())
	if err := <-timedErr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("timed Read: %v, want a timeout", err)
	}
	waitFor(t, 5*time.Second, "the timed session to be swept", timed.closed.Load)
}

// TestUDPPortZeroNotShared: port 0 binds a fresh socket per call.
func TestUDPPortZeroNotShared(t *testing.T) {
	checkPortZeroNotShared(t, udpKind)
}

// TestUDPIPv6: sessions on [::1], and IPv4 clients of a dual-stack socket
// show as IPv4.
func TestUDPIPv6(t *testing.T) {
	if pc, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skipf("cannot bind ::1: %v", err)
	} else {
		pc.Close()
	}
	l := openUDP(t, "[::1]", "0")
	if a := l.Addr().(*net.UDPAddr); !a.IP.Equal(net.IPv6loopback) {
		t.Fatalf("Addr() = %v, want ::1", a)
	}
	serveEcho(l, "6:")
	client := dialUDP(t, l)
	send(t, client, []byte("hello"))
	if got := string(recv(t, client)); got != "6:hello" {
		t.Fatalf("got %q", got)
	}

	dual := openUDP(t, "", "0")
	client4, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: dual.sock.laddr.Port})
	if err != nil {
		t.Fatal(err)
	}
	defer client4.Close()
	send(t, client4, []byte("four"))
	c := accept(t, dual)
	if ap := c.ClientAddrPort(); !ap.Addr().Is4() || ap != client4.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("ClientAddrPort() = %v, want %v", ap, client4.LocalAddr())
	}
	if _, err := c.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	if got := string(recv(t, client4)); got != "back" {
		t.Fatalf("got %q", got)
	}
}

// TestUDPThroughCaddy: a "between+udp/…" address listened on through Caddy's
// NetworkAddress gives a net.Listener (not a PacketConn, so caddy-l4 serves
// it as a stream listener), shared per address and closed with the context.
func TestUDPThroughCaddy(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()

	port := freeUDPPort(t, "127.0.0.1")
	got := listenTwiceThroughCaddy(t, udpKind, ctx, port, func(ln any) {
		if _, isPacket := ln.(net.PacketConn); isPacket {
			t.Fatal("Listen returned a net.PacketConn")
		}
	})

	zero, err := caddy.ParseNetworkAddress(NetworkUDP + "/127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := zero.Listen(ctx, 0, net.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ln.(net.Listener); !ok {
		t.Fatalf("Listen on port 0 returned %T", ln)
	}

	serveEcho(got[1], "")
	client := dialUDP(t, got[0])
	send(t, client, []byte("via caddy"))
	if r := string(recv(t, client)); r != "via caddy" {
		t.Fatalf("got %q", r)
	}

	cancel()
	for _, l := range append(got, ln.(*udpListener)) {
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after the context ended: %v, want net.ErrClosed", err)
		}
	}
	waitFor(t, 5*time.Second, "the port to be free", func() bool {
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+port)
		if err != nil {
			return false
		}
		pc.Close()
		return true
	})
}

// TestUDPReloadLoop: listeners alternate 30 times while 8 clients keep
// exchanging datagrams; every client gets every answer (sessions survive the
// reloads; a few datagrams may be lost on the loopback, so clients retry).
func TestUDPReloadLoop(t *testing.T) {
	port := freeUDPPort(t, "127.0.0.1")
	cur := openUDP(t, "127.0.0.1", port)
	serveEcho(cur, "")
	addr := cur.sock.laddr
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var exchanged sync.Map
	for i := range 8 {
		wg.Go(func() {
			buf := make([]byte, 100)
			var client *net.UDPConn
			defer func() { client.Close() }()
			for r := 0; ; r++ {
				select {
				case <-stop:
					exchanged.Store(i, r)
					return
				default:
				}
				// A new client address (a new session) every 4 rounds.
				if r%4 == 0 {
					if client != nil {
						client.Close()
					}
					var err error
					if client, err = net.DialUDP("udp", nil, addr); err != nil {
						errs <- err
						return
					}
				}
				msg := []byte(fmt.Sprintf("%d/%d", i, r))
				var err error
				for try := 0; try < 5; try++ {
					if _, err = client.Write(msg); err != nil {
						break
					}
					_ = client.SetReadDeadline(time.Now().Add(time.Second))
					var n int
					if n, err = client.Read(buf); err == nil && !bytes.Equal(buf[:n], msg) {
						err = fmt.Errorf("client %d: got %q, want %q", i, buf[:n], msg)
						continue // a late answer to a retried datagram
					}
					if err == nil {
						break
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 30 {
		next := openUDP(t, "127.0.0.1", port)
		serveEcho(next, "")
		// Let some traffic flow with both listeners open.
		seen := next.sock.packets.Load()
		waitFor(t, 5*time.Second, "datagrams during the reload", func() bool { return next.sock.packets.Load() >= seen+16 })
		if err := cur.Close(); err != nil {
			t.Fatal(err)
		}
		cur = next
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	exchanged.Range(func(k, v any) bool {
		if v.(int) == 0 {
			t.Errorf("client %v exchanged nothing", k)
		}
		return true
	})
}

// raceEnabled reports whether the test binary was built with -race, which
// makes sync.Pool drop buffers at random (so the datagram path allocates).
func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// udpRig is a session with a client, for the per-datagram path.
type udpRig struct {
	client *net.UDPConn
	conn   *UDPConn
	msg    []byte
	buf    []byte
}

func newUDPRig(t testing.TB, size int) *udpRig {
	l := openUDP(t, "127.0.0.1", "0")
	r := &udpRig{client: dialUDP(t, l), msg: pattern(size, 3), buf: make([]byte, 1<<16)}
	send(t, r.client, r.msg)
	r.conn = accept(t, l)
	r.conn.TakeFrames(nil)
	r.exchange(t)
	return r
}

// exchange moves one datagram client -> session and one reply back.
func (r *udpRig) exchange(t testing.TB) {
	n, err := r.conn.Read(r.buf)
	if err != nil || n != len(r.msg) {
		t.Fatalf("session Read: %d, %v", n, err)
	}
	if _, err := r.conn.Write(r.buf[:n]); err != nil {
		t.Fatal(err)
	}
	if n, err = r.client.Read(r.buf); err != nil || n != len(r.msg) {
		t.Fatalf("client Read: %d, %v", n, err)
	}
	if _, err := r.client.Write(r.msg); err != nil {
		t.Fatal(err)
	}
}

// TestUDPListenerZeroAlloc: once a session is up, receiving a datagram
// (socket read, session lookup, queueing, Read) and replying allocates nothing.
func TestUDPListenerZeroAlloc(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector makes sync.Pool drop buffers; CI runs ZeroAlloc tests without -race")
	}
	for _, size := range []int{64, 1400, 65507} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			r := newUDPRig(t, size)
			_ = r.conn.SetReadDeadline(time.Now().Add(time.Minute)) // the timer exists
			if a := testing.AllocsPerRun(500, func() {
				_ = r.conn.SetReadDeadline(time.Now().Add(time.Minute))
				r.exchange(t)
			}); a != 0 {
				t.Errorf("%v allocations per datagram and reply", a)
			}
		})
	}
}

// BenchmarkUDPListenerDatagram: one datagram from a client through the
// listener to the session's Read, and the reply back.
func BenchmarkUDPListenerDatagram(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			r := newUDPRig(b, size)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				r.exchange(b)
			}
		})
	}
}

// TestUDPConnReadFunc: ReadFunc hands over queued datagrams whole and in
// order, the rest of one a Read returned part of, waits like Read (deadline,
// Close), and records frames like Read.
func TestUDPConnReadFunc(t *testing.T) {
	l := openUDP(t, "127.0.0.1", "0")
	client := dialUDP(t, l)
	send(t, client, []byte("first datagram"))
	c := accept(t, l)
	send(t, client, []byte("second"))
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for c.queued() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d datagrams queued, want %d", c.queued(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitQueued(2)

	// A Read takes part of the first; ReadFunc gets the rest of it.
	part := make([]byte, 5)
	if n, err := c.Read(part); err != nil || string(part[:n]) != "first" {
		t.Fatalf("Read: %q, %v", part[:n], err)
	}
	var got []string
	collect := func(p []byte) { got = append(got, string(p)) }
	for range 2 {
		if err := c.ReadFunc(collect); err != nil {
			t.Fatalf("ReadFunc: %v", err)
		}
	}
	if want := []string{" datagram", "second"}; !slices.Equal(got, want) {
		t.Fatalf("ReadFunc got %q, want %q", got, want)
	}
	if f := c.TakeFrames(nil); !slices.Equal(f, []int{len("first datagram"), len("second")}) {
		t.Errorf("frames %v", f)
	}

	// It waits for a datagram that comes later.
	done := make(chan string, 1)
	go func() {
		if err := c.ReadFunc(func(p []byte) { done <- string(p) }); err != nil {
			done <- err.Error()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	send(t, client, []byte("third"))
	select {
	case s := <-done:
		if s != "third" {
			t.Fatalf("waiting ReadFunc got %q", s)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("waiting ReadFunc got nothing")
	}

	// Deadline.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	start := time.Now()
	err := c.ReadFunc(func([]byte) { t.Error("fn called without a datagram") })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFunc past the deadline: %v", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > 2*time.Second {
		t.Errorf("deadline fired after %s", d)
	}
	_ = c.SetReadDeadline(time.Time{})

	// Close wakes a waiting ReadFunc.
	errc := make(chan error, 1)
	go func() { errc <- c.ReadFunc(func([]byte) {}) }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFunc after Close: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not wake ReadFunc")
	}
}

// TestUDPListenerReadFuncZeroAlloc: receiving a datagram through ReadFunc
// and replying allocates nothing, for every size class.
func TestUDPListenerReadFuncZeroAlloc(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector makes sync.Pool drop buffers; CI runs ZeroAlloc tests without -race")
	}
	for _, size := range []int{64, 1400, 65507} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			r := newUDPRig(t, size)
			var n int
			fn := func(p []byte) {
				n = len(p)
				if _, err := r.conn.Write(p); err != nil {
					t.Error(err)
				}
			}
			_ = r.conn.SetReadDeadline(time.Now().Add(time.Minute))
			if a := testing.AllocsPerRun(500, func() {
				_ = r.conn.SetReadDeadline(time.Now().Add(time.Minute))
				if err := r.conn.ReadFunc(fn); err != nil || n != len(r.msg) {
					t.Fatalf("ReadFunc: %d, %v", n, err)
				}
				if m, err := r.client.Read(r.buf); err != nil || m != len(r.msg) {
					t.Fatalf("client Read: %d, %v", m, err)
				}
				if _, err := r.client.Write(r.msg); err != nil {
					t.Fatal(err)
				}
			}); a != 0 {
				t.Errorf("%v allocations per datagram and reply", a)
			}
		})
	}
}

// TestUDPCloseHandsQueueOn: a handler that read a datagram and closes its
// session while more wait (they arrived after its last Read) loses none of
// them: they start a new session, in order; a session closed before any
// Read discards its queue (a refusing handler must not get it back).
func TestUDPCloseHandsQueueOn(t *testing.T) {
	l := openUDP(t, "127.0.0.1", freeUDPPort(t, "127.0.0.1"))
	client := dialUDP(t, l)
	for _, m := range []string{"one", "two", "three"} {
		send(t, client, []byte(m))
	}
	waitPackets(t, l, 3)
	first := accept(t, l)
	if got := readDatagram(t, first); string(got) != "one" {
		t.Fatalf("first datagram %q", got)
	}
	first.Close()
	next := accept(t, l)
	for _, want := range []string{"two", "three"} {
		if got := readDatagram(t, next); string(got) != want {
			t.Fatalf("after the hand-over: %q, want %q", got, want)
		}
	}
	if s := stats(t, l); s.Sessions != 1 {
		t.Fatalf("%d sessions, want 1", s.Sessions)
	}

	// closed without a Read: its queue is dropped, no new session
	next.Close()
	send(t, client, []byte("four"))
	send(t, client, []byte("five"))
	waitPackets(t, l, 5)
	refused := accept(t, l)
	refused.Close()
	if s := stats(t, l); s.Sessions != 0 {
		t.Fatalf("%d sessions after closing an unread session, want 0", s.Sessions)
	}
	select {
	case c := <-l.queue:
		t.Fatalf("an unread session's queue came back as session %v", c.RemoteAddr())
	default:
	}
}
