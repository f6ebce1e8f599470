// Package e2e drives the real caddy binary (cmd/caddy with Between) through
// its admin API: every test starts its own instance on free loopback ports
// with a real config and talks to it over real sockets.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddy-between/between/internal/testutil"
)

// caddyBin is the binary under test, built once in TestMain.
var caddyBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if bin := os.Getenv("BETWEEN_CADDY"); bin != "" {
		caddyBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "between-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	caddyBin = filepath.Join(dir, "caddy")
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(self))
	cmd := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		return 1
	}
	return m.Run()
}

// repoRoot returns the repository's top directory.
func repoRoot() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(self))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// instance is one running caddy process.
type instance struct {
	t     testing.TB
	admin string // host:port of the admin endpoint
	home  string // HOME and XDG dirs of the process (autosave lives there); a new temp dir when ""
	cmd   *exec.Cmd
	out   lockedBuffer // what the process printed
}

// logs returns what the process printed so far.
func (c *instance) logs() string { return c.out.String() }

// lockedBuffer collects a child process's output.
type lockedBuffer = testutil.LockedBuffer

// startCaddy runs caddy with the given JSON config (an object with "apps";
// the admin endpoint is added) and waits until the config is loaded.
func startCaddy(t testing.TB, apps string) *instance {
	t.Helper()
	return startCaddyAt(t, "DEBUG", apps)
}

// startCaddyAt is startCaddy with the default log at level (the memory
// tests log at INFO: caddy-l4 logs every connection at DEBUG, which is not
// the cost of a connection).
func startCaddyAt(t testing.TB, level, apps string) *instance {
	t.Helper()
	c := &instance{t: t, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := fmt.Sprintf(`{"admin":{"listen":%q},"logging":{"logs":{"default":{"level":%q}}},"apps":%s}`, c.admin, level, apps)
	path := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t, "run", "--config", path)
	return c
}

// startCaddyfile runs caddy with a Caddyfile; the admin address is set in the
// global options (the text must contain the token ADMIN where it goes, or it is
// prepended as its own global block when the Caddyfile has none).
func startCaddyfile(t testing.TB, caddyfile string) *instance {
	t.Helper()
	c := &instance{t: t, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	caddyfile = strings.ReplaceAll(caddyfile, "ADMIN", c.admin)
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t, "run", "--config", path, "--adapter", "caddyfile")
	return c
}

func (c *instance) start(t testing.TB, args ...string) {
	t.Helper()
	c.cmd = exec.Command(caddyBin, args...)
	if c.home == "" {
		c.home = t.TempDir()
	}
	c.cmd.Dir = c.home
	c.cmd.Env = append(os.Environ(), "HOME="+c.cmd.Dir, "XDG_DATA_HOME="+c.cmd.Dir, "XDG_CONFIG_HOME="+c.cmd.Dir)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		if t.Failed() {
			t.Logf("caddy output:\n%s", tail(c.logs(), logTail()))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + c.admin + "/config/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				// the admin endpoint answers once the config is running
				return
			}
		}
		if c.cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("caddy did not come up; output:\n%s", tail(c.logs(), 60))
}

// adminClient posts to the admin endpoint on a new connection each time:
// Caddy restarts its admin server on every config load, so a kept-alive
// connection may be closed under a request (and a POST is not retried).
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}

// load replaces the running config's apps (a reload through POST /load).
func (c *instance) load(apps string) (int, string) {
	cfg := fmt.Sprintf(`{"admin":{"listen":%q},"logging":{"logs":{"default":{"level":"DEBUG"}}},"apps":%s}`, c.admin, apps)
	resp, err := adminClient.Post("http://"+c.admin+"/load", "application/json", strings.NewReader(cfg))
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// logged reports whether the process logged a line with that message whose
// fields include every key and value of want.
func (c *instance) logged(msg string, want map[string]any) bool {
	for _, line := range strings.Split(c.logs(), "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil || entry["msg"] != msg {
			continue
		}
		if hasAll(entry, want) {
			return true
		}
	}
	return false
}

// hasAll reports whether m has every key of want with the same value (as
// fmt.Sprint renders them).
func hasAll(m, want map[string]any) bool {
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// event is a Caddy event as the events app logs it (at DEBUG level).
type event struct {
	Name string         `json:"name"`
	Data map[string]any `json:"data"`
}

// events returns the events of that name the process logged so far.
func (c *instance) events(name string) []event {
	var out []event
	for _, line := range strings.Split(c.logs(), "\n") {
		if !strings.Contains(line, `"logger":"events"`) || !strings.Contains(line, name) {
			continue
		}
		var e event
		if json.Unmarshal([]byte(line), &e) == nil && e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// hasEvent reports whether an event of that name was logged whose data has
// every key and value of want.
func (c *instance) hasEvent(name string, want map[string]any) bool {
	for _, e := range c.events(name) {
		if hasAll(e.Data, want) {
			return true
		}
	}
	return false
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// between renders the apps object with one layer4 server per entry of
// servers: the layer4 server is named like the entry and has the entry's
// "listen" addresses and one route whose only handler is a between handler
// of that name with the entry's other fields.
func between(servers map[string]any) string {
	return layer4(betweenServers(servers))
}

// betweenServers is the layer4 servers object that between renders.
func betweenServers(servers map[string]any) map[string]any {
	l4 := map[string]any{}
	for name, v := range servers {
		fields := v.(map[string]any)
		l4[name] = map[string]any{
			"listen": fields["listen"],
			"routes": []any{map[string]any{"handle": []any{betweenHandler(name, fields)}}},
		}
	}
	return l4
}

// layer4 renders the apps object with the given layer4 servers.
func layer4(servers map[string]any) string {
	b, err := json.Marshal(map[string]any{"layer4": map[string]any{"servers": servers}})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// betweenHandler is the between handler named name with the fields of a
// server config (as staticServer makes) other than "listen".
func betweenHandler(name string, fields map[string]any) map[string]any {
	h := map[string]any{"handler": "between", "name": name}
	for k, f := range fields {
		if k != "listen" {
			h[k] = f
		}
	}
	return h
}

// staticServer is a minimal server config for between: listen addresses and
// a static backend list.
func staticServer(listen string, backends ...string) map[string]any {
	return map[string]any{
		"listen":    []string{listen},
		"discovery": map[string]any{"kind": "static", "static_list": backends},
	}
}

// shared is the between+tcp listen address of a host:port: the socket is
// shared across reloads (what the docs recommend).
func shared(hostport string) string { return "between+tcp/" + hostport }

// freeAddr is "127.0.0.1:PORT" with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// listenKinds are the two kinds of TCP listen addresses: Between's shared
// socket and Caddy's plain one (a new SO_REUSEPORT socket per config).
var listenKinds = []struct {
	name   string
	listen func(hostport string) string
}{
	{"between+tcp", shared},
	{"plain", func(hostport string) string { return hostport }},
}

// backendServer is a TCP backend for tests; handle is called per connection.
type backendServer struct {
	ln    net.Listener
	addr  string
	mu    sync.Mutex
	conns int
	wg    sync.WaitGroup
}

func newBackend(t testing.TB, handle func(net.Conn)) *backendServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backendServer{ln: ln, addr: ln.Addr().String()}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns++
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { b.ln.Close() })
	return b
}

func (b *backendServer) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns
}

// nameBackend answers every connection with its name and a newline, then closes.
func nameBackend(t testing.TB, name string) *backendServer {
	return newBackend(t, func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
}

// echoBackend copies everything back until the client half-closes.
func echoBackend(t testing.TB) *backendServer {
	return newBackend(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// ask connects to addr and returns the first line the server sends.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// logTail is how many lines of caddy's output a failed test prints
// (BETWEEN_E2E_LOG_LINES, default 60).
func logTail() int {
	if n, err := strconv.Atoi(os.Getenv("BETWEEN_E2E_LOG_LINES")); err == nil && n > 0 {
		return n
	}
	return 60
}

// needTool returns the path of an external program the test needs. Without
// it the test skips locally and fails in CI (CI=true), where the install
// script must provide it.
func needTool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	testpeers.Missing(t, fmt.Sprintf("%s not found (Debian package %s): CI must install it", name, debianPackage))
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// needModule skips (fails in CI) unless the binary under test has the module.
func needModule(t *testing.T, id string) {
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
	testpeers.Missing(t, "the binary has no module "+id)
}

// statsBackend is one backend of a server as the admin API's stats report it.
type statsBackend struct {
	Host     string `json:"host"`
	Port     string `json:"port"`
	Weight   int    `json:"weight"`
	Priority int    `json:"priority"`
	SNI      string `json:"sni"`
	Stats    struct {
		Discovered bool `json:"discovered"`
	} `json:"stats"`
}

// statsBackends returns the backends that the admin API's stats of the named
// layer4 server list.
func statsBackends(t *testing.T, inst *instance, server string) []statsBackend {
	t.Helper()
	resp, err := http.Get("http://" + inst.admin + "/between/servers/" + server + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Backends []statsBackend `json:"backends"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s.Backends
}

// loggedDiscoveryError returns the error of the first "discovery failed"
// entry in caddy's logs whose error contains every one of parts and, unless
// handler is "", whose handler is handler; "" if there is none.
func loggedDiscoveryError(logs, handler string, parts ...string) string {
	for _, line := range strings.Split(logs, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		msg, _ := e["msg"].(string)
		errText, _ := e["error"].(string)
		if !strings.HasPrefix(msg, "discovery failed") || (handler != "" && e["handler"] != handler) {
			continue
		}
		found := true
		for _, p := range parts {
			found = found && strings.Contains(errText, p)
		}
		if found {
			return errText
		}
	}
	return ""
}

// timedBackend is a TCP backend that answers its name and remembers when its
// first connection (since reset) arrived.
type timedBackend struct {
	name, addr, port string
	mu               sync.Mutex
	firstAt          time.Time
}

func newTimedBackend(t *testing.T, name string) *timedBackend {
	tb := &timedBackend{name: name}
	b := newBackend(t, func(c net.Conn) {
		tb.mu.Lock()
		if tb.firstAt.IsZero() {
			tb.firstAt = time.Now()
		}
		tb.mu.Unlock()
		fmt.Fprintf(c, "%s\n", name)
	})
	tb.addr = b.addr
	_, tb.port, _ = net.SplitHostPort(b.addr)
	return tb
}

// reset forgets the first connection.
func (tb *timedBackend) reset() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.firstAt = time.Time{}
}

// first returns when the first connection since reset arrived.
func (tb *timedBackend) first() (time.Time, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.firstAt, !tb.firstAt.IsZero()
}
