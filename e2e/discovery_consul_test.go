package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// consulPropagation is the most a Consul change may take to reach traffic.
const consulPropagation = time.Second

// TestDiscoveryConsul: a between handler follows a Consul service (ACLs on,
// a read-only token): instances that register get traffic, deregistered
// ones lose it, a changed port moves it; a handler without a token logs
// the denial. With the token revoked and then with the agent killed, the
// last list keeps serving and the failure is logged.
func TestDiscoveryConsul(t *testing.T) {
	agent := startConsulE2E(t)
	tokenID, token := agent.readTokenWithID(t, "web")
	b1, b2, b3 := newConsulBackend(t, "b1"), newConsulBackend(t, "b2"), newConsulBackend(t, "b3")
	listen, deniedListen := freeAddr(t), freeAddr(t)
	server := func(listen, token string) map[string]any {
		d := map[string]any{"kind": "consul", "consul_host": agent.http, "consul_service_name": "web"}
		if token != "" {
			d["consul_acl_token"] = token
		}
		return map[string]any{"listen": []string{shared(listen)}, "discovery": d}
	}
	c := startCaddy(t, between(map[string]any{
		"consul":        server(listen, token),
		"consul-denied": server(deniedListen, ""),
	}))

	waitFor(t, 10*time.Second, "the permission error of the handler without a token", func() bool {
		return consulErrorLogged(c.logs(), "consul-denied", "permission denied") != ""
	})
	t.Logf("without a token: %s", consulErrorLogged(c.logs(), "consul-denied", "permission denied"))

	// each step changes Consul and waits for the first connection that
	// reaches the backend it names, then for traffic to go only there
	for _, step := range []struct {
		what   string
		change func()
		to     *consulBackend
	}{
		{"register b1", func() { agent.register(t, "web-1", b1.port) }, b1},
		{"register b2, deregister b1", func() { agent.register(t, "web-2", b2.port); agent.deregister(t, "web-1") }, b2},
		{"web-2 moves to b3's port", func() { agent.register(t, "web-2", b3.port) }, b3},
	} {
		start := time.Now()
		step.to.reset()
		step.change()
		var delay time.Duration
		waitFor(t, 5*time.Second, step.what+": a connection reaching "+step.to.name, func() bool {
			ask(listen)
			first, ok := step.to.first()
			delay = first.Sub(start)
			return ok
		})
		t.Logf("consul %s: propagation delay %v (change at the source -> first connection reaching %s)",
			step.what, delay.Round(time.Millisecond), step.to.name)
		if delay > consulPropagation {
			t.Errorf("%s: propagation took %v, want at most %v", step.what, delay, consulPropagation)
		}
		waitFor(t, 3*time.Second, step.what+": traffic only to "+step.to.name, func() bool {
			for range 5 {
				if got, err := ask(listen); err != nil || got != step.to.name {
					return false
				}
			}
			return true
		})
	}

	// deregistering the last instance stops traffic
	agent.deregister(t, "web-2")
	waitFor(t, 3*time.Second, "no backend after the last deregistration", func() bool {
		got, err := ask(listen)
		return err != nil && got == ""
	})
	agent.register(t, "web-1", b1.port)
	waitFor(t, 3*time.Second, "b1 back", func() bool {
		got, err := ask(listen)
		return err == nil && got == "b1"
	})

	// the token is revoked: the denial is logged, and a new instance (b2)
	// gets no traffic because the last good list stays
	if _, err := agent.api.ACL().TokenDelete(tokenID, nil); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	agent.register(t, "web-2", b2.port)
	waitFor(t, 15*time.Second, "a logged permission error after the token was revoked", func() bool {
		return consulErrorLogged(c.logs(), "consul", "permission denied") != ""
	})
	t.Logf("consul: revoked token logged %v after the revocation: %s", time.Since(revoked).Round(time.Millisecond),
		consulErrorLogged(c.logs(), "consul", "permission denied"))
	b2.reset()
	for range 20 {
		if got, err := ask(listen); err != nil || got != "b1" {
			t.Fatalf("with the token revoked: %q, %v; want the last good list (b1)", got, err)
		}
	}
	if _, seen := b2.first(); seen {
		t.Fatal("b2, registered after the token was revoked, got a connection")
	}

	// the agent goes away: the failure is logged, the last list serves
	agent.kill()
	killed := time.Now()
	waitFor(t, 15*time.Second, "a logged discovery failure after the agent was killed", func() bool {
		return consulErrorLogged(c.logs(), "consul", "connection refused") != ""
	})
	t.Logf("consul: failure logged %v after the agent was killed: %s", time.Since(killed).Round(time.Millisecond),
		consulErrorLogged(c.logs(), "consul", "connection refused"))
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		if got, err := ask(listen); err != nil || got != "b1" {
			t.Fatalf("with the agent killed: %q, %v; want the last good list (b1)", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDiscoveryConsulCaddyfile: the consul source written in a Caddyfile,
// once in a layer4 between handler and once behind HTTP reverse_proxy
// (`dynamic between consul`); both follow the service's registrations.
func TestDiscoveryConsulCaddyfile(t *testing.T) {
	requireModule(t, "http.reverse_proxy.upstreams.between")
	agent := startConsulE2E(t)
	token := agent.readToken(t, "web", "web-http")
	l4Listen, httpListen := freeAddr(t), freeAddr(t)
	b1, b2 := newConsulBackend(t, "b1"), newConsulBackend(t, "b2")
	h1, h2 := newConsulHTTPBackend(t, "h1"), newConsulHTTPBackend(t, "h2")
	source := func(service string) string {
		return `consul {
					host ` + agent.http + `
					service_name ` + service + `
					acl_token ` + token + `
				}`
	}
	startCaddyfile(t, `{
	admin ADMIN
	layer4 {
		between+tcp/`+l4Listen+` {
			route {
				between consulcf {
					discovery `+source("web")+`
				}
			}
		}
	}
}

http://`+httpListen+` {
	reverse_proxy {
		dynamic between `+source("web-http")+`
	}
}
`)
	agent.register(t, "web-1", b1.port)
	agent.registerService(t, "web-http", "h-1", h1.port)
	for _, step := range []struct {
		what   string
		change func()
		tcp    string
		http   string
	}{
		{"first instances", func() {}, "b1", "h1"},
		{"replace both", func() {
			agent.register(t, "web-2", b2.port)
			agent.registerService(t, "web-http", "h-2", h2.port)
			agent.deregister(t, "web-1")
			agent.deregister(t, "h-1")
		}, "b2", "h2"},
	} {
		start := time.Now()
		step.change()
		waitFor(t, 5*time.Second, step.what+": layer4 traffic to "+step.tcp, func() bool {
			got, err := ask(l4Listen)
			return err == nil && got == step.tcp
		})
		t.Logf("consul (Caddyfile, layer4) %s: traffic to %s after %v", step.what, step.tcp, time.Since(start).Round(time.Millisecond))
		waitFor(t, 5*time.Second, step.what+": reverse_proxy traffic to "+step.http, func() bool {
			return consulHTTPName(httpListen) == step.http
		})
		delay := time.Since(start)
		t.Logf("consul (Caddyfile, reverse_proxy) %s: traffic to %s after %v", step.what, step.http, delay.Round(time.Millisecond))
		if step.what != "first instances" && delay > consulPropagation {
			t.Errorf("reverse_proxy followed %s after %v, want at most %v", step.what, delay, consulPropagation)
		}
	}
}

// consulErrorLogged returns the first discovery failure that caddy logged
// for the named handler whose error comes from the consul source and
// contains part ("" if none).
func consulErrorLogged(logs, handler, part string) string {
	for _, line := range strings.Split(logs, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		msg, _ := e["msg"].(string)
		errText, _ := e["error"].(string)
		if !strings.HasPrefix(msg, "discovery failed") || !strings.Contains(errText, "consul: ") || !strings.Contains(errText, part) {
			continue
		}
		if e["handler"] == handler {
			return errText
		}
	}
	return ""
}

// requireModule skips (fails in CI) unless the binary under test has the module.
func requireModule(t *testing.T, id string) {
	t.Helper()
	out, err := exec.Command(caddyBin, "list-modules").Output()
	if err != nil {
		t.Fatalf("caddy list-modules: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == id {
			return
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the binary has no module %s", id)
	}
	t.Skipf("the binary has no module %s", id)
}

// consulBackend is a TCP backend that answers its name and remembers when
// its first connection (since reset) arrived.
type consulBackend struct {
	name, port string
	mu         sync.Mutex
	firstAt    time.Time
}

func newConsulBackend(t *testing.T, name string) *consulBackend {
	tb := &consulBackend{name: name}
	b := newBackend(t, func(c net.Conn) {
		tb.mu.Lock()
		if tb.firstAt.IsZero() {
			tb.firstAt = time.Now()
		}
		tb.mu.Unlock()
		fmt.Fprintf(c, "%s\n", name)
	})
	_, tb.port, _ = net.SplitHostPort(b.addr)
	return tb
}

func (tb *consulBackend) reset() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.firstAt = time.Time{}
}

// first returns when the first connection since reset arrived.
func (tb *consulBackend) first() (time.Time, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.firstAt, !tb.firstAt.IsZero()
}

// consulHTTPBackend is an HTTP server that answers every request with its name.
type consulHTTPBackend struct{ port string }

func newConsulHTTPBackend(t *testing.T, name string) consulHTTPBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return consulHTTPBackend{port: port}
}

var consulHTTPClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}

// httpName is the body of GET http://addr/, or "" on any failure.
func consulHTTPName(addr string) string {
	resp, err := consulHTTPClient.Get("http://" + addr + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(body)
}

// consulE2E is a consul agent -dev with ACLs on (default deny), run by a test.
type consulE2E struct {
	http   string // host:port of the HTTP API
	mgmt   string // the management token
	api    *api.Client
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	out    bytes.Buffer
}

func (a *consulE2E) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.out.Write(p)
}

func (a *consulE2E) output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return tail(a.out.String(), 40)
}

// consulAgentBinary returns the Consul agent: $BETWEEN_CONSUL, or the one
// scripts/consul.sh caches. Missing, the test skips (fails in CI).
func consulAgentBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("BETWEEN_CONSUL")
	if bin == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		bin = filepath.Join(cache, "between", "consul-v1.22.0", "consul")
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("no consul agent at %s (build it with scripts/consul.sh or set BETWEEN_CONSUL): %v", bin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// startConsulE2E runs a dev agent with ACLs on free loopback ports (DNS and
// gRPC off) and waits until it leads and its management token works.
func startConsulE2E(t *testing.T) *consulE2E {
	t.Helper()
	bin := consulAgentBinary(t)
	dir := t.TempDir()
	a := &consulE2E{http: freeAddr(t), mgmt: "0c0b3c4d-2e5f-4a6b-8c7d-9e0f1a2b3c4d"}
	hcl := fmt.Sprintf(`disable_update_check = true
acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent = %q
  }
}
`, a.mgmt, a.mgmt)
	cfg := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	_, httpPort, _ := net.SplitHostPort(a.http)
	a.cmd = exec.Command(bin, "agent", "-dev", "-node", "between-e2e",
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", httpPort, "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-server-port", strconv.Itoa(freePort(t)), "-serf-lan-port", strconv.Itoa(freePort(t)),
		"-serf-wan-port", "-1", "-data-dir", filepath.Join(dir, "data"), "-config-file", cfg)
	a.cmd.Stdout, a.cmd.Stderr = a, a
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		a.kill()
		if t.Failed() {
			t.Logf("consul agent output (tail):\n%s", a.output())
		}
	})
	client, err := api.NewClient(&api.Config{Address: a.http, Token: a.mgmt})
	if err != nil {
		t.Fatal(err)
	}
	a.api = client
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			if _, _, err = client.ACL().TokenReadSelf(nil); err == nil {
				return a
			}
		}
		select {
		case <-a.exited:
			t.Fatalf("consul agent exited: %v\n%s", a.cmd.ProcessState, a.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul agent not ready within 30s (last: %v)\n%s", err, a.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops the agent (the process this test started) and waits for it.
func (a *consulE2E) kill() {
	a.cmd.Process.Kill()
	<-a.exited
}

// readToken creates a token that may read these services and every node; it
// returns the token's secret.
func (a *consulE2E) readToken(t *testing.T, services ...string) string {
	_, secret := a.readTokenWithID(t, services...)
	return secret
}

// readTokenWithID is readToken that also returns the token's accessor ID.
func (a *consulE2E) readTokenWithID(t *testing.T, services ...string) (id, secret string) {
	t.Helper()
	rules := `node_prefix "" { policy = "read" }` + "\n"
	for _, s := range services {
		rules += fmt.Sprintf("service %q { policy = \"read\" }\n", s)
	}
	policy, _, err := a.api.ACL().PolicyCreate(&api.ACLPolicy{Name: fmt.Sprintf("read-%d", time.Now().UnixNano()), Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := a.api.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessorID, tok.SecretID
}

// register (re-)registers instance id of service "web" at 127.0.0.1:port.
func (a *consulE2E) register(t *testing.T, id, port string) {
	t.Helper()
	a.registerService(t, "web", id, port)
}

func (a *consulE2E) registerService(t *testing.T, service, id, port string) {
	t.Helper()
	p, _ := strconv.Atoi(port)
	if err := a.api.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: p}); err != nil {
		t.Fatalf("registering %s: %v", id, err)
	}
}

func (a *consulE2E) deregister(t *testing.T, id string) {
	t.Helper()
	if err := a.api.Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("deregistering %s: %v", id, err)
	}
}
