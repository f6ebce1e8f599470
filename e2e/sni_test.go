package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// tlsBackend is a TLS server that greets every client with its name.
func tlsBackend(t *testing.T, name string) *backendServer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return newBackend(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			return
		}
		fmt.Fprintf(tc, "hello from %s (client asked for %q)\n", name, tc.ConnectionState().ServerName)
		tc.Close()
	})
}

// sClient runs `openssl s_client` against addr with the given server name
// ("" sends none) and returns what the server said.
func sClient(t *testing.T, addr, servername string) string {
	t.Helper()
	args := []string{"s_client", "-connect", addr, "-quiet", "-verify_quiet"}
	if servername != "" {
		args = append(args, "-servername", servername)
	} else {
		args = append(args, "-noservername")
	}
	cmd := exec.Command("openssl", args...)
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

func TestSNIRoutingWithOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is not installed; scripts/test.sh should have installed it")
		}
		t.Skip("openssl not installed (scripts/test.sh installs it)")
	}
	alpha, beta, plain := tlsBackend(t, "alpha.test"), tlsBackend(t, "beta.test"), tlsBackend(t, "plain.test")
	rxBackend := tlsBackend(t, "wild.test")
	exact := freeAddr(t)
	reject := freeAddr(t)
	rx := freeAddr(t)

	s1 := staticServer(shared(exact), alpha.addr+" sni=alpha.test", beta.addr+" sni=beta.test", plain.addr)
	s1["sni"] = map[string]any{"read_timeout": "1s"}
	s2 := staticServer(shared(reject), alpha.addr+" sni=alpha.test", plain.addr)
	s2["sni"] = map[string]any{"unexpected_hostname_strategy": "reject"}
	s3 := staticServer(shared(rx), rxBackend.addr+` sni=^[a-z]+\.wild\.test$`, plain.addr)
	s3["sni"] = map[string]any{"hostname_matching_strategy": "regexp"}
	// the same handler config behind caddy-l4's tls matcher: the server name
	// comes from the matcher, and the ClientHello bytes it read are sent on
	matched := freeAddr(t)
	s4 := staticServer(shared(matched), alpha.addr+" sni=alpha.test", beta.addr+" sni=beta.test", plain.addr)
	s4["sni"] = map[string]any{"read_timeout": "1s"}
	servers := func() map[string]any {
		l4 := betweenServers(map[string]any{"exact": s1, "reject": s2, "regexp": s3})
		l4["matched"] = map[string]any{
			"listen": []string{shared(matched)},
			"routes": []any{map[string]any{
				"match":  []any{map[string]any{"tls": map[string]any{}}},
				"handle": []any{betweenHandler("matched", s4)},
			}},
		}
		return l4
	}
	c := startCaddy(t, layer4(servers()))

	for _, tc := range []struct {
		name, addr, sni, want string
	}{
		{"exact alpha", exact, "alpha.test", "hello from alpha.test"},
		{"exact beta", exact, "beta.test", "hello from beta.test"},
		{"exact is case-insensitive", exact, "BETA.test", "hello from beta.test"},
		{"unknown name goes to backends without sni", exact, "gamma.test", "hello from plain.test"},
		{"no SNI goes to backends without sni", exact, "", "hello from plain.test"},
		{"reject: known name", reject, "alpha.test", "hello from alpha.test"},
		{"reject: unknown name refused", reject, "gamma.test", ""},
		{"regexp match", rx, "a.wild.test", "hello from wild.test"},
		{"regexp non-match", rx, "a.b.wild.test", "hello from plain.test"},
		{"after a tls matcher: alpha", matched, "alpha.test", "hello from alpha.test"},
		{"after a tls matcher: beta", matched, "beta.test", "hello from beta.test"},
		{"after a tls matcher: no SNI", matched, "", "hello from plain.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := sClient(t, tc.addr, tc.sni)
			if tc.want == "" {
				if got != "" {
					t.Fatalf("refused client got %q", got)
				}
				return
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("openssl -servername %q got %q, want %q", tc.sni, got, tc.want)
			}
		})
	}
	waitFor(t, 2*time.Second, "the refusal reason", func() bool {
		return strings.Contains(c.logs(), "no backend matches SNI gamma.test")
	})

	t.Run("plain TCP client is treated as no SNI", func(t *testing.T) {
		plainEcho := echoBackend(t)
		addr := freeAddr(t)
		s := staticServer(shared(addr), plainEcho.addr)
		s["sni"] = map[string]any{"read_timeout": "300ms"}
		l4 := servers()
		maps.Copy(l4, betweenServers(map[string]any{"plain": s}))
		if code, body := c.load(layer4(l4)); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// a client that speaks first with non-TLS bytes
		buf := make([]byte, 6)
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		conn.Write([]byte("hello\n"))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello\n" {
			t.Fatalf("non-TLS client through an sni server: %q, %v", buf, err)
		}
	})
}
