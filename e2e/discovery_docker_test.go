package e2e

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
)

// dockerPropagation is the most a container start or stop may take to reach
// traffic (the source follows the Engine's events).
const dockerPropagation = time.Second

// TestDiscoveryDocker runs one dockerd (its own roots, --live-restore) and
// drives the docker source through the real binary: layer4 between handlers
// on published ports, on a user-defined network (docker_network) and on the
// host network follow container starts and stops; a stopped daemon keeps the
// last list serving and is logged; HTTP reverse_proxy with `dynamic between
// docker` follows too.
func TestDiscoveryDocker(t *testing.T) {
	d := testpeers.StartDockerd(t, false)
	d.Docker("network", "create", "--driver", "bridge", "betweene2e")

	t.Run("layer4", func(t *testing.T) { testDockerLayer4(t, d) })
	t.Run("reverse_proxy", func(t *testing.T) { testDockerReverseProxy(t, d) })
}

func testDockerLayer4(t *testing.T, d *testpeers.Dockerd) {
	pubListen, netListen, hostListen := freeAddr(t), freeAddr(t), freeAddr(t)
	hostPort := freePort(t)
	source := func(fields map[string]any) map[string]any {
		s := map[string]any{"kind": "docker", "docker_endpoint": "unix://" + d.Sock,
			"docker_container_private_port": 7000, "docker_container_label": "between.e2e=l4"}
		for k, v := range fields {
			s[k] = v
		}
		return s
	}
	c := startCaddy(t, between(map[string]any{
		"docker-pub": map[string]any{"listen": []string{shared(pubListen)}, "discovery": source(nil)},
		"docker-net": map[string]any{"listen": []string{shared(netListen)}, "discovery": source(map[string]any{"docker_network": "betweene2e"})},
		"docker-host": map[string]any{"listen": []string{shared(hostListen)}, "discovery": source(map[string]any{
			"docker_network": "host", "docker_container_private_port": hostPort})},
	}))
	listens := map[string]string{"published ports": pubListen, "docker_network": netListen}

	// run starts a labelled container on the network that publishes 7000 on
	// loopback
	run := func(name string) dockerChange {
		return dockerChangeBy(func() {
			d.Run(name, 7000, "--network", "betweene2e", "--label", "between.e2e=l4", "-p", "127.0.0.1::7000")
		})
	}
	// traffic through every listener reaches want, then goes only to the
	// names in only
	follow := func(what string, ch dockerChange, want string, only ...string) {
		t.Helper()
		start := ch.began
		delays := map[string]time.Duration{}
		waitFor(t, 5*time.Second, fmt.Sprintf("%s: traffic to %s through every listener", what, want), func() bool {
			for kind, listen := range listens {
				if _, reached := delays[kind]; reached {
					continue
				}
				if got, err := ask(listen); err == nil && got == want {
					delays[kind] = time.Since(start)
				}
			}
			return len(delays) == len(listens)
		})
		for kind, delay := range delays {
			ch.check(t, fmt.Sprintf("%s (%s)", what, kind), "first connection reaching "+want, delay)
		}
		for kind, listen := range listens {
			waitFor(t, 3*time.Second, fmt.Sprintf("%s (%s): traffic only to %v", what, kind, only), func() bool {
				for range 6 {
					if got, err := ask(listen); err != nil || !slices.Contains(only, got) {
						return false
					}
				}
				return true
			})
		}
	}

	follow("start alpha", run("alpha"), "alpha", "alpha")
	follow("start beta", run("beta"), "beta", "alpha", "beta")

	// stopping a container stops its traffic
	ch := dockerChangeBy(func() { d.Docker("stop", "-t", "1", "alpha") })
	for kind, listen := range listens {
		waitFor(t, 3*time.Second, "stop alpha ("+kind+"): traffic only to beta", func() bool {
			for range 6 {
				if got, err := ask(listen); err != nil || got != "beta" {
					return false
				}
			}
			return true
		})
		ch.check(t, "stop alpha ("+kind+")", "traffic only to beta", time.Since(ch.began))
	}
	for _, h := range []string{"docker-pub", "docker-net"} {
		if !c.logged("backends discovered", map[string]any{"handler": h, "count": 1, "removed": 1}) {
			t.Errorf("%s logged no discovery update that removed alpha", h)
		}
	}

	// a container without the label is not used
	d.Run("gamma", 7000, "--network", "betweene2e", "--label", "between.e2e=other", "-p", "127.0.0.1::7000")
	for range 10 {
		for kind, listen := range listens {
			if got, _ := ask(listen); got == "gamma" {
				t.Fatalf("%s: traffic reached gamma, which lacks the label", kind)
			}
		}
	}

	// host network: one container at a time can own the port
	for _, name := range []string{"host-a", "host-b"} {
		ch = dockerChangeBy(func() { d.Run(name, hostPort, "--network", "host", "--label", "between.e2e=l4") })
		waitFor(t, 5*time.Second, name+" gets traffic", func() bool {
			got, err := ask(hostListen)
			return err == nil && got == name
		})
		ch.check(t, "start "+name+" (host network)", "first connection reaching "+name, time.Since(ch.began))
		if name == "host-b" {
			break // it stays for the daemon stop below
		}
		ch = dockerChangeBy(func() { d.Docker("rm", "-f", name) })
		waitFor(t, 3*time.Second, "no backend after "+name+" is removed", func() bool {
			got, err := ask(hostListen)
			return err != nil && got == ""
		})
		ch.check(t, "rm "+name+" (host network)", "no backend", time.Since(ch.began))
	}

	// the daemon stops: the failure is logged, the last lists keep serving
	// (the containers outlive it: --live-restore)
	stopping := time.Now()
	d.Stop()
	stopped := time.Now()
	waitFor(t, 10*time.Second, "a logged docker discovery failure", func() bool {
		return loggedDiscoveryError(c.logs(), "docker-pub", "docker: ", d.Sock) != ""
	})
	t.Logf("docker: the daemon took %v to stop; the failure was logged at most %v after it exited",
		stopped.Sub(stopping).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		for kind, listen := range map[string]string{"docker_network": netListen, "host network": hostListen} {
			want := "beta"
			if listen == hostListen {
				want = "host-b"
			}
			if got, err := ask(listen); err != nil || got != want {
				t.Fatalf("daemon stopped (%s): %q, %v; want the last good list (%s)", kind, got, err, want)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	// published ports depend on docker-proxy, which may or may not outlive
	// the daemon; the list itself must stay
	got, err := ask(pubListen)
	t.Logf("published ports while the daemon is down: %q, %v", got, err)
	if c.logged("backends discovered", map[string]any{"handler": "docker-pub", "count": 0}) {
		t.Errorf("docker-pub emptied its list while the daemon was down")
	}

	// back up: the watch resumes and follows a stop again
	d.Start()
	restarted := time.Now()
	d.Docker("stop", "-t", "1", "host-b")
	waitFor(t, 40*time.Second, "host-b's stop followed after the daemon restarted", func() bool {
		got, err := ask(hostListen)
		return err != nil && got == ""
	})
	t.Logf("docker: host-b's stop followed %v after the daemon restarted", time.Since(restarted).Round(time.Millisecond))
}

// dockerChange is a change made with the docker CLI: when the command began
// and when it returned. Docker has done its part (created or stopped the
// container) by then; what follows is discovery's.
type dockerChange struct{ began, returned time.Time }

// dockerChangeBy runs cmd, a change made with the docker CLI, and notes when
// it began and returned.
func dockerChangeBy(cmd func()) dockerChange {
	began := time.Now()
	cmd()
	return dockerChange{began, time.Now()}
}

// check logs the delay from the change's beginning to what happened, and
// fails when it came more than dockerPropagation after the command returned.
func (ch dockerChange) check(t *testing.T, what, reached string, delay time.Duration) {
	t.Helper()
	took := ch.returned.Sub(ch.began)
	after := max(delay-took, 0)
	t.Logf("docker %s: propagation delay %v (change at the source -> %s); the docker command took %v, so %v after it returned",
		what, delay.Round(time.Millisecond), reached, took.Round(time.Millisecond), after.Round(time.Millisecond))
	if after > dockerPropagation {
		t.Errorf("%s: %s %v after the docker command returned, want at most %v", what, reached, after, dockerPropagation)
	}
}

// HTTP reverse_proxy with `dynamic between docker` in a Caddyfile: busybox
// httpd containers that start get requests, stopped ones lose them.
func testDockerReverseProxy(t *testing.T, d *testpeers.Dockerd) {
	needModule(t, "http.reverse_proxy.upstreams.between")
	listen := freeAddr(t)
	startCaddyfile(t, `{
	admin ADMIN
}

http://`+listen+` {
	reverse_proxy {
		dynamic between docker {
			endpoint unix://`+d.Sock+`
			container_private_port 8080
			container_label between.e2e=http
		}
	}
}
`)
	get := func() string {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return resp.Status
		}
		return strings.TrimSpace(string(body))
	}
	run := func(name string) {
		d.Docker("run", "-d", "--init", "--name", name, "-e", "NAME="+name, "--network", "betweene2e",
			"--label", "between.e2e=http", "-p", "127.0.0.1::8080", "bb:local",
			"sh", "-c", `echo "$NAME" > /www/index.html && exec httpd -f -p 8080 -h /www`)
	}
	onlyTo := func(names ...string) func() bool {
		return func() bool {
			for range 6 {
				if !slices.Contains(names, get()) {
					return false
				}
			}
			return true
		}
	}
	for _, step := range []struct {
		what   string
		change func()
		want   string   // a start: the first request reaching it is timed
		only   []string // then requests go only to these
	}{
		{"start web-1", func() { run("web-1") }, "web-1", []string{"web-1"}},
		{"start web-2", func() { run("web-2") }, "web-2", []string{"web-1", "web-2"}},
		{"stop web-1", func() { d.Docker("stop", "-t", "1", "web-1") }, "", []string{"web-2"}},
	} {
		ch := dockerChangeBy(step.change)
		if step.want != "" {
			var delay time.Duration
			waitFor(t, 5*time.Second, step.what+": a request reaching "+step.want, func() bool {
				got := get()
				delay = time.Since(ch.began)
				return got == step.want
			})
			ch.check(t, step.what+" (reverse_proxy)", "first request reaching "+step.want, delay)
		}
		waitFor(t, 3*time.Second, step.what+": requests only to "+strings.Join(step.only, ","), onlyTo(step.only...))
		if step.want == "" {
			ch.check(t, step.what+" (reverse_proxy)", "requests only to "+strings.Join(step.only, ","), time.Since(ch.began))
		}
	}
	// the last container goes: no upstream, 503
	d.Docker("stop", "-t", "1", "web-2")
	waitFor(t, 3*time.Second, "503 without containers", func() bool { return get() == "503 Service Unavailable" })
}
