package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeGobetween writes a gobetween.toml into a temp dir and returns its path.
func writeGobetween(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gobetween.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGobetweenRun runs a gobetween.toml with `caddy run --adapter gobetween`
// and checks that roundrobin alternates between the two backends.
func TestGobetweenRun(t *testing.T) {
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	front := freeAddr(t)
	inst := &instance{t: t, admin: freeAddr(t)}
	path := writeGobetween(t, fmt.Sprintf(`
[logging]
level = "debug"
output = "stderr"

[api]
enabled = true
bind = %q

[defaults]
backend_connection_timeout = "2s"

[servers.web]
bind = %q
protocol = "tcp"
balance = "roundrobin"

  [servers.web.discovery]
  kind = "static"
  static_list = [%q, %q]
`, inst.admin, front, a.addr, b.addr))
	inst.start(t, "run", "--adapter", "gobetween", "--config", path)

	var got []string
	waitFor(t, 10*time.Second, "the balancer to answer", func() bool {
		name, err := ask(front)
		return err == nil && name != ""
	})
	for range 6 {
		name, err := ask(front)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
	}
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Fatalf("roundrobin did not alternate: %v", got)
		}
	}
	if a.count() == 0 || b.count() == 0 {
		t.Fatalf("a backend got nothing: a=%d b=%d", a.count(), b.count())
	}
}

// TestGobetweenAdaptValidate adapts gobetween configs (a small one and
// gobetween's own sample) with `caddy adapt --adapter gobetween` and checks
// that `caddy validate` accepts the JSON.
func TestGobetweenAdaptValidate(t *testing.T) {
	small := writeGobetween(t, `
[api]
enabled = true
bind = "127.0.0.1:0"
[servers.s]
bind = "127.0.0.1:0"
balance = "leastconn"
  [servers.s.discovery]
  kind = "static"
  static_list = ["127.0.0.1:1 weight=2", "127.0.0.1:2"]
  [servers.s.healthcheck]
  kind = "ping"
  interval = "2s"
  timeout = "1s"
`)
	sample := filepath.Join(repoRoot(), "gobetween", "testdata", "sample.toml")
	udp := filepath.Join(repoRoot(), "gobetween", "testdata", "udp.toml")
	for _, in := range []string{small, sample, udp} {
		t.Run(filepath.Base(in), func(t *testing.T) {
			home := t.TempDir()
			env := append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home)
			cmd := exec.Command(caddyBin, "adapt", "--adapter", "gobetween", "--config", in)
			cmd.Env = env
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("caddy adapt: %v\n%s", err, errText(err))
			}
			var cfg map[string]any
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatalf("adapt did not print JSON: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), `"handler":"between"`) && !strings.Contains(string(out), `"handler": "between"`) {
				t.Fatalf("no between handler in:\n%s", out)
			}
			adapted := filepath.Join(t.TempDir(), "caddy.json")
			if err := os.WriteFile(adapted, out, 0o600); err != nil {
				t.Fatal(err)
			}
			v := exec.Command(caddyBin, "validate", "--config", adapted)
			v.Env = env
			if vout, err := v.CombinedOutput(); err != nil {
				t.Fatalf("caddy validate rejected the adapted config: %v\n%s\n%s", err, vout, out)
			}
		})
	}
}

// TestGobetweenAdaptError checks that a config gobetween would refuse (a udp
// server whose sessions never end) fails `caddy adapt` with a message naming
// the key.
func TestGobetweenAdaptError(t *testing.T) {
	in := writeGobetween(t, `
[servers.dns]
bind = "127.0.0.1:5353"
protocol = "udp"
  [servers.dns.discovery]
  kind = "static"
  static_list = ["127.0.0.1:53"]
`)
	out, err := exec.Command(caddyBin, "adapt", "--adapter", "gobetween", "--config", in).CombinedOutput()
	if err == nil {
		t.Fatalf("adapt accepted a udp server without a limit:\n%s", out)
	}
	if !strings.Contains(string(out), "servers.dns.udp") {
		t.Fatalf("error does not name the key:\n%s", out)
	}
}

func errText(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestGobetweenRunUDP runs a gobetween.toml with a protocol = "udp" server
// (gobetween's [servers.X.udp] keys) and relays datagrams to a UDP backend
// and its replies back; with max_responses = 1 each datagram is a session of
// its own, so roundrobin alternates over the two backends.
func TestGobetweenRunUDP(t *testing.T) {
	a, b := newUDPBackend(t, "a", 1), newUDPBackend(t, "b", 1)
	front := freeUDPAddr(t)
	inst := &instance{t: t, admin: freeAddr(t)}
	path := writeGobetween(t, fmt.Sprintf(`
[api]
enabled = true
bind = %q

[servers.dns]
bind = %q
protocol = "udp"
balance = "roundrobin"

  [servers.dns.udp]
  max_responses = 1

  [servers.dns.discovery]
  kind = "static"
  static_list = [%q, %q]
`, inst.admin, front, a.addr, b.addr))
	inst.start(t, "run", "--adapter", "gobetween", "--config", path)
	client := dialUDP(t, front)
	if got := udpAskRetry(t, client, "q"); got != "a q 1" && got != "b q 1" {
		t.Fatalf("first reply %q", got)
	}
	udpRoundRobin(t, client, 4)
}

// TestGobetweenRunTLS runs a gobetween server with protocol = "tls" and a
// certificate from files: clients complete a verified TLS handshake with the
// adapted server and reach both backends in plaintext (round robin).
func TestGobetweenRunTLS(t *testing.T) {
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	cert := btNewCert(t, "gobetween.test", "gobetween.test")
	front := freeAddr(t)
	inst := &instance{t: t, admin: freeAddr(t)}
	path := writeGobetween(t, fmt.Sprintf(`
[api]
enabled = true
bind = %q

[servers.secure]
bind = %q
protocol = "tls"
balance = "roundrobin"

  [servers.secure.tls]
  cert_path = %q
  key_path = %q
  min_version = "tls1.2"

  [servers.secure.discovery]
  kind = "static"
  static_list = [%q, %q]
`, inst.admin, front, cert.cert, cert.key, a.addr, b.addr))
	inst.start(t, "run", "--adapter", "gobetween", "--config", path)

	pool := x509.NewCertPool()
	pem, err := os.ReadFile(cert.cert)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	askTLS := func() (string, error) {
		d := &net.Dialer{Timeout: 2 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", front, &tls.Config{ServerName: "gobetween.test", RootCAs: pool})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	waitFor(t, 10*time.Second, "the TLS server to answer", func() bool {
		name, err := askTLS()
		return err == nil && name != ""
	})
	seen := map[string]int{}
	for range 6 {
		name, err := askTLS()
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Fatalf("round robin over TLS reached %v, want both a and b", seen)
	}
}
