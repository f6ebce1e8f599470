package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// startLB runs `caddy lb` with args and the admin endpoint on a free port,
// and waits until its config is loaded.
func startLB(t *testing.T, args ...string) *instance {
	t.Helper()
	c := &instance{t: t, admin: freeAddr(t)}
	c.start(t, append([]string{"lb", "--admin", c.admin}, args...)...)
	return c
}

func TestLBCommandBalances(t *testing.T) {
	a, b := nameBackend(t, "A"), nameBackend(t, "B")
	listen := freeAddr(t)
	c := startLB(t, "--listen", listen, "--to", a.addr, "--to", b.addr, "--balance", "roundrobin")

	waitFor(t, 10*time.Second, "the balancer to serve", func() bool {
		got, err := ask(listen)
		return err == nil && (got == "A" || got == "B")
	})
	var got []string
	for range 6 {
		name, err := ask(listen)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
	}
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Fatalf("roundrobin answers %v: not alternating", got)
		}
	}

	backends := statsBackends(t, c, "lb")
	var addrs []string
	for _, s := range backends {
		addrs = append(addrs, s.Host+":"+s.Port)
	}
	if len(addrs) != 2 || !strings.Contains(strings.Join(addrs, " "), a.addr) || !strings.Contains(strings.Join(addrs, " "), b.addr) {
		t.Fatalf("stats backends %v, want %s and %s", addrs, a.addr, b.addr)
	}
	// the access log is off unless --access-log
	if c.logged("connection closed", nil) {
		t.Error("access log lines without --access-log")
	}
}

func TestLBCommandHealthcheckRemovesKilledBackend(t *testing.T) {
	a, b := nameBackend(t, "A"), nameBackend(t, "B")
	listen := freeAddr(t)
	c := startLB(t, "--listen", listen, "--to", a.addr, "--to", b.addr,
		"--healthcheck", "ping", "--healthcheck-interval", "200ms", "--access-log")
	waitFor(t, 10*time.Second, "both backends to answer", func() bool {
		seen := map[string]bool{}
		for range 4 {
			if name, err := ask(listen); err == nil {
				seen[name] = true
			}
		}
		return seen["A"] && seen["B"]
	})
	if !c.logged("connection closed", nil) {
		t.Error("no access log line with --access-log")
	}
	b.ln.Close()
	live := func(addr string) bool {
		resp, err := http.Get("http://" + c.admin + "/between/servers/lb/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var stats struct {
			Backends []struct {
				Host  string `json:"host"`
				Port  string `json:"port"`
				Stats struct {
					Live bool `json:"live"`
				} `json:"stats"`
			} `json:"backends"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
			t.Fatal(err)
		}
		for _, s := range stats.Backends {
			if s.Host+":"+s.Port == addr {
				return s.Stats.Live
			}
		}
		return false
	}
	waitFor(t, 10*time.Second, "the health check to take the killed backend down", func() bool { return !live(b.addr) })
	if !live(a.addr) {
		t.Fatal("the running backend is down too")
	}
	before := b.count()
	for range 6 {
		if name, err := ask(listen); err != nil || name != "A" {
			t.Fatalf("after B died: %q, %v", name, err)
		}
	}
	if b.count() != before {
		t.Error("the killed backend still got connections")
	}
}

func TestLBCommandHelp(t *testing.T) {
	out, err := exec.Command(caddyBin, "lb", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy lb --help: %v\n%s", err, out)
	}
	for _, flag := range []string{"--listen", "--to", "--balance", "--protocol", "--udp-max-requests", "--udp-max-responses", "--healthcheck", "--healthcheck-interval", "--sni", "--access-log", "--admin",
		`(default ":3000")`, `(default "roundrobin")`, `(default "tcp")`, "Examples:", "caddy lb --listen :3000 --to", "caddy lb --protocol udp"} {
		if !strings.Contains(string(out), flag) {
			t.Errorf("caddy lb --help lacks %q:\n%s", flag, out)
		}
	}
	if strings.Contains(string(out), "not supported yet") {
		t.Errorf("caddy lb --help still says something is not supported yet:\n%s", out)
	}
}

func TestLBCommandBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no backends: give at least one --to"},
		{[]string{"--to", "127.0.0.1"}, `--to \"127.0.0.1\"`},
		{[]string{"--to", "127.0.0.1:1", "--balance", "random"}, "unknown policy"},
		{[]string{"--to", "127.0.0.1:1", "--protocol", "udp", "--healthcheck", "ping"}, "--healthcheck ping: a TCP connect says nothing about a UDP backend"},
		{[]string{"--to", "127.0.0.1:1", "--udp-max-responses", "1"}, "--udp-max-responses: only with --protocol udp"},
		{[]string{"--to", "127.0.0.1:1", "--protocol", "udp", "--udp-max-requests", "x"}, "udp-max-requests"},
		{[]string{"--to", "127.0.0.1:1", "--listen", "localhost"}, "want host:port"},
		{[]string{"--to", "127.0.0.1:1", "extra"}, `unexpected argument "extra"`},
		{[]string{"--to", "127.0.0.1:1", "--nope"}, "unknown flag: --nope"},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			cmd := exec.Command(caddyBin, append([]string{"lb", "--admin", "off"}, tc.args...)...)
			cmd.Dir = t.TempDir()
			cmd.Env = append(cmd.Environ(), "HOME="+cmd.Dir, "XDG_DATA_HOME="+cmd.Dir, "XDG_CONFIG_HOME="+cmd.Dir)
			var buf bytes.Buffer
			cmd.Stdout, cmd.Stderr = &buf, &buf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("caddy lb %v kept running:\n%s", tc.args, buf.String())
			}
			out := buf.Bytes()
			if err == nil {
				t.Fatalf("caddy lb %v exited 0:\n%s", tc.args, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("caddy lb %v: output lacks %q:\n%s", tc.args, tc.want, out)
			}
		})
	}
}

// TestLBCommandUDP: `caddy lb --protocol udp` on a bare address balances
// datagrams over two UDP backends (with --udp-max-responses 1 every datagram
// is a virtual session of its own, so roundrobin alternates for one client)
// and relays each backend's reply; without limits a client stays on its
// backend while it talks (client_idle_timeout 30s).
func TestLBCommandUDP(t *testing.T) {
	a, b := newUDPBackend(t, "A", 1), newUDPBackend(t, "B", 1)
	listen := freeUDPAddr(t)
	c := startLB(t, "--protocol", "udp", "--listen", listen, "--to", a.addr, "--to", b.addr, "--udp-max-responses", "1")
	client := dialUDP(t, listen)
	first := udpAskRetry(t, client, "x")
	if first != "A x 1" && first != "B x 1" {
		t.Fatalf("first reply %q", first)
	}
	udpRoundRobin(t, client, 6)
	if len(statsBackends(t, c, "lb")) != 2 {
		t.Errorf("stats of lb do not list both backends")
	}

	// without limits: one client session sticks to its backend
	listen2 := freeUDPAddr(t)
	startLB(t, "--protocol", "udp", "--listen", listen2, "--to", a.addr, "--to", b.addr)
	sticky := dialUDP(t, listen2)
	want := udpAskRetry(t, sticky, "y")[:1]
	for i := range 4 {
		r, err := udpAsk(sticky, fmt.Sprint(i), 1)
		if err != nil {
			t.Fatal(err)
		}
		if r[0][:1] != want {
			t.Fatalf("reply %q from another backend than the session's %s", r[0], want)
		}
	}
}
