package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestDiscoveryEtcd drives the etcd source through the binary: a key put
// under the prefix gets traffic, a changed value changes the backend, a
// deleted key gets no more connections, and when etcd is killed the last
// list keeps serving while the error is logged; etcd back, changes flow again.
func TestDiscoveryEtcd(t *testing.T) {
	etcd := startEtcdE2E(t)
	cli := etcd.client(t)
	const prefix = "/between/e2e"
	a, b := newEtcdTimedBackend(t, "a"), newEtcdTimedBackend(t, "b")
	etcd.put(t, cli, prefix+"/"+a.addr, "")

	listen := freeAddr(t)
	servers := map[string]any{"etcd": map[string]any{
		"listen": []string{shared(listen)},
		"discovery": map[string]any{
			"kind":           "etcd",
			"etcd_endpoints": []string{etcd.url},
			"etcd_prefix":    prefix,
			"timeout":        "1s",
		},
	}}
	c := startCaddy(t, between(servers))
	waitFor(t, 10*time.Second, "traffic to backend a", func() bool { got, _ := ask(listen); return got == "a" })

	// A reload that leaves this server unchanged keeps its discovery running
	// on the first config's source, whose Cleanup has run: the watch must
	// go on (everything below happens after it).
	other := nameBackend(t, "other")
	servers["other"] = staticServer(shared(freeAddr(t)), other.addr)
	if code, body := c.load(between(servers)); code != http.StatusOK {
		t.Fatalf("reload: %d %s", code, body)
	}

	// put: the first connection reaches b soon after
	put := time.Now()
	etcd.put(t, cli, prefix+"/"+b.addr, "")
	// ask without pause, so that the first connection to b is not delayed
	// by the polling
	for deadline := time.Now().Add(5 * time.Second); ; {
		if got, _ := ask(listen); got == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no traffic to the new backend b within 5s of the put")
		}
	}
	first, _ := b.first()
	delay := first.Sub(put)
	t.Logf("etcd put -> first connection to the new backend: %v", delay)
	if delay > time.Second {
		t.Errorf("propagation took %v, want under 1s", delay)
	}

	// change: b's new weight shows in the stats
	changed := time.Now()
	etcd.put(t, cli, prefix+"/"+b.addr, "weight=7")
	waitFor(t, 2*time.Second, "weight 7 of b in the stats", func() bool { return etcdBackendWeights(t, c, "etcd")[b.addr] == 7 })
	t.Logf("etcd value change -> new weight in the stats: %v", time.Since(changed))

	// delete: a gets no new connections
	deleted := time.Now()
	etcd.del(t, cli, prefix+"/"+a.addr)
	lastA := deleted
	streak := 0
	waitFor(t, 5*time.Second, "30 answers in a row from b after deleting a", func() bool {
		got, err := ask(listen)
		switch {
		case err != nil:
			streak = 0
		case got == "a":
			lastA, streak = time.Now(), 0
		default:
			streak++
		}
		return streak >= 30
	})
	if lastA == deleted {
		t.Logf("etcd delete -> no connection reached the removed backend after the delete")
	} else {
		t.Logf("etcd delete -> last connection to the removed backend: %v after the delete", lastA.Sub(deleted))
	}
	if lastA.Sub(deleted) > time.Second {
		t.Errorf("the deleted backend got connections for %v, want under 1s", lastA.Sub(deleted))
	}

	if etcdErrorLogged(c.logs(), "etcd") {
		t.Fatal("a discovery error was logged while etcd was up (the reload broke the watch?)")
	}

	// etcd killed: the error is logged, the last list keeps serving
	killed := time.Now()
	etcd.kill()
	waitFor(t, 5*time.Second, "a logged discovery error naming etcd", func() bool { return etcdErrorLogged(c.logs(), "etcd") })
	t.Logf("etcd killed -> error logged after %v", time.Since(killed))
	for i := range 20 {
		if got, err := ask(listen); got != "b" {
			t.Fatalf("ask %d with etcd down = %q, %v; want the last list (b) serving", i, got, err)
		}
	}

	// etcd back: changes land again
	etcd.start(t)
	back := time.Now()
	cli2 := etcd.client(t)
	a.reset()
	etcd.put(t, cli2, prefix+"/"+a.addr, "")
	waitFor(t, 10*time.Second, "traffic to a after etcd came back", func() bool { got, _ := ask(listen); return got == "a" })
	first, _ = a.first()
	t.Logf("etcd restarted -> first connection to a backend put after the restart: %v after the restart", first.Sub(back))
}

// etcdErrorLogged reports whether caddy logged the discovery failure with an
// error mentioning part.
func etcdErrorLogged(logs, part string) bool {
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "discovery failed") {
			continue
		}
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		if msg, _ := entry["error"].(string); strings.Contains(msg, part) {
			return true
		}
	}
	return false
}

// etcdBackendWeights reads the stats of server name: weight by host:port.
func etcdBackendWeights(t *testing.T, c *instance, name string) map[string]int {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers/" + name + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct {
		Backends []struct {
			Host   string `json:"host"`
			Port   string `json:"port"`
			Weight int    `json:"weight"`
		} `json:"backends"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, b := range stats.Backends {
		out[net.JoinHostPort(b.Host, b.Port)] = b.Weight
	}
	return out
}

// etcdTimedBackend answers its name and remembers its first connection.
type etcdTimedBackend struct {
	addr   string
	mu     sync.Mutex
	firstT time.Time
}

func newEtcdTimedBackend(t *testing.T, name string) *etcdTimedBackend {
	tb := &etcdTimedBackend{}
	b := newBackend(t, func(c net.Conn) {
		tb.mu.Lock()
		if tb.firstT.IsZero() {
			tb.firstT = time.Now()
		}
		tb.mu.Unlock()
		fmt.Fprintf(c, "%s\n", name)
	})
	tb.addr = b.addr
	return tb
}

func (tb *etcdTimedBackend) first() (time.Time, bool) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.firstT, !tb.firstT.IsZero()
}

func (tb *etcdTimedBackend) reset() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.firstT = time.Time{}
}

// etcdE2E is an etcd process on free loopback ports, stopped at the end of
// the test.
type etcdE2E struct {
	url  string
	args []string
	mu   sync.Mutex
	out  bytes.Buffer
	cmd  *exec.Cmd
	done chan struct{}
}

func (e *etcdE2E) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.out.Write(p)
}

// startEtcdE2E runs Debian's etcd (package etcd-server); without it the test
// skips, or fails when CI=true.
func startEtcdE2E(t *testing.T) *etcdE2E {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("etcd not installed (Debian package etcd-server)")
		}
		t.Skip("etcd not installed (Debian package etcd-server); skipping")
	}
	dir := t.TempDir()
	client, peer := freePort(t), freePort(t)
	e := &etcdE2E{url: fmt.Sprintf("http://127.0.0.1:%d", client)}
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	e.args = []string{bin, "--name", "e2e", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.url, "--advertise-client-urls", e.url,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e2e=" + peerURL, "--log-level", "warn", "--logger", "zap"}
	t.Cleanup(func() {
		e.kill()
		if t.Failed() {
			e.mu.Lock()
			t.Logf("etcd output:\n%s", tail(e.out.String(), 30))
			e.mu.Unlock()
		}
	})
	e.start(t)
	return e
}

// start runs etcd (again, on the same ports and data) and waits until it
// answers.
func (e *etcdE2E) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(e.args[0], e.args[1:]...)
	cmd.Stdout, cmd.Stderr = e, e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	e.mu.Lock()
	e.cmd, e.done = cmd, done
	e.mu.Unlock()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, 15*time.Second, "etcd to answer", func() bool {
		select {
		case <-done:
			t.Fatalf("etcd exited: %v", cmd.ProcessState)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := cli.Get(ctx, "ready")
		return err == nil
	})
}

// kill ends the process with SIGKILL and waits for it.
func (e *etcdE2E) kill() {
	e.mu.Lock()
	cmd, done := e.cmd, e.done
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

func (e *etcdE2E) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (e *etcdE2E) put(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func (e *etcdE2E) del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}
