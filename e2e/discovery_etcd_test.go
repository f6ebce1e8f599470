package e2e

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDiscoveryEtcd drives the etcd source through the binary: a key put
// under the prefix gets traffic, a changed value changes the backend, a
// deleted key gets no more connections, and when etcd is killed the last
// list keeps serving while the error is logged; etcd back, changes flow again.
func TestDiscoveryEtcd(t *testing.T) {
	etcd := testpeers.StartEtcd(t, nil)
	cli := etcdClient(t, etcd)
	const prefix = "/between/e2e"
	a, b := newTimedBackend(t, "a"), newTimedBackend(t, "b")
	testpeers.EtcdPut(t, cli, prefix+"/"+a.addr, "")

	listen := freeAddr(t)
	servers := map[string]any{"etcd": map[string]any{
		"listen": []string{shared(listen)},
		"discovery": map[string]any{
			"kind":           "etcd",
			"etcd_endpoints": []string{etcd.URL},
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
	testpeers.EtcdPut(t, cli, prefix+"/"+b.addr, "")
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
	testpeers.EtcdPut(t, cli, prefix+"/"+b.addr, "weight=7")
	waitFor(t, 2*time.Second, "weight 7 of b in the stats", func() bool { return etcdBackendWeights(t, c, "etcd")[b.addr] == 7 })
	t.Logf("etcd value change -> new weight in the stats: %v", time.Since(changed))

	// delete: a gets no new connections
	deleted := time.Now()
	testpeers.EtcdDel(t, cli, prefix+"/"+a.addr)
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

	if loggedDiscoveryError(c.logs(), "", "etcd") != "" {
		t.Fatal("a discovery error was logged while etcd was up (the reload broke the watch?)")
	}

	// etcd killed: the error is logged, the last list keeps serving
	killed := time.Now()
	etcd.Kill()
	waitFor(t, 5*time.Second, "a logged discovery error naming etcd", func() bool { return loggedDiscoveryError(c.logs(), "", "etcd") != "" })
	t.Logf("etcd killed -> error logged after %v", time.Since(killed))
	for i := range 20 {
		if got, err := ask(listen); got != "b" {
			t.Fatalf("ask %d with etcd down = %q, %v; want the last list (b) serving", i, got, err)
		}
	}

	// etcd back: changes land again
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	cli2 := etcdClient(t, etcd)
	a.reset()
	testpeers.EtcdPut(t, cli2, prefix+"/"+a.addr, "")
	waitFor(t, 10*time.Second, "traffic to a after etcd came back", func() bool { got, _ := ask(listen); return got == "a" })
	first, _ = a.first()
	t.Logf("etcd restarted -> first connection to a backend put after the restart: %v after the restart", first.Sub(back))
}

// etcdBackendWeights reads the stats of server name: weight by host:port.
func etcdBackendWeights(t *testing.T, c *instance, name string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, b := range statsBackends(t, c, name) {
		out[net.JoinHostPort(b.Host, b.Port)] = b.Weight
	}
	return out
}

// etcdClient is a client of e, closed at the end of the test.
func etcdClient(t *testing.T, e *testpeers.Etcd) *clientv3.Client {
	t.Helper()
	cli := e.Client()
	t.Cleanup(func() { cli.Close() })
	return cli
}
