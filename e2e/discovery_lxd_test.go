package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
)

// lxdWeb creates a stopped instance that answers TCP connections with its name
// on 127.0.0.1:port of the host, through an LXD proxy device (the instance
// has no network of its own: only loopback, which is where its server
// listens). Its labels tell discovery the pool and the port.
func lxdWeb(t testing.TB, d *testpeers.LXD, name, pool string, port int) string {
	t.Helper()
	full := d.Prefix + name
	d.Lxc(t, "init", "bb", full, "-c", "environment.LISTEN=7000", "-c", "user.between.pool="+pool,
		"-c", "user.between.port="+strconv.Itoa(port))
	d.Lxc(t, "config", "device", "add", full, "web", "proxy",
		fmt.Sprintf("listen=tcp:127.0.0.1:%d", port), "connect=tcp:127.0.0.1:7000")
	return full
}

// lxdDiscovered returns the host:port of the backends in the server's
// current discovery result.
func lxdDiscovered(t *testing.T, c *instance, server string) string {
	t.Helper()
	var out []string
	for _, b := range statsBackends(t, c, server) {
		if b.Stats.Discovered {
			out = append(out, b.Host+":"+b.Port)
		}
	}
	return strings.Join(out, ",")
}

// TestDiscoveryLXD drives traffic through the real binary to LXD containers
// that a real LXD daemon starts and stops: a started, labelled container gets
// connections within about one interval; a stopped one leaves the list and
// traffic stops; an LXD that stops answering is logged and the last list
// keeps serving.
func TestDiscoveryLXD(t *testing.T) {
	d := testpeers.StartLXD(t, "e")
	p1, p2 := freePort(t), freePort(t)
	c1, c2 := lxdWeb(t, d, "c1", "e2e", p1), lxdWeb(t, d, "c2", "e2e", p2)
	stray := lxdWeb(t, d, "stray", "other", freePort(t)) // running, but not in the pool
	d.Lxc(t, "start", stray)

	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"lxd": map[string]any{
		"listen":  []string{shared(addr)},
		"balance": map[string]any{"policy": "roundrobin"},
		"discovery": map[string]any{
			"kind":                      "lxd",
			"lxd_server_address":        "unix://" + d.Socket,
			"lxd_container_label_key":   "user.between.pool",
			"lxd_container_label_value": "e2e",
			"lxd_container_port_key":    "user.between.port",
			"lxd_container_interface":   "lo",
			"interval":                  "1s",
			"timeout":                   "1s",
		},
	}}))
	if got, err := ask(addr); err == nil && got != "" {
		t.Fatalf("with no container running, a client got %q", got)
	}

	// A container starts: the first connection that reaches it.
	start := time.Now()
	d.Lxc(t, "start", c1)
	started := time.Since(start)
	waitFor(t, 10*time.Second, c1+" to answer through between", func() bool {
		got, _ := ask(addr)
		return got == c1
	})
	t.Logf("propagation: %s started (lxc start took %v) -> first connection reached it %v after lxc start began",
		c1, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	d.Lxc(t, "start", c2)
	started = time.Since(start)
	waitFor(t, 10*time.Second, c2+" to answer through between", func() bool {
		got, _ := ask(addr)
		return got == c2
	})
	t.Logf("propagation: %s started (lxc start took %v) -> first connection reached it %v after lxc start began",
		c2, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	want := fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", p1, p2)
	if p2 < p1 {
		want = fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", p2, p1)
	}
	if got := lxdDiscovered(t, c, "lxd"); got != want {
		t.Fatalf("discovered %q, want %q (the stray container is not in the pool)", got, want)
	}

	// A container stops: it leaves the list, every client reaches the other.
	start = time.Now()
	d.Lxc(t, "stop", c1)
	waitFor(t, 5*time.Second, c1+" to leave the list", func() bool {
		return lxdDiscovered(t, c, "lxd") == fmt.Sprintf("127.0.0.1:%d", p2)
	})
	t.Logf("propagation: %s stopped -> left the list %v after lxc stop began", c1, time.Since(start).Round(time.Millisecond))
	for i := 0; i < 10; i++ {
		if got, err := ask(addr); got != c2 {
			t.Fatalf("after %s stopped, client %d got %q (%v), want %s", c1, i, got, err, c2)
		}
	}

	// LXD stops answering: the fetch times out, the error is logged and the
	// last list keeps serving.
	d.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			d.Signal(syscall.SIGCONT)
		}
	}()
	var failed string
	waitFor(t, 5*time.Second, "the failed discovery to be logged", func() bool {
		for _, line := range strings.Split(c.logs(), "\n") {
			if strings.Contains(line, "discovery failed") && strings.Contains(line, "lxd: listing instances") &&
				(strings.Contains(line, "timed out") || strings.Contains(line, "deadline exceeded")) {
				failed = line
				return true
			}
		}
		return false
	})
	t.Logf("LXD hangs -> logged: %s", failed)
	for i := 0; i < 5; i++ {
		if got, err := ask(addr); got != c2 {
			t.Fatalf("while LXD hangs, client %d got %q (%v), want %s from the last good list", i, got, err, c2)
		}
	}
	d.Signal(syscall.SIGCONT)
	stopped = false

	// The last container stops: traffic stops.
	start = time.Now()
	d.Lxc(t, "stop", c2)
	waitFor(t, 5*time.Second, "the list to be empty", func() bool { return lxdDiscovered(t, c, "lxd") == "" })
	t.Logf("propagation: %s stopped -> left the list %v after lxc stop began", c2, time.Since(start).Round(time.Millisecond))
	if got, err := ask(addr); err == nil && got != "" {
		t.Fatalf("with every pool container stopped, a client got %q", got)
	}
}
