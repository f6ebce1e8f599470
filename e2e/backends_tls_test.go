package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func init() {
	// examples_test.go requires an exercise for every example file
	exercises["tls-client.caddyfile"] = exerciseTLSClient
	exercises["tls-reencrypt.caddyfile"] = exerciseTLSReencrypt
}

// btCert is a self-signed certificate (its own root) for DNS names and IP
// addresses, usable by servers and clients, written as PEM files.
type btCert struct{ cert, key string }

func btNewCert(t testing.TB, cn string, sans ...string) btCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := btCert{filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(c.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// btServer runs `openssl s_server -www` with cert on a free port, plus extra
// flags, and returns its address once it accepts connections. Its answer to
// "GET /" describes the session, including the client certificate.
func btServer(t testing.TB, cert btCert, extra ...string) string {
	t.Helper()
	openssl := needTool(t, "openssl", "openssl")
	addr := freeAddr(t)
	args := append([]string{"s_server", "-accept", addr, "-cert", cert.cert, "-key", cert.key, "-www", "-quiet"}, extra...)
	cmd := exec.Command(openssl, args...)
	out := new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("openssl s_server %s:\n%s", addr, tail(out.String(), 20))
		}
	})
	waitFor(t, 5*time.Second, "openssl s_server on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return addr
}

// btGet sends a plain HTTP/1.0 GET to addr and returns the whole answer
// (empty when the connection closes without one).
func btGet(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(c)
	return string(b)
}

func btAnswered(s string) bool { return strings.HasPrefix(s, "HTTP/1.0 200") }

func TestBackendsTLS(t *testing.T) {
	ca := btNewCert(t, "backend", "db.test", "127.0.0.1")   // the CA Between trusts
	other := btNewCert(t, "other", "db.test", "127.0.0.1")  // signed by another CA
	nameOnly := btNewCert(t, "named", "named.test")         // no IP SAN: needs the sni name
	tls12 := btNewCert(t, "old", "db.test", "127.0.0.1")    // for a backend limited to TLS 1.2
	client := btNewCert(t, "between-client", "client.test") // Between's client certificate

	good := btServer(t, ca)
	bad := btServer(t, other)
	named := btServer(t, nameOnly)
	old := btServer(t, tls12, "-tls1_2")
	mtls := btServer(t, ca, "-Verify", "1", "-CAfile", client.cert)

	tlsWith := func(extra map[string]any) map[string]any {
		m := map[string]any{"root_ca_cert_path": ca.cert}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	srv := func(backends []string, bt map[string]any, extra map[string]any) (string, map[string]any) {
		addr := freeAddr(t)
		s := staticServer(addr, backends...)
		s["backends_tls"] = bt
		s["backend_connection_timeout"] = "2s"
		for k, v := range extra {
			s[k] = v
		}
		return addr, s
	}
	verifyAddr, verify := srv([]string{good}, tlsWith(nil), nil)
	retryAddr, retry := srv([]string{bad, good}, tlsWith(nil), map[string]any{"balance": map[string]any{"policy": "roundrobin"}})
	sniAddr, sni := srv([]string{named + " sni=named.test"}, map[string]any{"root_ca_cert_path": nameOnly.cert}, nil)
	noSNIAddr, noSNI := srv([]string{named}, map[string]any{"root_ca_cert_path": nameOnly.cert}, nil)
	mtlsAddr, mtlsSrv := srv([]string{mtls}, tlsWith(map[string]any{"cert_path": client.cert, "key_path": client.key}), nil)
	noCertAddr, noCert := srv([]string{mtls}, tlsWith(nil), nil)
	minAddr, minSrv := srv([]string{old}, map[string]any{"root_ca_cert_path": tls12.cert, "min_version": "1.3"}, nil)
	oldAddr, oldSrv := srv([]string{old}, map[string]any{"root_ca_cert_path": tls12.cert, "max_version": "1.2"}, nil)

	c := startCaddy(t, between(map[string]any{
		"verify": verify, "retry": retry, "sni": sni, "nosni": noSNI,
		"mtls": mtlsSrv, "nocert": noCert, "min13": minSrv, "max12": oldSrv,
	}))

	t.Run("verification with root_ca_cert_path", func(t *testing.T) {
		if got := btGet(verifyAddr); !btAnswered(got) {
			t.Fatalf("answer through backends_tls: %q", got)
		}
		if !strings.Contains(btGet(verifyAddr), "TLSv1.3") {
			t.Errorf("default versions: want TLS 1.3 negotiated with openssl")
		}
	})
	t.Run("wrong CA fails the dial and retries on the next backend", func(t *testing.T) {
		for i := range 4 {
			if got := btGet(retryAddr); !btAnswered(got) {
				t.Fatalf("request %d: %q", i, got)
			}
		}
		waitFor(t, 2*time.Second, "the failed handshake with the wrong CA's backend in the log", func() bool {
			return c.logged("backend dial failed", map[string]any{"handler": "retry", "backend": bad}) &&
				strings.Contains(c.logs(), "certificate signed by unknown authority")
		})
		if c.logged("backend dial failed", map[string]any{"handler": "retry", "backend": good}) {
			t.Errorf("the good backend's handshake failed")
		}
		s := cmpGetStats(t, c, "retry")
		if s.TotalConnections != 4 || s.RefusedConnections != 0 {
			t.Errorf("retry stats: total %d refused %d, want 4 and 0", s.TotalConnections, s.RefusedConnections)
		}
	})
	t.Run("server_name defaults to the backend's sni", func(t *testing.T) {
		if got := btGet(sniAddr); !btAnswered(got) {
			t.Fatalf("answer with sni=named.test: %q", got)
		}
		// without the sni attribute the host (an IP) is verified, and the
		// certificate has no IP SAN
		if got := btGet(noSNIAddr); got != "" {
			t.Fatalf("answer without sni: %q, want the connection closed", got)
		}
		waitFor(t, 2*time.Second, "the IP verification failure in the log", func() bool {
			return c.logged("backend dial failed", map[string]any{"handler": "nosni"}) &&
				strings.Contains(c.logs(), "doesn't contain any IP SANs")
		})
	})
	t.Run("mTLS client certificate", func(t *testing.T) {
		got := btGet(mtlsAddr)
		if !btAnswered(got) || !strings.Contains(got, "CN=between-client") {
			t.Fatalf("the backend did not report Between's client certificate: %q", got)
		}
		if got := btGet(noCertAddr); btAnswered(got) {
			t.Errorf("a backend requiring a client certificate answered one without: %q", got)
		}
		// In TLS 1.3 the server checks the client's certificate after the
		// client's handshake is done: the refusal ends the session.
		waitFor(t, 2*time.Second, "the backend's refusal without a certificate", func() bool {
			return c.logged("connection closed", map[string]any{"handler": "nocert", "error": "remote error: tls: certificate required"})
		})
	})
	t.Run("min_version 1.3 against a TLS 1.2 backend", func(t *testing.T) {
		if got := btGet(minAddr); got != "" {
			t.Fatalf("answer: %q, want the connection closed", got)
		}
		waitFor(t, 2*time.Second, "the version failure in the log", func() bool {
			return c.logged("backend dial failed", map[string]any{"handler": "min13", "backend": old}) &&
				c.logged("client refused", map[string]any{"handler": "min13"})
		})
		got := btGet(oldAddr)
		if !btAnswered(got) || !strings.Contains(got, "TLSv1.2") {
			t.Errorf("max_version 1.2 against the same backend: %q", got)
		}
	})
}

// exerciseTLSClient: a plain client reaches a TLS-only backend through
// between + backends_tls, which verifies it for backend.internal.
func exerciseTLSClient(t *testing.T, path string) {
	exerciseTLSExample(t, path, 7443, false)
}

// exerciseTLSReencrypt: caddy-l4's tls handler terminates the client's TLS,
// between re-encrypts to the backend with a client certificate.
func exerciseTLSReencrypt(t *testing.T, path string) {
	exerciseTLSExample(t, path, 7445, true)
}

// exerciseTLSExample runs a tls-* example (listener on 127.0.0.1:lbPort,
// backend 127.0.0.1:7444, files under /etc/between/) against openssl
// s_server, which requires a client certificate when reencrypt is set.
func exerciseTLSExample(t *testing.T, path string, lbPort int, reencrypt bool) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), lbPort, 7446)
	backendCert := btNewCert(t, "backend", "backend.internal")
	clientCert := btNewCert(t, "between-client", "client.internal")
	var extra []string
	if reencrypt {
		extra = []string{"-Verify", "1", "-CAfile", clientCert.cert}
	}
	backendAddr := btServer(t, backendCert, extra...)
	text = strings.ReplaceAll(text, "127.0.0.1:7444", backendAddr)
	// the examples verify against the system's roots; the test's CA is private
	text = strings.Replace(text, "server_name backend.internal",
		"server_name backend.internal\nroot_ca_cert_path "+backendCert.cert, 1)
	if reencrypt {
		for from, to := range map[string]string{
			"# root_ca_cert_path /etc/between/backend-ca.pem": "",
			"# cert_path /etc/between/client.pem":             "cert_path " + clientCert.cert,
			"# key_path /etc/between/client.key":              "key_path " + clientCert.key,
		} {
			if !strings.Contains(text, from) {
				t.Fatalf("the example no longer has %q", from)
			}
			text = strings.ReplaceAll(text, from, to)
		}
	}
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	c := startCaddyfile(t, text)
	lb := fmt.Sprintf("127.0.0.1:%d", ports[lbPort])
	var got string
	waitFor(t, 10*time.Second, "an answer through the example", func() bool {
		if reencrypt {
			// Caddy's internal CA signed the listener's certificate
			got = btGetTLS(t, lb, "db.example.test", filepath.Join(c.cmd.Dir, "caddy", "pki", "authorities", "local", "root.crt"))
		} else {
			got = btGet(lb)
		}
		return btAnswered(got)
	})
	if reencrypt && !strings.Contains(got, "CN=between-client") {
		t.Errorf("the backend did not see Between's client certificate: %q", got)
	}
}

// btGetTLS is btGet over TLS for serverName, verified against rootFile.
func btGetTLS(t *testing.T, addr, serverName, rootFile string) string {
	pemBytes, err := os.ReadFile(rootFile)
	if err != nil {
		return "" // not written yet
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: roots})
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(c)
	return string(b)
}
