package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
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
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{ACL: true})
	tokenID, token := consulReadTokenWithID(t, agent, "web")
	b1, b2, b3 := newTimedBackend(t, "b1"), newTimedBackend(t, "b2"), newTimedBackend(t, "b3")
	listen, deniedListen := freeAddr(t), freeAddr(t)
	server := func(listen, token string) map[string]any {
		d := map[string]any{"kind": "consul", "consul_host": agent.HTTP, "consul_service_name": "web"}
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
		return loggedDiscoveryError(c.logs(), "consul-denied", "consul: ", "permission denied") != ""
	})
	t.Logf("without a token: %s", loggedDiscoveryError(c.logs(), "consul-denied", "consul: ", "permission denied"))

	// each step changes Consul and waits for the first connection that
	// reaches the backend it names, then for traffic to go only there
	for _, step := range []struct {
		what   string
		change func()
		to     *timedBackend
	}{
		{"register b1", func() { consulRegister(t, agent, "web", "web-1", b1.port) }, b1},
		{"register b2, deregister b1", func() { consulRegister(t, agent, "web", "web-2", b2.port); agent.Deregister(t, "web-1") }, b2},
		{"web-2 moves to b3's port", func() { consulRegister(t, agent, "web", "web-2", b3.port) }, b3},
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
	agent.Deregister(t, "web-2")
	waitFor(t, 3*time.Second, "no backend after the last deregistration", func() bool {
		got, err := ask(listen)
		return err != nil && got == ""
	})
	consulRegister(t, agent, "web", "web-1", b1.port)
	waitFor(t, 3*time.Second, "b1 back", func() bool {
		got, err := ask(listen)
		return err == nil && got == "b1"
	})

	// the token is revoked: the denial is logged, and a new instance (b2)
	// gets no traffic because the last good list stays
	if _, err := agent.API.ACL().TokenDelete(tokenID, nil); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	consulRegister(t, agent, "web", "web-2", b2.port)
	waitFor(t, 15*time.Second, "a logged permission error after the token was revoked", func() bool {
		return loggedDiscoveryError(c.logs(), "consul", "consul: ", "permission denied") != ""
	})
	t.Logf("consul: revoked token logged %v after the revocation: %s", time.Since(revoked).Round(time.Millisecond),
		loggedDiscoveryError(c.logs(), "consul", "consul: ", "permission denied"))
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
	agent.Kill()
	killed := time.Now()
	waitFor(t, 15*time.Second, "a logged discovery failure after the agent was killed", func() bool {
		return loggedDiscoveryError(c.logs(), "consul", "consul: ", "connection refused") != ""
	})
	t.Logf("consul: failure logged %v after the agent was killed: %s", time.Since(killed).Round(time.Millisecond),
		loggedDiscoveryError(c.logs(), "consul", "consul: ", "connection refused"))
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
	needModule(t, "http.reverse_proxy.upstreams.between")
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{ACL: true})
	token := consulReadToken(t, agent, "web", "web-http")
	l4Listen, httpListen := freeAddr(t), freeAddr(t)
	b1, b2 := newTimedBackend(t, "b1"), newTimedBackend(t, "b2")
	h1, h2 := newConsulHTTPBackend(t, "h1"), newConsulHTTPBackend(t, "h2")
	source := func(service string) string {
		return `consul {
					host ` + agent.HTTP + `
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
	consulRegister(t, agent, "web", "web-1", b1.port)
	consulRegister(t, agent, "web-http", "h-1", h1.port)
	for _, step := range []struct {
		what   string
		change func()
		tcp    string
		http   string
	}{
		{"first instances", func() {}, "b1", "h1"},
		{"replace both", func() {
			consulRegister(t, agent, "web", "web-2", b2.port)
			consulRegister(t, agent, "web-http", "h-2", h2.port)
			agent.Deregister(t, "web-1")
			agent.Deregister(t, "h-1")
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

// consulReadToken creates a token that may read these services and every
// node; it returns the token's secret.
func consulReadToken(t *testing.T, a *testpeers.Consul, services ...string) string {
	t.Helper()
	_, secret := consulReadTokenWithID(t, a, services...)
	return secret
}

// consulReadTokenWithID is consulReadToken that also returns the token's
// accessor ID.
func consulReadTokenWithID(t *testing.T, a *testpeers.Consul, services ...string) (id, secret string) {
	t.Helper()
	rules := `node_prefix "" { policy = "read" }` + "\n"
	for _, s := range services {
		rules += fmt.Sprintf("service %q { policy = \"read\" }\n", s)
	}
	return a.TokenWithID(t, rules)
}

// consulRegister (re-)registers instance id of service at 127.0.0.1:port.
func consulRegister(t *testing.T, a *testpeers.Consul, service, id, port string) {
	t.Helper()
	p, _ := strconv.Atoi(port)
	a.Register(t, &api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: p})
}
