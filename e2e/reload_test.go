package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoLine writes msg and a newline on c and reads the echo back.
func echoLine(c net.Conn, r *bufio.Reader, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo = %q, want %q", line, msg)
	}
	return nil
}

func TestConnectionSurvivesReload(t *testing.T) {
	for _, kind := range listenKinds {
		t.Run(kind.name, func(t *testing.T) { testConnectionSurvivesReload(t, kind.listen) })
	}
}

func testConnectionSurvivesReload(t *testing.T, listen func(string) string) {
	be := echoBackend(t)
	other := nameBackend(t, "other")
	addr := freeAddr(t)
	addr2 := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"echo": staticServer(listen(addr), be.addr)}))

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if err := echoLine(conn, r, "before"); err != nil {
		t.Fatal(err)
	}

	// the same handler in a layer4 server of another name (Caddyfile servers
	// are named srv0, srv1, ... by position)
	renamed := layer4(map[string]any{"srv7": map[string]any{
		"listen": []string{listen(addr)},
		"routes": []any{map[string]any{"handle": []any{betweenHandler("echo", staticServer(listen(addr), be.addr))}}},
	}})
	steps := []struct {
		name string
		apps string
	}{
		{"unchanged handler, another added", between(map[string]any{"echo": staticServer(listen(addr), be.addr), "other": staticServer(listen(addr2), other.addr)})},
		{"handler changed", between(map[string]any{"echo": staticServer(listen(addr), be.addr, other.addr+" weight=0")})},
		{"back to the original", between(map[string]any{"echo": staticServer(listen(addr), be.addr)})},
		{"layer4 server renamed", renamed},
	}
	for _, step := range steps {
		if code, body := c.load(step.apps); code != 200 {
			t.Fatalf("%s: reload: %d %s", step.name, code, body)
		}
		if err := echoLine(conn, r, "after "+step.name); err != nil {
			t.Fatalf("held connection broken by reload (%s): %v", step.name, err)
		}
		// new connections are served by the new config
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := echoLine(nc, bufio.NewReader(nc), "new"); err != nil {
			t.Fatalf("%s: new connection: %v", step.name, err)
		}
		nc.Close()
	}
}

// TestReloadUnderLoadDropsNothing reloads 10 times under a steady stream of
// short connections. On a between+tcp/ address no connection may fail. On a
// plain address Caddy binds a new SO_REUSEPORT socket per config and closes
// the old one, and Linux resets the connections queued on it unless
// net.ipv4.tcp_migrate_req is 1: the failures are only logged there.
func TestReloadUnderLoadDropsNothing(t *testing.T) {
	for _, kind := range listenKinds {
		t.Run(kind.name, func(t *testing.T) {
			total, failed := reloadUnderLoad(t, kind.listen)
			if total < 50 {
				t.Fatalf("only %d connections completed during the reloads", total)
			}
			if kind.name == "plain" {
				t.Logf("plain address: %d connections across 10 reloads, %d failed (net.ipv4.tcp_migrate_req = %s)", total, len(failed), migrateReq())
				for i, err := range failed {
					if i == 3 {
						break
					}
					t.Logf("  %v", err)
				}
				return
			}
			if len(failed) > 0 {
				t.Fatalf("%d of %d connections failed during reloads on %s; first: %v", len(failed), total+len(failed), kind.name, failed[0])
			}
			t.Logf("%d connections across 10 reloads, none failed", total)
		})
	}
}

// migrateReq is the value of net.ipv4.tcp_migrate_req, or "unknown".
func migrateReq() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// reloadUnderLoad runs 4 clients doing one echo per connection while the
// config is reloaded 10 times, and returns how many connections succeeded
// and the errors of those that failed.
func reloadUnderLoad(t *testing.T, listen func(string) string) (int, []error) {
	be := echoBackend(t)
	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"echo": staticServer(listen(addr), be.addr)}))
	stop := make(chan struct{})
	var (
		mu     sync.Mutex
		failed []error
		wg     sync.WaitGroup
		total  atomic.Int64
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err == nil {
					err = echoLine(nc, bufio.NewReader(nc), fmt.Sprintf("w%d-%d", w, i))
					nc.Close()
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, fmt.Errorf("worker %d conn %d: %v", w, i, err))
					mu.Unlock()
					continue
				}
				total.Add(1)
			}
		}()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad() // also when a waitFor or a reload fails
	// wait for the load to run before each reload, so that every reload
	// happens with connections in flight
	for i := range 10 {
		before := total.Load()
		waitFor(t, 5*time.Second, "connections between reloads", func() bool { return total.Load() >= before+20 })
		srv := staticServer(listen(addr), be.addr)
		srv["max_connections"] = 1000 + i // a changed handler each time
		if code, body := c.load(between(map[string]any{"echo": srv})); code != 200 {
			t.Fatalf("reload %d: %d %s", i, code, body)
		}
	}
	before := total.Load()
	waitFor(t, 5*time.Second, "connections after the last reload", func() bool { return total.Load() >= before+20 })
	stopLoad()
	mu.Lock()
	defer mu.Unlock()
	return int(total.Load()), failed
}

// TestBadReloadKeepsOldConfig: a reload that fails is rejected with an error
// that names the layer4 server, the route and the field, and the running
// config keeps serving and stays visible in the admin API.
func TestBadReloadKeepsOldConfig(t *testing.T) {
	be := nameBackend(t, "still-here")
	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"keep": staticServer(shared(addr), be.addr)}))
	other := freeAddr(t)
	withRetries := staticServer(shared(other), be.addr)
	withRetries["retries"] = 1
	withField := func(k string, v any) string {
		s := staticServer(shared(addr), be.addr)
		s[k] = v
		return between(map[string]any{"keep": s})
	}
	stillServing := func(t *testing.T) {
		t.Helper()
		if name, err := ask(addr); err != nil || name != "still-here" {
			t.Errorf("old config stopped serving after a rejected reload: %q, %v", name, err)
		}
		// the admin API still reports the running handler
		if s := c.stats(t, "keep"); s.Total == 0 || len(s.Backends) != 1 {
			t.Fatalf("stats of the running handler after a rejected reload: %+v", s)
		}
	}
	for _, tc := range []struct {
		name string
		apps string
		want []string
	}{
		{"bad duration", withField("client_idle_timeout", "soon"), []string{"server 'keep'", "route 0", "client_idle_timeout"}},
		{"negative max_connections", withField("max_connections", -1), []string{"server 'keep'", "route 0", `between handler "keep"`, "max_connections"}},
		{"udp block on a tcp listener", withField("udp", map[string]any{"max_sessions": 10}), []string{"server 'keep'", "route 0", "udp: only for UDP listeners"}},
		{"one name, two configs", layer4(map[string]any{
			"keep":  map[string]any{"listen": []string{shared(addr)}, "routes": []any{map[string]any{"handle": []any{betweenHandler("keep", staticServer(shared(addr), be.addr))}}}},
			"other": map[string]any{"listen": []string{shared(other)}, "routes": []any{map[string]any{"handle": []any{betweenHandler("keep", withRetries)}}}},
		}), []string{`between handler "keep"`, `layer4 server "keep" route 0`, `layer4 server "other" route 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := c.load(tc.apps)
			if code == 200 {
				t.Fatal("invalid config was accepted")
			}
			msg := strings.ReplaceAll(body, `\"`, `"`)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not mention %s: %s", w, msg)
				}
			}
			stillServing(t)
		})
	}
	if _, err := ask(other); err == nil {
		t.Error("a rejected config left a listener open")
	}

	// A config that fails to start (after provisioning, when the between app
	// may already have started and some layer4 listeners may be open): the
	// order in which Caddy starts apps and layer4 opens servers varies from
	// load to load, so try several times.
	t.Run("listen address in use", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0") // a port Caddy cannot bind
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		for i := range 8 {
			changed := staticServer(shared(addr), be.addr)
			changed["max_connections"] = 500 + i
			code, body := c.load(between(map[string]any{
				"keep": changed,
				"busy": staticServer(shared(busy.Addr().String()), be.addr),
			}))
			if code == 200 {
				t.Fatal("a config with a listen address in use was accepted")
			}
			if !strings.Contains(body, busy.Addr().String()) {
				t.Errorf("error does not name the address: %s", body)
			}
			stillServing(t)
			// a good reload (a changed handler) afterwards
			good := staticServer(shared(addr), be.addr)
			good["max_connections"] = 100 + i
			if code, body := c.load(between(map[string]any{"keep": good})); code != 200 {
				t.Fatalf("a good config after the rejected one: %d %s", code, body)
			}
			stillServing(t)
		}
	})
}

func TestRemovedServerDrains(t *testing.T) {
	for _, kind := range listenKinds {
		t.Run(kind.name, func(t *testing.T) { testRemovedServerDrains(t, kind.listen) })
	}
}

func testRemovedServerDrains(t *testing.T, listen func(string) string) {
	be := echoBackend(t)
	keepBackend := nameBackend(t, "kept")
	gone := freeAddr(t)
	forever := freeAddr(t)
	kept := freeAddr(t)
	drained := staticServer(listen(gone), be.addr)
	drained["drain_timeout"] = "1s"
	c := startCaddy(t, between(map[string]any{
		"drained": drained,
		"forever": staticServer(listen(forever), be.addr), // drain_timeout 0: until the connection ends
		"kept":    staticServer(listen(kept), keepBackend.addr),
	}))
	dc, err := net.Dial("tcp", gone)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dr := bufio.NewReader(dc)
	if err := echoLine(dc, dr, "hi"); err != nil {
		t.Fatal(err)
	}
	fc, err := net.Dial("tcp", forever)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	fr := bufio.NewReader(fc)
	if err := echoLine(fc, fr, "hi"); err != nil {
		t.Fatal(err)
	}

	if code, body := c.load(between(map[string]any{"kept": staticServer(listen(kept), keepBackend.addr)})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	removedAt := time.Now()
	// the removed handlers' ports no longer accept
	for _, a := range []string{gone, forever} {
		waitFor(t, 2*time.Second, "the removed server's port "+a+" to close", func() bool {
			nc, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return true
			}
			nc.Close()
			return false
		})
	}
	// both open connections still work right after the removal
	if err := echoLine(dc, dr, "draining"); err != nil {
		t.Fatalf("connection of removed server closed before drain_timeout: %v", err)
	}
	// the drain timeout closes the first one
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := dc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after drain_timeout: read = %v, want EOF", err)
	}
	if d := time.Since(removedAt); d < 800*time.Millisecond || d > 3*time.Second {
		t.Errorf("drained connection closed %s after the reload, want about 1s", d)
	}
	// drain_timeout 0 keeps the other one open
	if err := echoLine(fc, fr, "still open"); err != nil {
		t.Fatalf("connection of removed server with drain_timeout 0 was closed: %v", err)
	}
	if name, err := ask(kept); err != nil || name != "kept" {
		t.Fatalf("the kept handler: %q, %v", name, err)
	}
}
