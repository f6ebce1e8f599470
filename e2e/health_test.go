package e2e

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKilledBackendIsAvoided: three backends with a ping check; one is killed
// -> within interval x fails + 1 s no new connection goes to it and no client
// connection fails; when it comes back, traffic returns.
func TestKilledBackendIsAvoided(t *testing.T) {
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	victim := nameBackend(t, "victim")
	victimAddr := victim.addr
	addr := freeAddr(t)
	srv := staticServer(shared(addr), a.addr, b.addr, victimAddr)
	srv["balance"] = map[string]any{"policy": "roundrobin"}
	srv["healthcheck"] = map[string]any{"kind": "ping", "interval": "200ms", "timeout": "100ms", "fails": 2, "passes": 2}
	c := startCaddy(t, between(map[string]any{"hc": srv}))

	// steady client load through the whole test
	var (
		mu       sync.Mutex
		log      []string // backend names in order
		failures atomic.Int32
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name, err := ask(addr)
			if err != nil {
				failures.Add(1)
			}
			mu.Lock()
			log = append(log, name)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(log) }
	waitFor(t, 3*time.Second, "traffic to all three", func() bool { return count() > 30 })

	victim.ln.Close()
	killed := time.Now()
	waitFor(t, 3*time.Second, "the victim to be marked down", func() bool {
		for _, bk := range c.stats(t, "hc").Backends {
			if bk.Host+":"+bk.Port == victimAddr {
				return !bk.Stats.Live
			}
		}
		return false
	})
	detected := time.Since(killed)
	t.Logf("killed backend marked down after %s (interval 200ms x fails 2)", detected.Round(time.Millisecond))
	if detected > 200*time.Millisecond*2+time.Second {
		t.Errorf("detection took %s, want at most interval x fails + 1s", detected)
	}
	if !strings.Contains(c.logs(), `"to":"down"`) {
		t.Error("no log line for the down transition")
	}
	waitFor(t, 2*time.Second, "the between.backend_down event", func() bool {
		return c.hasEvent("between.backend_down", map[string]any{"handler": "hc", "backend": victimAddr})
	})
	mark := count()
	waitFor(t, 2*time.Second, "20 connections after the victim was marked down", func() bool { return count() >= mark+20 })
	mu.Lock()
	after := append([]string(nil), log[mark:]...)
	mu.Unlock()
	for _, n := range after {
		if n == "victim" {
			t.Fatalf("a connection went to the killed backend after it was marked down: %v", after)
		}
	}

	// revive on the same port
	ln, err := net.Listen("tcp", victimAddr)
	if err != nil {
		t.Fatalf("reopening the victim's port: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(conn, "victim\n")
			conn.Close()
		}
	}()
	waitFor(t, 3*time.Second, "traffic to return to the revived backend", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range log[mark:] {
			if n == "victim" {
				return true
			}
		}
		return false
	})
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d client connections failed while a backend was killed and revived", n)
	}
	if !strings.Contains(c.logs(), `"to":"up"`) {
		t.Error("no log line for the up transition")
	}
	waitFor(t, 2*time.Second, "the between.backend_up event", func() bool {
		return c.hasEvent("between.backend_up", map[string]any{"handler": "hc", "backend": victimAddr})
	})
	if !c.hasEvent("between.discovery_updated", map[string]any{"handler": "hc", "count": 3, "added": 3}) {
		t.Errorf("no between.discovery_updated event for the 3 backends: %+v", c.events("between.discovery_updated"))
	}
	for _, e := range c.events("between.backend_down") {
		if _, ok := e.Data["server"]; ok {
			t.Errorf("event data still has the key \"server\": %v", e.Data)
		}
	}
}

// TestHealthCheckFromCaddyfile: a Caddyfile health check and passive health,
// adapted and run by the binary; the unhealthy backend gets no traffic.
func TestHealthCheckFromCaddyfile(t *testing.T) {
	good := nameBackend(t, "good")
	dead := freeAddr(t)
	addr := freeAddr(t)
	c := startCaddyfile(t, fmt.Sprintf(`{
	admin ADMIN
	layer4 {
		between+tcp/%s {
			route {
				between hc {
					balance roundrobin
					retries 0
					discovery static %s %s
					healthcheck ping {
						interval 100ms
						timeout 100ms
						fails 1
						initial_status unhealthy
					}
					passive_health {
						max_fails 1
						fail_duration 10s
					}
				}
			}
		}
	}
}
`, addr, good.addr, dead))
	// initial_status unhealthy: nothing is served until the first check passes
	waitFor(t, 3*time.Second, "the good backend to come up", func() bool {
		name, err := ask(addr)
		return err == nil && name == "good"
	})
	for i := range 20 {
		if name, err := ask(addr); err != nil || name != "good" {
			t.Fatalf("connection %d: %q, %v (retries 0: only healthy backends may be elected)", i, name, err)
		}
	}
	s := c.stats(t, "hc")
	for _, b := range s.Backends {
		if b.Host+":"+b.Port == dead && b.Stats.Live {
			t.Errorf("dead backend reported live")
		}
	}
}

// TestHealthSurvivesServerChange: a backend known to be down stays down when
// the server's config changes, even with a check that would take long to
// find out again.
func TestHealthSurvivesServerChange(t *testing.T) {
	good := nameBackend(t, "good")
	dead := freeAddr(t)
	addr := freeAddr(t)
	srv := staticServer(shared(addr), good.addr, dead)
	srv["retries"] = 0
	srv["balance"] = map[string]any{"policy": "roundrobin"}
	srv["healthcheck"] = map[string]any{"kind": "ping", "interval": "100ms", "fails": 1}
	c := startCaddy(t, between(map[string]any{"hc": srv}))
	isLive := func(a string) bool {
		for _, b := range c.stats(t, "hc").Backends {
			if b.Host+":"+b.Port == a {
				return b.Stats.Live
			}
		}
		t.Fatalf("backend %s not in stats", a)
		return false
	}
	waitFor(t, 3*time.Second, "the dead backend to be marked down", func() bool { return !isLive(dead) })

	// a slow check: 3 failures 10 s apart before it would find out itself
	srv["healthcheck"] = map[string]any{"kind": "ping", "interval": "10s", "fails": 3}
	srv["max_connections"] = 100
	if code, body := c.load(between(map[string]any{"hc": srv})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if isLive(dead) {
		t.Fatal("the changed server forgot that a backend is down")
	}
	for i := range 10 {
		if name, err := ask(addr); err != nil || name != "good" {
			t.Fatalf("connection %d after the change: %q, %v", i, name, err)
		}
	}
}
