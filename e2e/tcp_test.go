package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundRobinAcrossBackends(t *testing.T) {
	b1, b2, b3 := nameBackend(t, "one"), nameBackend(t, "two"), nameBackend(t, "three")
	addr := freeAddr(t)
	srv := staticServer(shared(addr), b1.addr, b2.addr, b3.addr)
	srv["balance"] = map[string]any{"policy": "roundrobin"}
	startCaddy(t, between(map[string]any{"rr": srv}))
	got := map[string]int{}
	for range 30 {
		name, err := ask(addr)
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	for _, n := range []string{"one", "two", "three"} {
		if got[n] != 10 {
			t.Errorf("backend %s got %d of 30 connections, want exactly 10 (all: %v)", n, got[n], got)
		}
	}
}

func TestWeightedBalancing(t *testing.T) {
	light, heavy := nameBackend(t, "light"), nameBackend(t, "heavy")
	addr := freeAddr(t)
	startCaddy(t, between(map[string]any{"w": staticServer(shared(addr), light.addr+" weight=1", heavy.addr+" weight=3")}))
	got := map[string]int{}
	const n = 400
	for range n {
		name, err := ask(addr)
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	// 25% of 400 = 100; binomial sd ~8.7, allow ~4 sd
	if got["light"] < 65 || got["light"] > 135 {
		t.Errorf("light (weight 1) got %d of %d, want about 100 (heavy %d)", got["light"], n, got["heavy"])
	}
}

func TestLargeTransferIntegrity(t *testing.T) {
	type result struct {
		sum [32]byte
		n   int64
	}
	received := make(chan result, 1)
	// the backend hashes what it receives and sends back 50 MB of its own
	back := make([]byte, 50<<20)
	rand.Read(back)
	backSum := sha256.Sum256(back)
	be := newBackend(t, func(c net.Conn) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Write(back)
			c.(*net.TCPConn).CloseWrite()
		}()
		h := sha256.New()
		n, _ := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n = n
		received <- r
		wg.Wait()
	})
	addr := freeAddr(t)
	startCaddy(t, between(map[string]any{"big": staticServer(shared(addr), be.addr)}))

	out := make([]byte, 50<<20)
	rand.Read(out)
	outSum := sha256.Sum256(out)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	go func() {
		c.Write(out)
		c.(*net.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(back)) || [32]byte(h.Sum(nil)) != backSum {
		t.Errorf("client received %d bytes with a different SHA-256 than the backend sent (%d bytes)", n, len(back))
	}
	r := <-received
	if r.n != int64(len(out)) || r.sum != outSum {
		t.Errorf("backend received %d bytes with a different SHA-256 than the client sent (%d bytes)", r.n, len(out))
	}
}

func TestHalfClose(t *testing.T) {
	// the backend reads until the client's FIN, then answers
	be := newBackend(t, func(c net.Conn) {
		data, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes: %s\n", len(data), data)
	})
	addr := freeAddr(t)
	startCaddy(t, between(map[string]any{"hc": staticServer(shared(addr), be.addr)}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "hello")
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got 5 bytes: hello\n" {
		t.Errorf("reply after half-close = %q, want %q", reply, "got 5 bytes: hello\n")
	}
}

func TestIdleTimeout(t *testing.T) {
	// a silent backend: nothing flows unless the test sends
	be := newBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	// a backend that streams one byte every 100 ms and never reads
	streamer := newBackend(t, func(c net.Conn) {
		for range 20 {
			if _, err := c.Write([]byte{'x'}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	idle := freeAddr(t)
	stream := freeAddr(t)
	s1 := staticServer(shared(idle), be.addr)
	s1["client_idle_timeout"] = "500ms"
	s1["backend_idle_timeout"] = "500ms"
	s2 := staticServer(shared(stream), streamer.addr)
	s2["client_idle_timeout"] = "500ms"
	s2["backend_idle_timeout"] = "500ms"
	startCaddy(t, between(map[string]any{"idle": s1, "stream": s2}))

	t.Run("silent session closes", func(t *testing.T) {
		c, err := net.Dial("tcp", idle)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if err != io.EOF {
			t.Fatalf("read = %v, want EOF from the idle timeout", err)
		}
		if d := time.Since(start); d < 400*time.Millisecond || d > 2*time.Second {
			t.Errorf("closed after %s, want about 500ms", d)
		}
	})
	t.Run("one-way stream is not idle", func(t *testing.T) {
		c, err := net.Dial("tcp", stream)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			t.Fatal(err)
		}
		if n != 20 {
			t.Errorf("download-only stream got %d of 20 bytes: the client idle timeout cut it", n)
		}
	})
}

func TestMaxConnections(t *testing.T) {
	be := echoBackend(t)
	addr := freeAddr(t)
	srv := staticServer(shared(addr), be.addr)
	srv["max_connections"] = 2
	inst := startCaddy(t, between(map[string]any{"max": srv}))
	var held []net.Conn
	for i := range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "ping%d\n", i)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != fmt.Sprintf("ping%d\n", i) {
			t.Fatalf("connection %d: %q, %v", i, line, err)
		}
		held = append(held, c)
	}
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	third.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(third, "ping\n")
	if _, err := third.Read(make([]byte, 8)); err == nil {
		t.Fatal("third connection was served over max_connections 2")
	}
	waitFor(t, 2*time.Second, "the refusal in the log", func() bool {
		return inst.logged("client refused: handler at max_connections", map[string]any{"handler": "max", "max_connections": 2})
	})
	// after one closes, a new client gets in
	held[0].Close()
	waitFor(t, 3*time.Second, "a free slot", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		io.WriteString(c, "again\n")
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line == "again\n"
	})
}

func TestAccessRules(t *testing.T) {
	be := nameBackend(t, "ok")
	addr := freeAddr(t)
	srv := staticServer(shared(addr), be.addr)
	srv["access"] = map[string]any{"default": "deny", "rules": []string{"deny 127.0.0.3", "allow 127.0.0.0/24"}}
	startCaddy(t, between(map[string]any{"acl": srv}))
	for _, tc := range []struct {
		from  string
		allow bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", true},
		{"127.0.0.3", false}, // first match wins
		{"127.0.1.1", false}, // default deny
	} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}, Timeout: 2 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("from %s: %v", tc.from, err)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if got := line == "ok\n"; got != tc.allow {
			t.Errorf("client %s: served=%v, want %v", tc.from, got, tc.allow)
		}
	}
}

func TestRetryOnRefusingBackend(t *testing.T) {
	live := nameBackend(t, "live")
	dead := freeAddr(t) // nothing listens here
	addr := freeAddr(t)
	srv := staticServer(shared(addr), dead, live.addr)
	srv["balance"] = map[string]any{"policy": "roundrobin"}
	srv["backend_connection_timeout"] = "1s"
	startCaddy(t, between(map[string]any{"retry": srv}))
	for i := range 10 {
		name, err := ask(addr)
		if err != nil || name != "live" {
			t.Fatalf("connection %d: got %q, %v; want the live backend after a retry", i, name, err)
		}
	}

	t.Run("retries 0 fails over nothing", func(t *testing.T) {
		addr0 := freeAddr(t)
		s0 := staticServer(shared(addr0), dead)
		s0["retries"] = 0
		c := startCaddy(t, between(map[string]any{"noretry": s0}))
		if name, err := ask(addr0); err == nil {
			t.Fatalf("got %q from a server whose only backend refuses", name)
		}
		waitFor(t, 2*time.Second, "a log line with the reason", func() bool {
			return strings.Contains(c.logs(), "dial failed")
		})
	})
}

func TestRefusalReasonIsLogged(t *testing.T) {
	addr := freeAddr(t)
	full := newBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	srv := staticServer(shared(addr), full.addr+" max_connections=1")
	c := startCaddy(t, between(map[string]any{"limits": srv}))
	hold, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, 2*time.Second, "the first connection to reach the backend", func() bool { return full.count() == 1 })
	if name, err := ask(addr); err == nil {
		t.Fatalf("second client served (%q) past the backend's max_connections=1", name)
	}
	waitFor(t, 2*time.Second, "the refusal reason in the log", func() bool {
		return strings.Contains(c.logs(), "all eligible backends are at max_connections")
	})
}

func TestPortRange(t *testing.T) {
	be := nameBackend(t, "ranged")
	for _, kind := range listenKinds {
		t.Run(kind.name, func(t *testing.T) {
			// find three consecutive free ports
			var base int
			for try := 0; try < 20 && base == 0; try++ {
				p := freePort(t)
				ok := true
				for i := 1; i < 3; i++ {
					ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+i))
					if err != nil {
						ok = false
						break
					}
					ln.Close()
				}
				if ok {
					base = p
				}
			}
			if base == 0 {
				t.Skip("no three consecutive free ports")
			}
			listen := kind.listen(fmt.Sprintf("127.0.0.1:%d-%d", base, base+2))
			startCaddy(t, between(map[string]any{"range": staticServer(listen, be.addr)}))
			for i := range 3 {
				if name, err := ask(fmt.Sprintf("127.0.0.1:%d", base+i)); err != nil || name != "ranged" {
					t.Errorf("%s, port %d: %q, %v", listen, base+i, name, err)
				}
			}
		})
	}
}

func TestUnixSocketAndIPv6(t *testing.T) {
	be := nameBackend(t, "v4")
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	be6 := &backendServer{ln: ln6, addr: ln6.Addr().String()}
	go func() {
		for {
			c, err := ln6.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "v6 %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	t.Cleanup(func() { ln6.Close() })

	// a unix socket is a plain Caddy listener (between+tcp is TCP only)
	sock := filepath.Join(t.TempDir(), "between.sock")
	servers := map[string]any{"unix": staticServer("unix/"+sock, be.addr)}
	v6listen := map[string]string{}
	for _, kind := range listenKinds {
		p6, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		v6listen[kind.name] = p6.Addr().String()
		p6.Close()
		v6 := staticServer(kind.listen(v6listen[kind.name]), be6.addr)
		v6["access"] = map[string]any{"default": "deny", "rules": []string{"allow ::1"}}
		servers["v6-"+kind.name] = v6
	}
	startCaddy(t, between(servers))

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "v4\n" {
		t.Fatalf("through the unix socket: %q, %v", line, err)
	}
	for kind, addr := range v6listen {
		name, err := ask(addr)
		if err != nil || !strings.HasPrefix(name, "v6 [::1]:") {
			t.Errorf("IPv6 %s listener to IPv6 backend: %q, %v", kind, name, err)
		}
	}
}
