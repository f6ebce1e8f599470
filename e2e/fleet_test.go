package e2e

// Fleets: several real caddy processes share certmagic's storage in etcd
// or Consul (caddy.storage.between_etcd, caddy.storage.between_consul) and
// manage the same acme_hosts name against a real Pebble. The storage's
// lock lets exactly one of them place the ACME order; the others load the
// certificate it stored, and all serve the same one through the layer4 tls
// handler in front of between.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
)

func init() {
	exercises["fleet-etcd.json"] = func(t *testing.T, path string) {
		runFleet(t, path, "etcd", 3)
	}
}

// TestFleet runs examples/fleet-etcd.json as fleets of 2 and 3 instances
// on etcd, and as 3 instances on Consul (its storage swapped for
// between_consul).
func TestFleet(t *testing.T) {
	path := filepath.Join(repoRoot(), "examples", "fleet-etcd.json")
	for _, tc := range []struct {
		engine string
		n      int
	}{{"etcd", 2}, {"etcd", 3}, {"consul", 3}} {
		t.Run(fmt.Sprintf("%s-%d", tc.engine, tc.n), func(t *testing.T) {
			runFleet(t, path, tc.engine, tc.n)
		})
	}
}

// runFleet starts engine (etcd or Consul), Pebble, an echo backend and n
// caddy processes, each running the example at path on its own loopback
// port with the storage pointed at the engine, all started before any is
// waited for so that they race for the certificate. It asserts one ACME
// order, one certificate served by all, and (etcd) that the fleet keeps
// serving with the engine stopped.
func runFleet(t *testing.T, path, engine string, n int) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := startPebble(t, true, freePort(t), "")
	be := echoBackend(t)
	const name = "fleet.test"

	var storage map[string]any
	var stopEngine func()
	switch engine {
	case "etcd":
		peer := testpeers.StartEtcd(t, nil)
		storage = map[string]any{"module": "between_etcd", "endpoints": []string{peer.URL}, "prefix": "caddy/fleet-db/"}
		stopEngine = peer.Stop
	case "consul":
		agent := testpeers.StartConsul(t, testpeers.ConsulOptions{})
		storage = map[string]any{"module": "between_consul", "address": agent.HTTP, "prefix": "caddy/fleet-db/"}
		stopEngine = agent.Kill
	}

	fleet := make([]*instance, n)
	addrs := make([]string, n)
	for i := range fleet {
		text, ports := rewritePorts(t, string(orig), 7443)
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", ports[7443])
		text = strings.ReplaceAll(text, "127.0.0.1:7432", be.addr)
		text = strings.ReplaceAll(text, "db.example.com", name)
		var cfg map[string]any
		if err := json.Unmarshal([]byte(text), &cfg); err != nil {
			t.Fatal(err)
		}
		if engine == "etcd" {
			// the example's storage, with the test's etcd
			cfg["storage"].(map[string]any)["endpoints"] = storage["endpoints"]
		} else {
			cfg["storage"] = storage
		}
		// the example's ACME issuer (email kept), pointed at Pebble
		iss := pebbleIssuer(p, ports[7443])
		iss["email"] = "ops@example.com"
		apps := cfg["apps"].(map[string]any)
		apps["tls"].(map[string]any)["automation"].(map[string]any)["policies"].([]any)[0].(map[string]any)["issuers"] = []any{iss}
		fleet[i] = launchCaddy(t, cfg)
	}
	for _, c := range fleet {
		c.waitAdmin(t)
	}

	roots := x509.NewCertPool()
	pem, err := os.ReadFile(p.rootFile)
	if err != nil || !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("Pebble's root: %v", err)
	}
	prints := make([]string, n)
	for i, addr := range addrs {
		waitFor(t, 90*time.Second, fmt.Sprintf("instance %d to serve %s", i+1, name), func() bool {
			prints[i], err = echoOverTLS(addr, name, roots)
			return err == nil
		})
	}
	orders := strings.Count(p.logs(), "Added order")
	obtained := 0
	for i, c := range fleet {
		got := strings.Contains(c.logs(), "certificate obtained successfully")
		if got {
			obtained++
		}
		t.Logf("instance %d: serves certificate %s…; obtained it itself: %v; found it in storage: %v",
			i+1, prints[i][:16], got, strings.Contains(c.logs(), "certificate already exists in storage"))
	}
	t.Logf("%s, %d instances: %d ACME order(s) placed at Pebble, %d instance(s) obtained a certificate", engine, n, orders, obtained)
	if orders != 1 {
		t.Errorf("Pebble logged %d new orders, want exactly 1", orders)
	}
	if obtained != 1 {
		t.Errorf("%d instances logged an obtained certificate, want 1", obtained)
	}
	for i := 1; i < n; i++ {
		if prints[i] != prints[0] {
			t.Errorf("instance %d serves certificate %s, instance 1 serves %s", i+1, prints[i], prints[0])
		}
	}

	// the engine goes away: every instance keeps serving what it has
	stopEngine()
	for i, addr := range addrs {
		fp, err := echoOverTLS(addr, name, roots)
		if err != nil || fp != prints[0] {
			t.Errorf("instance %d with the %s storage down: %v (certificate %s)", i+1, engine, err, fp)
		}
	}
}

// launchCaddy starts caddy with the full JSON config cfg (admin and logging
// are added) without waiting for it; waitAdmin waits.
func launchCaddy(t *testing.T, cfg map[string]any) *instance {
	t.Helper()
	c := &instance{t: t, admin: freeAddr(t), home: t.TempDir()}
	cfg["admin"] = map[string]any{"listen": c.admin}
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "DEBUG"}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(caddyBin, "run", "--config", path)
	c.cmd.Dir = c.home
	c.cmd.Env = append(os.Environ(), "HOME="+c.home, "XDG_DATA_HOME="+c.home, "XDG_CONFIG_HOME="+c.home)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { c.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy (admin %s) output:\n%s", c.admin, tail(c.logs(), logTail()))
		}
	})
	return c
}

// waitAdmin waits until the instance's admin endpoint answers (its config
// is running).
func (c *instance) waitAdmin(t *testing.T) {
	t.Helper()
	waitFor(t, 20*time.Second, "caddy's admin endpoint at "+c.admin, func() bool {
		resp, err := http.Get("http://" + c.admin + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// echoOverTLS connects to addr with TLS for name, verifying the chain
// against roots, sends a line through to the echo backend and reads it
// back; it returns the SHA-256 of the leaf certificate.
func echoOverTLS(addr, name string, roots *x509.CertPool) (string, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "ping through the fleet\n"); err != nil {
		return "", err
	}
	buf := make([]byte, len("ping through the fleet\n"))
	if _, err := io.ReadFull(c, buf); err != nil {
		return "", fmt.Errorf("echo: %w", err)
	}
	if string(buf) != "ping through the fleet\n" {
		return "", fmt.Errorf("echo answered %q", buf)
	}
	sum := sha256.Sum256(c.ConnectionState().PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:]), nil
}
