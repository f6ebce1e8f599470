package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// rpBackend is an HTTP backend that answers every request with its name and
// counts the requests it got.
type rpBackend struct {
	name string
	addr string
	mu   sync.Mutex
	hits int
}

func newRPBackend(t *testing.T, name string) *rpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rpBackend{name: name, addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.mu.Lock()
		b.hits++
		b.mu.Unlock()
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *rpBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hits
}

var rpClient = &http.Client{Timeout: 5 * time.Second}

// rpGet requests http://addr/ and returns the status, the body (the name of
// the backend that answered) and the X-Gen response header.
func rpGet(addr string) (status int, body, gen string) {
	resp, err := rpClient.Get("http://" + addr + "/")
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Gen")
}

// rpApps is an http app with one server on listen whose reverse_proxy takes
// its upstreams from the Between discovery config disc. With gen > 0 a
// headers handler first sets the response header X-Gen to gen, so that a
// test can tell which config answered.
func rpApps(listen string, disc map[string]any, gen int) string {
	handlers := []any{}
	if gen > 0 {
		handlers = append(handlers, map[string]any{
			"handler":  "headers",
			"response": map[string]any{"set": map[string]any{"X-Gen": []string{fmt.Sprint(gen)}}},
		})
	}
	handlers = append(handlers, map[string]any{
		"handler":           "reverse_proxy",
		"dynamic_upstreams": map[string]any{"source": "between", "discovery": disc},
	})
	apps := map[string]any{"http": map[string]any{"servers": map[string]any{"web": map[string]any{
		"listen":          []string{listen},
		"routes":          []any{map[string]any{"handle": handlers}},
		"automatic_https": map[string]any{"disable": true},
	}}}}
	b, err := json.Marshal(apps)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// rpWriteList replaces the file the exec source reads, atomically.
func rpWriteList(t *testing.T, path string, lines ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// rpFind returns the first value under key anywhere in v (decoded JSON).
func rpFind(v any, key string) any {
	switch v := v.(type) {
	case map[string]any:
		if found, ok := v[key]; ok {
			return found
		}
		for _, sub := range v {
			if found := rpFind(sub, key); found != nil {
				return found
			}
		}
	case []any:
		for _, sub := range v {
			if found := rpFind(sub, key); found != nil {
				return found
			}
		}
	}
	return nil
}

// rpCount counts the log lines with that message.
func rpCount(c *instance, msg string) int {
	n := 0
	for _, line := range strings.Split(c.logs(), "\n") {
		var entry map[string]any
		if strings.Contains(line, msg) && json.Unmarshal([]byte(line), &entry) == nil && entry["msg"] == msg {
			n++
		}
	}
	return n
}

// rpPropagation bounds the time from a change of the exec source's output to
// the first request that reaches the new backend: one interval (100ms) plus
// the run of the command, with room for a loaded machine.
const rpPropagation = 2 * time.Second

// TestReverseProxyBetweenExec: reverse_proxy with `dynamic between exec`
// follows the command's output (backends appear, change, disappear; priority
// groups), keeps the last good list when the output turns to garbage, keeps
// its running discovery across a reload that leaves the discovery config
// unchanged, and starts a new one (stopping the old) when it changes.
func TestReverseProxyBetweenExec(t *testing.T) {
	needModule(t, "between.discovery.exec")
	a, b, c := newRPBackend(t, "A"), newRPBackend(t, "B"), newRPBackend(t, "C")
	list := filepath.Join(t.TempDir(), "backends")
	rpWriteList(t, list, a.addr)
	disc := map[string]any{"kind": "exec", "exec_command": []string{"cat", list}, "interval": "100ms"}
	listen := freeAddr(t)
	inst := startCaddy(t, rpApps(listen, disc, 1))

	// The first request waits for the first fetch instead of failing.
	if status, body, _ := rpGet(listen); status != 200 || body != "A" {
		t.Fatalf("first request: %d %q, want 200 from A", status, body)
	}

	// change: follow within one interval, measured from the write
	steps := []struct {
		what  string
		lines []string
		want  *rpBackend
		never *rpBackend // gets no request once want answered
	}{
		{"A replaced by B", []string{b.addr}, b, a},
		{"C added at priority 2 (B still at 1)", []string{b.addr, c.addr + " priority=2"}, b, c},
		{"B gone: priority 2 serves", []string{c.addr + " priority=2"}, c, b},
	}
	for _, st := range steps {
		start := time.Now()
		rpWriteList(t, list, st.lines...)
		waitFor(t, rpPropagation, st.what, func() bool {
			_, body, _ := rpGet(listen)
			return body == st.want.name
		})
		if st.never != c { // (adding C at priority 2 moves no traffic)
			t.Logf("reverse_proxy via exec, %s: first request to %s after %v", st.what, st.want.name, time.Since(start).Round(time.Millisecond))
		}
		// for five intervals (several fetches of the new list) every
		// request goes to want and none to never
		before := st.never.count()
		for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
			if status, body, _ := rpGet(listen); status != 200 || body != st.want.name {
				t.Fatalf("%s: got %d %q, want %s", st.what, status, body, st.want.name)
			}
		}
		if st.never.count() != before {
			t.Fatalf("%s: %s still got requests", st.what, st.never.name)
		}
	}

	// garbage: logged, the last good list keeps serving
	rpWriteList(t, list, "this is not a backend")
	waitFor(t, rpPropagation, "the discovery error in the log", func() bool {
		for _, line := range strings.Split(inst.logs(), "\n") {
			if strings.Contains(line, "discovery failed; keeping the last good upstream list") &&
				strings.Contains(line, "http.reverse_proxy.upstreams.between") && strings.Contains(line, "not a backend") {
				return true
			}
		}
		return false
	})
	for range 10 {
		if status, body, _ := rpGet(listen); status != 200 || body != "C" {
			t.Fatalf("after a bad fetch: %d %q, want C (the last good list)", status, body)
		}
	}

	// reload, discovery unchanged: the running discovery and its list carry
	// over (the file still holds garbage, so a restarted discovery would
	// have no list at all)
	if code, body := inst.load(rpApps(listen, disc, 2)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "the reloaded config", func() bool {
		_, _, gen := rpGet(listen)
		return gen == "2"
	})
	for range 10 {
		if status, body, gen := rpGet(listen); status != 200 || body != "C" || gen != "2" {
			t.Fatalf("after a reload: %d %q gen %q, want C from config 2", status, body, gen)
		}
	}
	if n := rpCount(inst, "upstream discovery started"); n != 1 {
		t.Fatalf("discovery started %d times; a reload with the same discovery must not restart it", n)
	}
	if n := rpCount(inst, "upstream discovery stopped"); n != 0 {
		t.Fatalf("discovery stopped %d times across a reload that kept it", n)
	}

	// reload, discovery changed: a new discovery, the old one stops
	rpWriteList(t, list, a.addr)
	disc2 := map[string]any{"kind": "exec", "exec_command": []string{"cat", list}, "interval": "150ms"}
	start := time.Now()
	if code, body := inst.load(rpApps(listen, disc2, 3)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	waitFor(t, 5*time.Second, "traffic to A from config 3", func() bool {
		_, body, gen := rpGet(listen)
		return body == "A" && gen == "3"
	})
	t.Logf("reverse_proxy via exec, changed discovery config: traffic to A after %v (reload included)", time.Since(start).Round(time.Millisecond))
	waitFor(t, 5*time.Second, "the old discovery to stop", func() bool {
		return rpCount(inst, "upstream discovery stopped") == 1
	})
	if n := rpCount(inst, "upstream discovery started"); n != 2 {
		t.Fatalf("discovery started %d times, want 2 (one per discovery config)", n)
	}
}

// TestReverseProxyBetweenCaddyfile: the Caddyfile syntax adapts to the
// expected JSON, caddy validate starts no discovery, and a site whose
// reverse_proxy uses `dynamic between static` reaches every backend of the
// lowest priority group and no other.
func TestReverseProxyBetweenCaddyfile(t *testing.T) {
	needModule(t, "http.reverse_proxy.upstreams.between")
	dir := t.TempDir()

	// caddy adapt
	path := filepath.Join(dir, "adapt.caddyfile")
	os.WriteFile(path, []byte("http://127.0.0.1:8080 {\n\treverse_proxy {\n\t\tdynamic between static 127.0.0.1:1 127.0.0.1:2\n\t}\n}\n"), 0o600)
	out, err := exec.Command(caddyBin, "adapt", "--config", path).Output()
	if err != nil {
		t.Fatalf("caddy adapt: %v", err)
	}
	var adapted any
	if err := json.Unmarshal(out, &adapted); err != nil {
		t.Fatalf("caddy adapt printed %s: %v", out, err)
	}
	dyn, _ := json.Marshal(rpFind(adapted, "dynamic_upstreams"))
	want := `{"discovery":{"kind":"static","static_list":["127.0.0.1:1","127.0.0.1:2"]},"source":"between"}`
	if string(dyn) != want {
		t.Fatalf("dynamic_upstreams adapted to %s\nwant %s\nwhole output: %s", dyn, want, out)
	}

	// caddy validate provisions the module but must not run discovery: the
	// exec command would create the marker file
	marker := filepath.Join(dir, "ran")
	path = filepath.Join(dir, "validate.caddyfile")
	os.WriteFile(path, fmt.Appendf(nil, "http://127.0.0.1:%d {\n\treverse_proxy {\n\t\tdynamic between exec sh -c \"touch %s; echo 127.0.0.1:1\" {\n\t\t\tinterval 1s\n\t\t}\n\t}\n}\n", freePort(t), marker), 0o600)
	if out, err := exec.Command(caddyBin, "validate", "--config", path, "--adapter", "caddyfile").CombinedOutput(); err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, tail(string(out), 10))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("caddy validate ran the discovery command")
	}

	// traffic
	a, b, c := newRPBackend(t, "A"), newRPBackend(t, "B"), newRPBackend(t, "C")
	listen := freeAddr(t)
	inst := startCaddyfile(t, fmt.Sprintf(`{
	admin ADMIN
}

http://%s {
	reverse_proxy {
		dynamic between static %s %s {
			list "%s priority=2"
		}
		lb_policy round_robin
	}
}
`, listen, a.addr, b.addr, c.addr))
	seen := map[string]int{}
	for range 20 {
		status, body, _ := rpGet(listen)
		if status != 200 {
			t.Fatalf("request: %d %q", status, body)
		}
		seen[body]++
	}
	if seen["A"] != 10 || seen["B"] != 10 || c.count() != 0 {
		t.Fatalf("20 round-robin requests reached %v (C: %d), want A and B 10 each, C none", seen, c.count())
	}
	if !inst.logged("upstreams updated", map[string]any{"count": 2, "logger": "http.reverse_proxy.upstreams.between"}) {
		t.Error(`no "upstreams updated" log line with count 2`)
	}
}

// TestReverseProxyBetweenNoList: while no fetch has succeeded, reverse_proxy
// answers 503 at once (after the first fetch, not after a timeout) and logs
// the source's error.
func TestReverseProxyBetweenNoList(t *testing.T) {
	needModule(t, "between.discovery.exec")
	disc := map[string]any{"kind": "exec", "exec_command": []string{"sh", "-c", "echo registry unreachable >&2; exit 3"}, "interval": "1s"}
	listen := freeAddr(t)
	inst := startCaddy(t, rpApps(listen, disc, 0))
	start := time.Now()
	if status, body, _ := rpGet(listen); status != http.StatusServiceUnavailable {
		t.Fatalf("no list yet: %d %q, want 503", status, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the 503 took %v; the first fetch fails at once", d)
	}
	waitFor(t, 5*time.Second, "the error in the log", func() bool {
		logs := inst.logs()
		return strings.Contains(logs, "failed getting dynamic upstreams") &&
			strings.Contains(logs, "discovery has no backend list yet") && strings.Contains(logs, "registry unreachable")
	})
}
