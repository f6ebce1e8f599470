package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	"github.com/hashicorp/consul/api"
)

// TestExamples runs the two bootstrap examples with the helpers below
// (registered here, beside the code that drives them).
func init() {
	exercises["config-from-consul.json"] = exerciseConfigFromConsul
	exercises["config-from-etcd.json"] = exerciseConfigFromEtcd
}

// followedKey is a key that caddy instances follow: put writes the key's value.
type followedKey struct {
	put  func(value string)
	stop func()       // stops the store
	back func() error // starts it again after stop (same address)
	// loader is the loader's JSON (without "module") for this key
	module string
	loader map[string]any
}

func consulKV(t *testing.T) (*followedKey, *testpeers.Consul) {
	agent := testpeers.StartConsul(t, testpeers.ConsulOptions{})
	key := "between/e2e/config"
	return &followedKey{
		module: "between_consul",
		loader: map[string]any{"address": agent.HTTP, "key": key, "wait": "30s"},
		put: func(v string) {
			if _, err := agent.API.KV().Put(&api.KVPair{Key: key, Value: []byte(v)}, nil); err != nil {
				t.Fatalf("consul put: %v", err)
			}
		},
		stop: agent.Kill,
		back: func() error { startConsulAt(t, agent.HTTP); return nil },
	}, agent
}

// startConsulAt runs a new consul dev agent whose HTTP API is on addr (where
// a killed one was: testpeers has no restart for Consul, and a dev agent
// keeps no data anyway) and waits until it leads; the test's cleanup kills
// it by PID.
func startConsulAt(t *testing.T, addr string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	cmd := exec.Command(testpeers.ConsulBinary(t), "agent", "-dev", "-node", "between-test-2",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-http-port", port,
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-server-port", strconv.Itoa(freePort(t)), "-serf-lan-port", strconv.Itoa(freePort(t)),
		"-serf-wan-port", "-1", "-data-dir", dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if leader, err := client.Status().Leader(); err == nil && leader != "" {
			return
		}
		select {
		case <-exited:
			t.Fatalf("consul agent exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul agent on %s not ready within 30s", addr)
		}
	}
}

func etcdKV(t *testing.T) (*followedKey, *testpeers.Etcd) {
	etcd := testpeers.StartEtcd(t, nil)
	key := "/between/e2e/config"
	return &followedKey{
		module: "between_etcd",
		loader: map[string]any{"endpoints": []string{etcd.URL}, "key": key, "dial_timeout": "1s"},
		put: func(v string) {
			cli := etcd.Client()
			defer cli.Close()
			testpeers.EtcdPut(t, cli, key, v)
		},
		stop: etcd.Stop,
		back: etcd.Start,
	}, etcd
}

// loaderInstance is a caddy instance started from a bootstrap config that loads
// its config from a key; the stored configs (storedHTTP) give each instance
// its own admin and probe address through the environment.
type loaderInstance struct {
	*instance
	probe string // host:port of the stored config's HTTP server
}

// startFollower runs caddy with a bootstrap config whose admin.config.load
// is the loader of k (with extra fields merged in).
func startFollower(t *testing.T, k *followedKey, extra map[string]any) *loaderInstance {
	t.Helper()
	load := map[string]any{"module": k.module}
	for f, v := range k.loader {
		load[f] = v
	}
	for f, v := range extra {
		load[f] = v
	}
	c := &instance{t: t, admin: freeAddr(t)}
	bootstrap := map[string]any{"admin": map[string]any{"listen": c.admin, "config": map[string]any{"load": load, "load_delay": "100ms"}}}
	return runFollower(t, c, jsonText(t, bootstrap))
}

// runFollower starts c with the bootstrap config text; the environment tells
// the stored configs its admin and probe addresses.
func runFollower(t *testing.T, c *instance, bootstrap string) *loaderInstance {
	t.Helper()
	f := &loaderInstance{instance: c, probe: freeAddr(t)}
	path := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(path, []byte(bootstrap), 0o600); err != nil {
		t.Fatal(err)
	}
	// start copies the environment when it runs the process
	t.Setenv("BETWEEN_E2E_ADMIN", c.admin)
	t.Setenv("BETWEEN_E2E_PROBE", f.probe)
	c.start(t, "run", "--config", path)
	return f
}

// storedHTTP is a stored config: an HTTP server on the instance's probe
// address that answers body, the admin endpoint where the bootstrap had it.
func storedHTTP(body string) string {
	return fmt.Sprintf(`{
  "admin": {"listen": "{env.BETWEEN_E2E_ADMIN}"},
  "apps": {"http": {"servers": {"probe": {
    "listen": ["{env.BETWEEN_E2E_PROBE}"],
    "automatic_https": {"disable": true},
    "routes": [{"handle": [{"handler": "static_response", "body": %q}]}]
  }}}}
}`, body)
}

var loaderProbeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

// answer returns what the instance's probe server answers ("" when nothing).
func (f *loaderInstance) answer() string {
	resp, err := loaderProbeClient.Get("http://" + f.probe + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// switched waits until the instance answers want and returns how long after
// since that was.
func (f *loaderInstance) switched(t *testing.T, want string, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	deadline := since.Add(limit)
	for {
		if f.answer() == want {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s did not serve %q within %v (it answers %q)", f.admin, want, limit, f.answer())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// steady checks that the instance keeps answering want for d.
func (f *loaderInstance) steady(t *testing.T, want string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got := f.answer(); got != want {
			t.Fatalf("instance %s answers %q, want %q to keep serving", f.admin, got, want)
		}
	}
}

func (f *loaderInstance) count(msg string) int {
	return strings.Count(f.logs(), `"msg":"`+msg+`"`)
}

func jsonText(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// propagationLimit is the fleet requirement: a change written once is served
// by every instance within 2s.
const propagationLimit = 2 * time.Second

// testFollow drives one instance through the life of a followed key.
func testFollow(t *testing.T, k *followedKey) {
	k.put(storedHTTP("v1"))
	started := time.Now()
	f := startFollower(t, k, nil)
	t.Logf("bootstrap -> stored config served after %v", f.switched(t, "v1", started, 15*time.Second))

	// a change
	written := time.Now()
	k.put(storedHTTP("v2"))
	d := f.switched(t, "v2", written, propagationLimit)
	t.Logf("change written -> served by the instance in %v", d)

	// the same value again: no reload
	applied := f.count("applying config from the key")
	k.put(storedHTTP("v2"))
	f.steady(t, "v2", 500*time.Millisecond)
	if n := f.count("applying config from the key"); n != applied {
		t.Errorf("writing the same value again applied it again (%d -> %d applies)", applied, n)
	}

	// a value that is not JSON: rejected, logged, the old config serves
	k.put("this is not a config")
	waitFor(t, 5*time.Second, "the rejection to be logged", func() bool {
		return f.count("config from the key rejected; the running config stays until the next change") > 0
	})
	f.steady(t, "v2", 300*time.Millisecond)

	// a value that fails to load (an unknown app): logged, the old config
	// serves, and the loader keeps following
	k.put(`{"apps": {"no_such_app": {}}}`)
	waitFor(t, 5*time.Second, "the failed load to be logged", func() bool {
		return f.count("config from the key failed to load; the running config stays until the next change") > 0
	})
	f.steady(t, "v2", 300*time.Millisecond)
	written = time.Now()
	k.put(storedHTTP("v3"))
	t.Logf("change after a failed load -> served in %v", f.switched(t, "v3", written, propagationLimit))

	// the store goes down: the instance keeps serving and logs the error
	k.stop()
	waitFor(t, 40*time.Second, "the read error to be logged", func() bool {
		return f.count("failed loading dynamic config; will retry") > 0
	})
	f.steady(t, "v3", time.Second)
	// back: a change made after that is picked up
	if err := k.back(); err != nil {
		t.Fatal(err)
	}
	written = time.Now()
	k.put(storedHTTP("v4"))
	t.Logf("store back, change written -> served in %v", f.switched(t, "v4", written, 10*time.Second))
}

func TestConfigLoadConsul(t *testing.T) {
	k, _ := consulKV(t)
	testFollow(t, k)
}

func TestConfigLoadEtcd(t *testing.T) {
	k, _ := etcdKV(t)
	testFollow(t, k)
}

// TestConfigLoadFleet: two instances follow one key; a change written once
// is served by both within 2s.
func TestConfigLoadFleet(t *testing.T) {
	for _, store := range []string{"consul", "etcd"} {
		t.Run(store, func(t *testing.T) {
			var k *followedKey
			if store == "consul" {
				k, _ = consulKV(t)
			} else {
				k, _ = etcdKV(t)
			}
			k.put(storedHTTP("v1"))
			fleet := []*loaderInstance{startFollower(t, k, nil), startFollower(t, k, nil)}
			for _, f := range fleet {
				f.switched(t, "v1", time.Now(), 15*time.Second)
			}
			for round, body := range []string{"v2", "v3", "v4"} {
				written := time.Now()
				k.put(storedHTTP(body))
				var wg sync.WaitGroup
				times := make([]time.Duration, len(fleet))
				for i, f := range fleet {
					wg.Add(1)
					go func() {
						defer wg.Done()
						deadline := written.Add(propagationLimit)
						for time.Now().Before(deadline) {
							if f.answer() == body {
								times[i] = time.Since(written)
								return
							}
							time.Sleep(5 * time.Millisecond)
						}
					}()
				}
				wg.Wait()
				for i, d := range times {
					if d == 0 {
						t.Errorf("round %d: instance %d did not serve %s within %v", round+1, i+1, body, propagationLimit)
					}
				}
				t.Logf("%s round %d: change written once -> served by instance 1 in %v, instance 2 in %v", store, round+1, times[0], times[1])
			}
		})
	}
}

// TestConfigLoadGobetween: a gobetween TOML in the key, adapter gobetween.
func TestConfigLoadGobetween(t *testing.T) {
	k, _ := etcdKV(t)
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	listen := freeAddr(t)
	toml := func(backend string) string {
		return fmt.Sprintf(`[api]
enabled = true
bind = "ADMIN"

[servers.web]
bind = %q
protocol = "tcp"
  [servers.web.discovery]
  kind = "static"
  static_list = [%q]
`, listen, backend)
	}
	c := &instance{t: t, admin: freeAddr(t)}
	load := map[string]any{"module": k.module, "adapter": "gobetween"}
	for f, v := range k.loader {
		load[f] = v
	}
	k.put(strings.Replace(toml(a.addr), "ADMIN", c.admin, 1))
	runFollower(t, c, jsonText(t, map[string]any{"admin": map[string]any{"listen": c.admin, "config": map[string]any{"load": load, "load_delay": "100ms"}}}))
	waitFor(t, 15*time.Second, "the gobetween server to send clients to a", func() bool { got, _ := ask(listen); return got == "a" })
	written := time.Now()
	k.put(strings.Replace(toml(b.addr), "ADMIN", c.admin, 1))
	waitFor(t, propagationLimit, "the changed gobetween server to send clients to b", func() bool { got, _ := ask(listen); return got == "b" })
	t.Logf("gobetween TOML changed -> served in %v", time.Since(written))
	// the admin endpoint of the gobetween config runs Between's API
	if s := c.stats(t, "web"); len(s.Backends) != 1 {
		t.Errorf("stats of web: %+v", s)
	}
}

// exerciseConfigFromConsul runs examples/config-from-consul.json against a
// real agent: its stored config is served, a change is applied.
func exerciseConfigFromConsul(t *testing.T, path string) {
	k, agent := consulKV(t)
	exerciseBootstrapExample(t, path, k, "127.0.0.1:8500", agent.HTTP, "between/config", k.loader["key"].(string))
}

// exerciseConfigFromEtcd runs examples/config-from-etcd.json against a real
// etcd.
func exerciseConfigFromEtcd(t *testing.T, path string) {
	k, etcd := etcdKV(t)
	exerciseBootstrapExample(t, path, k, "http://127.0.0.1:2379", etcd.URL, "/between/config", k.loader["key"].(string))
}

func exerciseBootstrapExample(t *testing.T, path string, k *followedKey, addr, testAddr, key, testKey string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(orig)
	for _, r := range [][2]string{{addr, testAddr}, {fmt.Sprintf("%q", key), fmt.Sprintf("%q", testKey)}} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("the example has no %s", r[0])
		}
		text = strings.ReplaceAll(text, r[0], r[1])
	}
	c := &instance{t: t, admin: freeAddr(t)}
	text = strings.Replace(text, `"localhost:2019"`, fmt.Sprintf("%q", c.admin), 1)
	k.put(storedHTTP("v1"))
	f := runFollower(t, c, text)
	f.switched(t, "v1", time.Now(), 15*time.Second)
	written := time.Now()
	k.put(storedHTTP("v2"))
	t.Logf("%s: change -> served in %v", filepath.Base(path), f.switched(t, "v2", written, propagationLimit))
}

// TestConfigLoadHTTPGobetween checks what docs/config-sources.md says of
// the URL source: Caddy's own http loader with adapter gobetween runs a
// gobetween TOML served over HTTP.
func TestConfigLoadHTTPGobetween(t *testing.T) {
	a := nameBackend(t, "a")
	listen := freeAddr(t)
	c := &instance{t: t, admin: freeAddr(t)}
	toml := fmt.Sprintf("[api]\nenabled = true\nbind = %q\n\n[servers.web]\nbind = %q\n  [servers.web.discovery]\n  kind = \"static\"\n  static_list = [%q]\n", c.admin, listen, a.addr)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain") // the loader's adapter overrides it
		io.WriteString(w, toml)
	}))
	defer srv.Close()
	bootstrap := map[string]any{"admin": map[string]any{"listen": c.admin, "config": map[string]any{
		"load": map[string]any{"module": "http", "url": srv.URL + "/gobetween.toml", "adapter": "gobetween"}, "load_delay": "100ms"}}}
	runFollower(t, c, jsonText(t, bootstrap))
	waitFor(t, 15*time.Second, "the gobetween server from the URL to send clients to a", func() bool { got, _ := ask(listen); return got == "a" })
}

// TestConfigLoadWithoutDelay: a bootstrap without load_delay (Caddy calls
// the loader while it starts) also comes up with the stored config and
// follows the key.
func TestConfigLoadWithoutDelay(t *testing.T) {
	k, _ := etcdKV(t)
	k.put(storedHTTP("v1"))
	c := &instance{t: t, admin: freeAddr(t)}
	load := map[string]any{"module": k.module}
	for f, v := range k.loader {
		load[f] = v
	}
	f := runFollower(t, c, jsonText(t, map[string]any{"admin": map[string]any{"listen": c.admin, "config": map[string]any{"load": load}}}))
	f.switched(t, "v1", time.Now(), 15*time.Second)
	written := time.Now()
	k.put(storedHTTP("v2"))
	t.Logf("change -> served in %v", f.switched(t, "v2", written, propagationLimit))
}
