package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// askFrom is ask with a chosen loopback source address.
func askFrom(src, addr string) (string, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// holdBackend names itself and keeps the connection open until the client closes.
func holdBackend(t *testing.T, name string) *backendServer {
	return newBackend(t, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		io.Copy(io.Discard, c)
	})
}

func TestPoliciesEndToEnd(t *testing.T) {
	t.Run("iphash and iphash1 are sticky per client IP", func(t *testing.T) {
		for _, policy := range []string{"iphash", "iphash1"} {
			b1, b2, b3 := nameBackend(t, "a"), nameBackend(t, "b"), nameBackend(t, "c")
			addr := freeAddr(t)
			srv := staticServer(shared(addr), b1.addr, b2.addr, b3.addr)
			srv["balance"] = map[string]any{"policy": policy}
			startCaddy(t, between(map[string]any{"p": srv}))
			seen := map[string]bool{}
			for i := 1; i <= 12; i++ {
				src := fmt.Sprintf("127.0.0.%d", i)
				first, err := askFrom(src, addr)
				if err != nil {
					t.Fatal(err)
				}
				for range 3 {
					again, err := askFrom(src, addr)
					if err != nil || again != first {
						t.Fatalf("%s: client %s went to %q then %q", policy, src, first, again)
					}
				}
				seen[first] = true
			}
			if len(seen) < 2 {
				t.Errorf("%s: 12 client IPs all went to one backend %v", policy, seen)
			}
		}
	})

	t.Run("iphash1 use_port spreads one IP's connections", func(t *testing.T) {
		b1, b2, b3 := nameBackend(t, "a"), nameBackend(t, "b"), nameBackend(t, "c")
		addr := freeAddr(t)
		srv := staticServer(shared(addr), b1.addr, b2.addr, b3.addr)
		srv["balance"] = map[string]any{"policy": "iphash1", "use_port": true}
		startCaddy(t, between(map[string]any{"p": srv}))
		seen := map[string]bool{}
		for range 30 {
			name, err := ask(addr)
			if err != nil {
				t.Fatal(err)
			}
			seen[name] = true
		}
		if len(seen) < 2 {
			t.Errorf("use_port: 30 connections from one IP used only %v", seen)
		}
	})

	t.Run("leastconn avoids the busy backend", func(t *testing.T) {
		b1, b2 := holdBackend(t, "a"), holdBackend(t, "b")
		addr := freeAddr(t)
		srv := staticServer(shared(addr), b1.addr, b2.addr)
		srv["balance"] = map[string]any{"policy": "leastconn"}
		startCaddy(t, between(map[string]any{"p": srv}))
		count := map[string]int{}
		for range 10 { // each connection stays open (deferred close) and counts
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			count[strings.TrimSpace(line)]++
		}
		if count["a"] != 5 || count["b"] != 5 {
			t.Errorf("10 held connections over 2 backends: %v, want 5/5", count)
		}
	})

	t.Run("leastbandwidth avoids the loaded backend", func(t *testing.T) {
		// "a" streams 1 MB/s to its client; "b" is quiet
		streamer := newBackend(t, func(c net.Conn) {
			fmt.Fprintf(c, "a\n")
			chunk := make([]byte, 50<<10)
			for range 100 {
				if _, err := c.Write(chunk); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		quiet := holdBackend(t, "b")
		addr := freeAddr(t)
		srv := staticServer(shared(addr), streamer.addr, quiet.addr)
		srv["balance"] = map[string]any{"policy": "leastbandwidth"}
		inst := startCaddy(t, between(map[string]any{"p": srv}))
		// open connections until one lands on the streamer
		var loaded net.Conn
		for range 20 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			c.SetDeadline(time.Now().Add(3 * time.Second))
			line, _ := r.ReadString('\n')
			if strings.TrimSpace(line) == "a" {
				loaded = c
				c.SetDeadline(time.Time{})
				go io.Copy(io.Discard, r)
				break
			}
		}
		if loaded == nil {
			t.Fatal("no connection reached the streaming backend")
		}
		// the stream moves ~1 MB/s: wait until its per-second rate shows it
		waitFor(t, 5*time.Second, "the stream's rate to show in stats", func() bool {
			for _, b := range inst.stats(t, "p").Backends {
				if b.Port == strings.Split(streamer.addr, ":")[1] {
					return b.Stats.RxSecond > 200<<10
				}
			}
			return false
		})
		for i := range 10 {
			name, err := ask(addr)
			if err != nil || name != "b" {
				t.Fatalf("connection %d went to %q (%v), want the idle backend b; stats %+v", i, name, err, inst.stats(t, "p").Backends)
			}
		}
	})

	t.Run("first is ordered failover", func(t *testing.T) {
		primary, backup := nameBackend(t, "primary"), nameBackend(t, "backup")
		dead := freeAddr(t)
		// list order decides, whatever the addresses: list the higher address first
		hi, lo, hiName := primary, backup, "primary"
		if primary.addr < backup.addr {
			hi, lo, hiName = backup, primary, "backup"
		}
		ordered := freeAddr(t)
		srv := staticServer(shared(ordered), hi.addr, lo.addr)
		srv["balance"] = map[string]any{"policy": "first"}
		deadFirst := freeAddr(t)
		srv2 := staticServer(shared(deadFirst), dead, backup.addr)
		srv2["balance"] = map[string]any{"policy": "first"}
		startCaddy(t, between(map[string]any{"p": srv, "p2": srv2}))
		for range 5 {
			if name, err := ask(ordered); err != nil || name != hiName {
				t.Fatalf("first: got %q, %v, want %q, the first listed", name, err, hiName)
			}
			if name, err := ask(deadFirst); err != nil || name != "backup" {
				t.Fatalf("first with a dead first backend: got %q, %v", name, err)
			}
		}
	})

	t.Run("priority groups fail over", func(t *testing.T) {
		main, spare := holdBackend(t, "main"), nameBackend(t, "spare")
		addr := freeAddr(t)
		srv := staticServer(shared(addr), main.addr+" priority=1 max_connections=2", spare.addr+" priority=2")
		startCaddy(t, between(map[string]any{"p": srv}))
		for i := range 2 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			if strings.TrimSpace(line) != "main" {
				t.Fatalf("connection %d: %q, want the priority 1 backend", i, line)
			}
		}
		if name, err := ask(addr); err != nil || name != "spare" {
			t.Fatalf("with priority 1 full: got %q, %v, want spare", name, err)
		}
	})
}

// TestLeastConnSpreadsABurst: 200 simultaneous long-lived connections over 4
// backends end up within 50 ± 5 each (a connection counts as active from its
// election, so a burst does not pile onto one backend).
func TestLeastConnSpreadsABurst(t *testing.T) {
	var addrs []string
	for i := range 4 {
		addrs = append(addrs, holdBackend(t, fmt.Sprint(i)).addr)
	}
	addr := freeAddr(t)
	srv := staticServer(shared(addr), addrs...)
	srv["balance"] = map[string]any{"policy": "leastconn"}
	c := startCaddy(t, between(map[string]any{"lc": srv}))
	start := make(chan struct{})
	conns := make(chan net.Conn, 200)
	for range 200 {
		go func() {
			<-start
			nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				conns <- nil
				return
			}
			conns <- nc
		}()
	}
	close(start)
	for range 200 {
		nc := <-conns
		if nc == nil {
			t.Fatal("a dial failed")
		}
		defer nc.Close()
	}
	waitFor(t, 5*time.Second, "200 active connections", func() bool { return c.stats(t, "lc").Active == 200 })
	for _, b := range c.stats(t, "lc").Backends {
		if n := b.Stats.Active; n < 45 || n > 55 {
			t.Errorf("backend %s:%s holds %d of 200 connections, want 50 ± 5", b.Host, b.Port, n)
		}
	}
}
