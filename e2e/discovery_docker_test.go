package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
	d := startE2EDockerd(t)
	d.docker("network", "create", "--driver", "bridge", "betweene2e")

	t.Run("layer4", func(t *testing.T) { testDockerLayer4(t, d) })
	t.Run("reverse_proxy", func(t *testing.T) { testDockerReverseProxy(t, d) })
}

func testDockerLayer4(t *testing.T, d *e2eDockerd) {
	pubListen, netListen, hostListen := freeAddr(t), freeAddr(t), freeAddr(t)
	hostPort := freePort(t)
	source := func(fields map[string]any) map[string]any {
		s := map[string]any{"kind": "docker", "docker_endpoint": "unix://" + d.sock,
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
		return d.change(func() {
			d.run(name, 7000, "--network", "betweene2e", "--label", "between.e2e=l4", "-p", "127.0.0.1::7000")
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
	ch := d.change(func() { d.docker("stop", "-t", "1", "alpha") })
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
	d.run("gamma", 7000, "--network", "betweene2e", "--label", "between.e2e=other", "-p", "127.0.0.1::7000")
	for range 10 {
		for kind, listen := range listens {
			if got, _ := ask(listen); got == "gamma" {
				t.Fatalf("%s: traffic reached gamma, which lacks the label", kind)
			}
		}
	}

	// host network: one container at a time can own the port
	for _, name := range []string{"host-a", "host-b"} {
		ch = d.change(func() { d.run(name, hostPort, "--network", "host", "--label", "between.e2e=l4") })
		waitFor(t, 5*time.Second, name+" gets traffic", func() bool {
			got, err := ask(hostListen)
			return err == nil && got == name
		})
		ch.check(t, "start "+name+" (host network)", "first connection reaching "+name, time.Since(ch.began))
		if name == "host-b" {
			break // it stays for the daemon stop below
		}
		ch = d.change(func() { d.docker("rm", "-f", name) })
		waitFor(t, 3*time.Second, "no backend after "+name+" is removed", func() bool {
			got, err := ask(hostListen)
			return err != nil && got == ""
		})
		ch.check(t, "rm "+name+" (host network)", "no backend", time.Since(ch.began))
	}

	// the daemon stops: the failure is logged, the last lists keep serving
	// (the containers outlive it: --live-restore)
	stopping := time.Now()
	d.stop()
	stopped := time.Now()
	waitFor(t, 10*time.Second, "a logged docker discovery failure", func() bool {
		return dockerErrorLogged(c.logs(), "docker-pub", d.sock)
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
	d.start()
	restarted := time.Now()
	d.docker("stop", "-t", "1", "host-b")
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

func (d *e2eDockerd) change(cmd func()) dockerChange {
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

// dockerErrorLogged reports whether caddy logged a discovery failure of the
// named handler whose error comes from the docker source and contains part.
func dockerErrorLogged(logs, handler, part string) bool {
	for _, line := range strings.Split(logs, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		msg, _ := e["msg"].(string)
		errText, _ := e["error"].(string)
		if strings.HasPrefix(msg, "discovery failed") && strings.Contains(errText, "docker: ") &&
			strings.Contains(errText, part) && e["handler"] == handler {
			return true
		}
	}
	return false
}

// HTTP reverse_proxy with `dynamic between docker` in a Caddyfile: busybox
// httpd containers that start get requests, stopped ones lose them.
func testDockerReverseProxy(t *testing.T, d *e2eDockerd) {
	dockerRequireModule(t, "http.reverse_proxy.upstreams.between")
	listen := freeAddr(t)
	startCaddyfile(t, `{
	admin ADMIN
}

http://`+listen+` {
	reverse_proxy {
		dynamic between docker {
			endpoint unix://`+d.sock+`
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
		d.docker("run", "-d", "--init", "--name", name, "-e", "NAME="+name, "--network", "betweene2e",
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
		{"stop web-1", func() { d.docker("stop", "-t", "1", "web-1") }, "", []string{"web-2"}},
	} {
		ch := d.change(step.change)
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
	d.docker("stop", "-t", "1", "web-2")
	waitFor(t, 3*time.Second, "503 without containers", func() bool { return get() == "503 Service Unavailable" })
}

// dockerRequireModule skips (fails in CI) unless the binary has the module.
func dockerRequireModule(t *testing.T, id string) {
	t.Helper()
	out, err := exec.Command(caddyBin, "list-modules").Output()
	if err != nil {
		t.Fatalf("caddy list-modules: %v", err)
	}
	if slices.Contains(strings.Fields(string(out)), id) {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the binary has no module %s", id)
	}
	t.Skipf("the binary has no module %s", id)
}

// e2eDockerd is a dockerd started by a test: its own data and exec roots
// under a temp dir, a unix socket, no iptables, no default bridge, and
// --live-restore so that containers outlive a stop of the daemon.
type e2eDockerd struct {
	t      *testing.T
	dir    string
	sock   string
	args   []string
	cli    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startE2EDockerd starts the daemon and imports bb:local (a static busybox
// with /bin/answer, which prints $NAME); the test's cleanup removes every
// container and stops the daemon. Without dockerd, the docker CLI or a static
// busybox the test skips, or fails when CI=true.
func startE2EDockerd(t *testing.T) *e2eDockerd {
	t.Helper()
	missing := func(what string) {
		msg := what + " (Debian docker.io and busybox-static)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		missing("dockerd not installed")
	}
	cli, err := exec.LookPath("docker")
	if err != nil {
		missing("docker CLI not installed")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil || !e2eStaticBinary(busybox) {
		missing("no static busybox")
	}
	if os.Geteuid() != 0 {
		missing("dockerd needs root")
	}
	dir, err := os.MkdirTemp("", "dockerd-e2e-") // short: containerd's sockets live under it
	if err != nil {
		t.Fatal(err)
	}
	d := &e2eDockerd{t: t, dir: dir, sock: filepath.Join(dir, "docker.sock"), cli: cli}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.args = []string{dockerd,
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--host", "unix://" + d.sock,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--iptables=false", "--ip6tables=false", "--bridge=none",
		"--live-restore", "--shutdown-timeout", "2",
	}
	t.Cleanup(d.cleanup)
	d.start()
	d.importImage(busybox)
	return d
}

func e2eStaticBinary(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

func (d *e2eDockerd) start() {
	t := d.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(d.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(d.args[0], d.args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(d.cmd, d.exited)
	client := http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.sock)
		}}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := client.Get("http://docker/_ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-d.exited:
			t.Fatalf("dockerd exited at start:\n%s", d.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("dockerd did not answer within 30s:\n%s", d.logTail())
}

// stop ends dockerd (SIGTERM to its PID) and waits for it.
func (d *e2eDockerd) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

func (d *e2eDockerd) logTail() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	return tail(string(b), 30)
}

// cleanup removes every container and network, stops the daemon and the
// containerd it started, unmounts what it left and removes the directory.
func (d *e2eDockerd) cleanup() {
	if d.t.Failed() {
		d.t.Logf("dockerd log:\n%s", d.logTail())
	}
	if d.cmd == nil {
		// containers that outlived a stopped daemon are removed through one
		func() {
			defer func() { recover() }()
			d.start()
		}()
	}
	if d.cmd != nil {
		if ids, err := d.try(nil, "ps", "-aq"); err == nil && ids != "" {
			d.try(nil, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		d.try(nil, "network", "prune", "-f")
		d.stop()
	}
	if b, err := os.ReadFile(filepath.Join(d.dir, "exec", "containerd", "containerd.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
				p.Signal(syscall.SIGKILL)
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var points []string
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && (f[4] == d.dir || strings.HasPrefix(f[4], d.dir+"/")) {
				points = append(points, f[4])
			}
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) }) // deepest first
		for _, p := range points {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Errorf("removing the daemon's directory: %v", err)
	}
}

// docker runs the CLI against the daemon and returns its trimmed output.
func (d *e2eDockerd) docker(args ...string) string {
	d.t.Helper()
	out, err := d.try(nil, args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (d *e2eDockerd) try(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.sock, "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// run starts a container of bb:local that answers its name on port (nc under
// docker-init, so a stop ends it at once).
func (d *e2eDockerd) run(name string, port int, opts ...string) {
	d.t.Helper()
	args := append([]string{"run", "-d", "--init", "--name", name, "-e", "NAME=" + name}, opts...)
	d.docker(append(args, "bb:local", "nc", "-ll", "-p", strconv.Itoa(port), "-e", "/bin/answer")...)
}

// importImage builds bb:local from a static busybox without pulling.
func (d *e2eDockerd) importImage(busybox string) {
	t := d.t
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = time.Unix(0, 0)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{"bin/", "tmp/", "www/"} {
		add(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin)
	for _, applet := range []string{"sh", "nc", "httpd", "echo"} {
		add(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Name: "bin/answer", Typeflag: tar.TypeReg, Mode: 0o755}, []byte("#!/bin/sh\necho \"$NAME\"\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.try(buf.Bytes(), "import", "-", "bb:local"); err != nil {
		t.Fatalf("docker import: %v", err)
	}
}
