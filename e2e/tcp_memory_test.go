package e2e

// Memory per idle TCP connection: a real caddy with the between handler on
// a between+tcp listener in front of an echo backend, and HAProxy (mode tcp)
// in front of the same backend in the same test. Each client connection
// sends a few bytes, reads them back and goes quiet, so every proxied
// connection has moved data both ways (its copy buffers were used once) and
// then sits idle. The RSS growth of the proxy divided by the connections is
// the cost of one idle connection.
//
// TestTCPMemoryPerIdleConn (CI) runs 5 000 connections, bounds Between's
// growth and logs HAProxy's. BETWEEN_TCP_CONNS changes the count; 10 000
// needs an open file limit above 20 000 for the proxy (two sockets per
// connection), which this test raises when it may.

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxIdleTCPConnRSS bounds the RSS growth per idle connection through
// Between. Measured on Linux/amd64 (Go 1.26, 5 000 connections): 14.2-14.6
// KiB, of which goroutine stacks 10.2-10.6 KiB (caddy-l4's per-connection
// goroutine, whose stack grew to 8 KiB before it reached the handler, and the
// second direction's 2 KiB) and heap in use 6.3 KiB (caddy-l4's connection,
// replacer and read-ahead buffer, Go's netFDs and timers, the session);
// HAProxy 3.0-3.2 KiB in the same run. Before idle connections gave their
// copy buffer back it was 23.6 KiB.
const maxIdleTCPConnRSS = 20 << 10

func TestTCPMemoryPerIdleConn(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	n := 5000
	if s := os.Getenv("BETWEEN_TCP_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	n = fitOpenFiles(t, n)
	// An echo backend that copies through a buffer: io.Copy between two
	// TCP conns would splice, holding a pipe (two more fds) per connection.
	// It keeps its connections so that the test can close them first (see
	// closeIdle).
	var mu sync.Mutex
	var held []net.Conn
	backend := newBackend(t, func(c net.Conn) {
		mu.Lock()
		held = append(held, c)
		mu.Unlock()
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})

	// closeIdle ends the test's connections with the backend's close first,
	// so that every TIME_WAIT lands on a listening port: closed from the
	// client side, some 20 000 ephemeral ports on 127.0.0.1 would sit in
	// TIME_WAIT for a minute, and the next tests' servers (dnsmasq on a
	// probed free port) could not bind them.
	closeIdle := func(clients []net.Conn) {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		held = held[:0]
		mu.Unlock()
		for _, c := range clients {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c) // the proxy's FIN
			c.Close()
		}
	}

	// Between.
	listen := freeAddr(t)
	srv := staticServer(shared(listen), backend.addr)
	srv["client_idle_timeout"] = "120s"
	srv["backend_idle_timeout"] = "120s"
	srv["max_connections"] = 2*n + 1000
	c := startCaddyAt(t, "INFO", between(map[string]any{"mem": srv}))
	pid := c.cmd.Process.Pid
	if lim := procLimit(pid, "Max open files"); lim > 0 && lim < 2*n+100 {
		t.Fatalf("caddy may open %d files, needs more than %d", lim, 2*n)
	}
	warm := openIdleTCPConns(t, listen, 500)
	closeIdle(warm)
	time.Sleep(500 * time.Millisecond)
	rss0, g0, m0 := procRSS(t, pid), goroutineCount(t, c.admin), goMemStats(t, c.admin)
	conns := openIdleTCPConns(t, listen, n)
	time.Sleep(time.Second)
	rss1, g1, m1 := procRSS(t, pid), goroutineCount(t, c.admin), goMemStats(t, c.admin)
	per := (rss1 - rss0) / int64(n)
	t.Logf("between: %d idle connections; RSS %d -> %d MiB: %d bytes per connection; heap in use +%d, goroutine stacks +%d bytes per connection; goroutines %d -> %d (%.2f per connection)",
		n, rss0>>20, rss1>>20, per, (m1.heapInuse-m0.heapInuse)/int64(n), (m1.stackInuse-m0.stackInuse)/int64(n),
		g0, g1, float64(g1-g0)/float64(n))
	if g1-g0 < int64(n) {
		t.Fatalf("goroutines %d -> %d for %d connections: the connections are not all open", g0, g1, n)
	}
	if os.Getenv("BETWEEN_MEM_PROFILES") != "" {
		logHeapProfile(t, c.admin)
	}
	// Every connection still works after the measurement.
	checkEcho(t, conns)
	closeIdle(conns)
	if per > maxIdleTCPConnRSS {
		t.Errorf("RSS grew %d bytes per idle TCP connection, want at most %d", per, maxIdleTCPConnRSS)
	}

	// HAProxy in the same run, same backend, same clients.
	hlisten := freeAddr(t)
	h := startHAProxy(t, fmt.Sprintf("global\n\tmaxconn %d\nlisten mem\n\tbind %s\n\ttimeout client 120s\n\ttimeout server 120s\n\tserver b %s\n",
		n+100, hlisten, backend.addr), hlisten)
	warm = openIdleTCPConns(t, hlisten, 500)
	closeIdle(warm)
	time.Sleep(500 * time.Millisecond)
	hrss0 := procRSS(t, h.pid)
	conns = openIdleTCPConns(t, hlisten, n)
	time.Sleep(time.Second)
	hrss1 := procRSS(t, h.pid)
	checkEcho(t, conns)
	closeIdle(conns)
	t.Logf("haproxy: %d idle connections; RSS %d -> %d MiB: %d bytes per connection; between/haproxy %.1fx",
		n, hrss0>>20, hrss1>>20, (hrss1-hrss0)/int64(n), float64(per)/float64(max(1, (hrss1-hrss0)/int64(n))))
}

// fitOpenFiles raises this process's open file limit (children inherit it)
// so that a proxy can hold 2n sockets and this test n clients and n backend
// connections, or returns a smaller n that fits the hard limit.
func fitOpenFiles(t *testing.T, n int) int {
	t.Helper()
	want := uint64(2*n + 2000)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return n
	}
	raised := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
		return n
	}
	raised = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		t.Fatal(err)
	}
	fit := int(lim.Max-2000) / 2
	t.Logf("the open file limit is %d (raising it needs CAP_SYS_RESOURCE): measuring %d connections, not %d", lim.Max, fit, n)
	return fit
}

// openIdleTCPConns opens n connections to addr, each sending 8 bytes and
// reading them back (through an echo backend), and returns them open.
func openIdleTCPConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	buf := make([]byte, 8)
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			closeAll(conns)
			t.Fatalf("connection %d of %d: %v", i, n, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("01234567")); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("connection %d: read the echo: %v", i, err)
		}
		c.SetDeadline(time.Time{})
	}
	return conns
}

// checkEcho checks that every connection still echoes (one in 50, and the
// last).
func checkEcho(t *testing.T, conns []net.Conn) {
	t.Helper()
	buf := make([]byte, 4)
	for i, c := range conns {
		if i%50 != 0 && i != len(conns)-1 {
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatalf("idle connection %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("idle connection %d: echo %q, %v", i, buf, err)
		}
	}
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}
