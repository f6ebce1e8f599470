package e2e

// Composition with caddy-l4: the between handler behind caddy-l4's tls
// matcher, remote_ip matcher + close handler, proxy_protocol handler and tls
// handler, and in front of a server-speaks-first backend, through the real
// binary.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cmpHandler is a between handler with a static backend list plus extra fields.
func cmpHandler(name string, extra map[string]any, backends ...string) map[string]any {
	h := map[string]any{
		"handler":   "between",
		"name":      name,
		"discovery": map[string]any{"kind": "static", "static_list": backends},
	}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

// cmpApps renders the apps object: one layer4 server "S" listening on listen
// with routes, plus other apps (e.g. "tls").
func cmpApps(listen string, routes []map[string]any, other map[string]any) string {
	apps := map[string]any{
		"layer4": map[string]any{"servers": map[string]any{
			"S": map[string]any{"listen": []string{listen}, "routes": routes},
		}},
	}
	for k, v := range other {
		apps[k] = v
	}
	b, err := json.Marshal(apps)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// cmpStats is the body of GET /between/servers/{name}/stats.
type cmpStats struct {
	ActiveConnections  int64  `json:"active_connections"`
	TotalConnections   uint64 `json:"total_connections"`
	RefusedConnections uint64 `json:"refused_connections"`
	RxTotal            uint64 `json:"rx_total"`
	TxTotal            uint64 `json:"tx_total"`
	Backends           []struct {
		Host  string `json:"host"`
		Port  string `json:"port"`
		Stats struct {
			TotalConnections uint64 `json:"total_connections"`
		} `json:"stats"`
	} `json:"backends"`
}

// backendTotal is the total_connections of the backend at addr (-1: not listed).
func (s cmpStats) backendTotal(addr string) int64 {
	for _, b := range s.Backends {
		if net.JoinHostPort(b.Host, b.Port) == addr {
			return int64(b.Stats.TotalConnections)
		}
	}
	return -1
}

func cmpGetStats(t testing.TB, c *instance, name string) cmpStats {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers/" + name + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("stats of %s: %d %s", name, resp.StatusCode, body)
	}
	var s cmpStats
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("stats of %s: %v in %s", name, err, body)
	}
	return s
}

// cmpCert is a self-signed certificate for names, usable both as a server
// certificate and as its own root.
type cmpCert struct {
	cert    tls.Certificate
	pool    *x509.CertPool
	certPEM []byte
	keyPEM  []byte
}

func cmpNewCert(t testing.TB, names ...string) cmpCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	tc := cmpCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		pool:    x509.NewCertPool(),
	}
	if tc.cert, err = tls.X509KeyPair(tc.certPEM, tc.keyPEM); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	tc.pool.AddCert(leaf)
	return tc
}

// files writes the certificate and key as PEM files and returns their paths.
func (tc cmpCert) files(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, tc.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, tc.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// cmpTLSNameBackend terminates TLS with tc and answers every connection with
// its name and a newline.
func cmpTLSNameBackend(t testing.TB, tc cmpCert, name string) *backendServer {
	cfg := &tls.Config{Certificates: []tls.Certificate{tc.cert}}
	return newBackend(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		fmt.Fprintf(tc, "%s\n", name)
		tc.Close()
	})
}

// cmpAskTLS connects to addr with TLS for serverName, verifying against roots,
// and returns the first line the server sends.
func cmpAskTLS(addr, serverName string, roots *x509.CertPool) (string, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// cmpExpectClosed reads from c and requires that the server closes it without
// sending a byte.
func cmpExpectClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	switch {
	case n > 0:
		t.Fatalf("%s: got %d bytes, want the connection closed", what, n)
	case err == nil:
		t.Fatalf("%s: read returned nothing and no error", what)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("%s: connection still open after 3s, want it closed", what)
	}
}

// TestComposeTLSMatcherSNI: one listener, caddy-l4's tls matcher routes by
// SNI to two between handlers, each with its own TLS backend (TLS passes
// through: the backends terminate it).
func TestComposeTLSMatcherSNI(t *testing.T) {
	alphaCert, betaCert := cmpNewCert(t, "alpha.test"), cmpNewCert(t, "beta.test")
	alpha := cmpTLSNameBackend(t, alphaCert, "alpha")
	beta := cmpTLSNameBackend(t, betaCert, "beta")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{
		{"match": []any{map[string]any{"tls": map[string]any{"sni": []string{"alpha.test"}}}},
			"handle": []any{cmpHandler("alpha", nil, alpha.addr)}},
		{"match": []any{map[string]any{"tls": map[string]any{"sni": []string{"beta.test"}}}},
			"handle": []any{cmpHandler("beta", nil, beta.addr)}},
	}, nil))

	cmpCheckSNIRouting(t, c, addr, alpha, beta, alphaCert, betaCert)

	// a server name no route matches reaches neither handler
	if got, err := cmpAskTLS(addr, "gamma.test", alphaCert.pool); err == nil {
		t.Fatalf("gamma.test was served: %q", got)
	}
	if a, b := cmpGetStats(t, c, "alpha").TotalConnections, cmpGetStats(t, c, "beta").TotalConnections; a != 3 || b != 3 {
		t.Fatalf("after an unmatched SNI: alpha %d, beta %d connections, want 3 and 3", a, b)
	}
}

// cmpCheckSNIRouting sends 3 clients for alpha.test and 3 for beta.test to addr
// and checks the answers (the certificate each backend presented is verified
// too) and both handlers' statistics.
func cmpCheckSNIRouting(t *testing.T, c *instance, addr string, alpha, beta *backendServer, alphaCert, betaCert cmpCert) {
	t.Helper()
	for range 3 {
		for _, want := range []struct {
			sni, name string
			roots     cmpCert
		}{{"alpha.test", "alpha", alphaCert}, {"beta.test", "beta", betaCert}} {
			got, err := cmpAskTLS(addr, want.sni, want.roots.pool)
			if err != nil || got != want.name {
				t.Fatalf("SNI %s: got %q, %v; want %q", want.sni, got, err, want.name)
			}
		}
	}
	if alpha.count() != 3 || beta.count() != 3 {
		t.Fatalf("backend connections: alpha %d, beta %d; want 3 and 3", alpha.count(), beta.count())
	}
	for _, h := range []struct {
		name string
		be   *backendServer
	}{{"alpha", alpha}, {"beta", beta}} {
		waitFor(t, 3*time.Second, h.name+"'s statistics", func() bool {
			s := cmpGetStats(t, c, h.name)
			return s.TotalConnections == 3 && s.backendTotal(h.be.addr) == 3 && len(s.Backends) == 1 && s.ActiveConnections == 0
		})
	}
	t.Logf("alpha: %+v", cmpGetStats(t, c, "alpha"))
}

// TestComposeTLSMatcherSNICaddyfile is the same composition written in the
// Caddyfile: `@a tls sni alpha.test` + `route @a { between alpha {...} }`.
func TestComposeTLSMatcherSNICaddyfile(t *testing.T) {
	alphaCert, betaCert := cmpNewCert(t, "alpha.test"), cmpNewCert(t, "beta.test")
	alpha := cmpTLSNameBackend(t, alphaCert, "alpha")
	beta := cmpTLSNameBackend(t, betaCert, "beta")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddyfile(t, fmt.Sprintf(`{
	admin ADMIN
	layer4 {
		between+tcp/%s {
			@a tls sni alpha.test
			route @a {
				between alpha {
					discovery static %s
				}
			}
			@b tls sni beta.test
			route @b {
				between beta {
					balance roundrobin
					discovery static %s
				}
			}
		}
	}
}
`, addr, alpha.addr, beta.addr))
	cmpCheckSNIRouting(t, c, addr, alpha, beta, alphaCert, betaCert)
}

// TestComposeRemoteIPClose: a remote_ip route with caddy-l4's close handler
// in front of a catch-all between route.
func TestComposeRemoteIPClose(t *testing.T) {
	be := nameBackend(t, "served")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{
		{"match": []any{map[string]any{"remote_ip": map[string]any{"ranges": []string{"127.0.0.2/32"}}}},
			"handle": []any{map[string]any{"handler": "close"}}},
		{"handle": []any{cmpHandler("open", nil, be.addr)}},
	}, nil))

	for i := range 3 {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		cmpExpectClosed(t, conn, fmt.Sprintf("client %d from 127.0.0.2", i))
		conn.Close()
	}
	if n := be.count(); n != 0 {
		t.Fatalf("clients from 127.0.0.2 reached the backend %d times", n)
	}
	if s := cmpGetStats(t, c, "open"); s.TotalConnections != 0 || s.RefusedConnections != 0 {
		t.Fatalf("closed clients reached the between handler: %+v", s)
	}

	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "served\n" {
		t.Fatalf("client from 127.0.0.1: %q, %v; want served", line, err)
	}
	if n := be.count(); n != 1 {
		t.Fatalf("backend connections = %d, want 1", n)
	}
	waitFor(t, 3*time.Second, "one connection in open's statistics", func() bool {
		return cmpGetStats(t, c, "open").TotalConnections == 1
	})
}

// cmpProxyHeader is a PROXY protocol header (version 1 or 2) declaring a TCP
// connection from src to dst.
func cmpProxyHeader(version int, src, dst netip.AddrPort) []byte {
	if version == 1 {
		return fmt.Appendf(nil, "PROXY TCP4 %s %s %d %d\r\n", src.Addr(), dst.Addr(), src.Port(), dst.Port())
	}
	var b bytes.Buffer
	b.WriteString("\r\n\r\n\x00\r\nQUIT\n")
	b.WriteByte(0x21) // version 2, PROXY
	b.WriteByte(0x11) // TCP over IPv4
	binary.Write(&b, binary.BigEndian, uint16(12))
	s, d := src.Addr().As4(), dst.Addr().As4()
	b.Write(s[:])
	b.Write(d[:])
	binary.Write(&b, binary.BigEndian, src.Port())
	binary.Write(&b, binary.BigEndian, dst.Port())
	return b.Bytes()
}

// cmpAskProxied connects to addr, sends a PROXY header of the version declaring
// src, and returns the first line the server sends ("" and an error when it
// closes without one).
func cmpAskProxied(addr string, version int, src netip.AddrPort) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	dst := netip.MustParseAddrPort(addr)
	if _, err := c.Write(cmpProxyHeader(version, src, dst)); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestComposeProxyProtocol: caddy-l4's proxy_protocol handler before between
// in one route; between's iphash and access rules see the address the PROXY
// header declared, for v1 and v2 headers.
func TestComposeProxyProtocol(t *testing.T) {
	names := []string{"b0", "b1", "b2"}
	var addrs []string
	byName := map[string]*backendServer{}
	for _, n := range names {
		be := nameBackend(t, n)
		byName[n] = be
		addrs = append(addrs, be.addr)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{{
		"handle": []any{
			// the loopback peer is trusted to send PROXY headers (caddy-l4's
			// default policy IGNOREs the declared address of everyone else)
			map[string]any{"handler": "proxy_protocol", "allow": []string{"127.0.0.0/8"}, "timeout": "2s"},
			cmpHandler("pp", map[string]any{
				"balance": map[string]any{"policy": "iphash"},
				"access":  map[string]any{"default": "allow", "rules": []string{"deny 10.9.8.7"}},
			}, addrs...),
		},
	}}, nil))

	t.Run("iphash", func(t *testing.T) {
		// 20 declared addresses, each 4 times (v1, v2, v1, v2, from
		// different declared ports): always the same backend per address
		chosen := map[string]string{}
		perBackend := map[string]int{}
		for round := range 4 {
			for i := range 20 {
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 8, byte(10 + i)}), uint16(40000+round*100+i))
				version := 1 + round%2
				got, err := cmpAskProxied(addr, version, src)
				if err != nil {
					t.Fatalf("declared %s (PROXY v%d): %v", src, version, err)
				}
				if prev, ok := chosen[src.Addr().String()]; ok && prev != got {
					t.Fatalf("declared %s (PROXY v%d) reached %s, earlier %s", src, version, got, prev)
				}
				chosen[src.Addr().String()] = got
				perBackend[got]++
			}
		}
		t.Logf("connections per backend: %v", perBackend)
		if len(perBackend) < 2 {
			t.Fatalf("20 declared addresses all reached one backend %v: the hash does not see the declared address", perBackend)
		}
		total := 0
		for n, be := range byName {
			if be.count() != perBackend[n] {
				t.Errorf("backend %s counted %d connections, clients saw %d", n, be.count(), perBackend[n])
			}
			total += be.count()
		}
		if total != 80 {
			t.Fatalf("backends got %d connections, want 80", total)
		}
		waitFor(t, 3*time.Second, "80 connections in pp's statistics", func() bool {
			return cmpGetStats(t, c, "pp").TotalConnections == 80
		})
	})

	t.Run("access", func(t *testing.T) {
		before := cmpGetStats(t, c, "pp")
		served := 0
		for _, be := range byName {
			served += be.count()
		}
		for _, version := range []int{1, 2} {
			denied := netip.MustParseAddrPort("10.9.8.7:5555")
			if got, err := cmpAskProxied(addr, version, denied); err == nil || got != "" {
				t.Fatalf("PROXY v%d declaring %s: got %q, %v; want closed without an answer", version, denied, got, err)
			}
			allowed := netip.MustParseAddrPort("10.9.8.8:5555")
			if got, err := cmpAskProxied(addr, version, allowed); err != nil || got == "" {
				t.Fatalf("PROXY v%d declaring %s: got %q, %v; want a backend's name", version, allowed, got, err)
			}
		}
		waitFor(t, 3*time.Second, "2 refusals and 2 more connections in pp's statistics", func() bool {
			s := cmpGetStats(t, c, "pp")
			return s.RefusedConnections == before.RefusedConnections+2 && s.TotalConnections == before.TotalConnections+2
		})
		after := 0
		for _, be := range byName {
			after += be.count()
		}
		if after != served+2 {
			t.Fatalf("backends got %d new connections, want 2 (the denied clients must not reach one)", after-served)
		}
	})

	t.Run("no header", func(t *testing.T) {
		// caddy-l4 documents the PROXY header as optional: a client that
		// sends none is served with its own address (go-proxyproto v0.15.0
		// made the header mandatory by default; Between restores the
		// behaviour caddy-l4 v0.1.2 was written for).
		before := cmpGetStats(t, c, "pp").TotalConnections
		got, err := ask(addr)
		if err != nil || got == "" {
			t.Fatalf("client without a PROXY header: got %q, %v; want a backend's name", got, err)
		}
		waitFor(t, 3*time.Second, "one more connection in pp's statistics", func() bool {
			return cmpGetStats(t, c, "pp").TotalConnections == before+1
		})
	})
}

// cmpBannerBackend writes a banner, then answers each line with
// "echo: LINE" and closes after the first one.
func cmpBannerBackend(t testing.TB, banner string) *backendServer {
	return newBackend(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "%s\n", banner)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		fmt.Fprintf(c, "echo: %s\n", strings.TrimSpace(line))
	})
}

// TestComposeTLSHandler: caddy-l4's tls handler terminates TLS with a
// certificate from Caddy's tls app, then between proxies the plaintext to a
// plain backend. Checked with the real openssl s_client and Go's TLS client.
func TestComposeTLSHandler(t *testing.T) {
	openssl := needTool(t, "openssl", "openssl")
	cert := cmpNewCert(t, "secure.test")
	certFile, keyFile := cert.files(t)
	be := cmpBannerBackend(t, "hello from the plain backend")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{{
		"handle": []any{
			map[string]any{"handler": "tls"},
			cmpHandler("term", nil, be.addr),
		},
	}}, map[string]any{
		"tls": map[string]any{"certificates": map[string]any{
			"load_files": []any{map[string]any{"certificate": certFile, "key": keyFile}},
		}},
	}))

	t.Run("openssl", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", addr, "-servername", "secure.test",
			"-verify_return_error", "-verify_hostname", "secure.test", "-CAfile", certFile, "-quiet")
		cmd.Stdin = strings.NewReader("ping from openssl\n")
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("openssl s_client did not finish in 20s; stdout %q, stderr %q", out.String(), stderr.String())
		}
		if err != nil {
			t.Fatalf("openssl s_client: %v; stdout %q, stderr %q", err, out.String(), stderr.String())
		}
		want := "hello from the plain backend\necho: ping from openssl\n"
		if out.String() != want {
			t.Fatalf("openssl s_client got %q, want %q (stderr %q)", out.String(), want, stderr.String())
		}
	})

	t.Run("go", func(t *testing.T) {
		d := &net.Dialer{Timeout: 2 * time.Second}
		tc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: "secure.test", RootCAs: cert.pool})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		if got := tc.ConnectionState().PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "secure.test" {
			t.Fatalf("served certificate for %v, want secure.test", got)
		}
		tc.SetDeadline(time.Now().Add(3 * time.Second))
		r := bufio.NewReader(tc)
		if line, err := r.ReadString('\n'); err != nil || line != "hello from the plain backend\n" {
			t.Fatalf("banner: %q, %v", line, err)
		}
		fmt.Fprintf(tc, "ping from go\n")
		if line, err := r.ReadString('\n'); err != nil || line != "echo: ping from go\n" {
			t.Fatalf("echo: %q, %v", line, err)
		}
	})

	if n := be.count(); n != 2 {
		t.Fatalf("plain backend got %d connections, want 2", n)
	}
	waitFor(t, 3*time.Second, "2 connections in term's statistics", func() bool {
		s := cmpGetStats(t, c, "term")
		return s.TotalConnections == 2 && s.backendTotal(be.addr) == 2
	})
}

// TestComposeServerSpeaksFirst: a backend that writes a banner before it
// reads (SMTP-like) behind a route without byte matchers: the banner reaches
// a client that has sent nothing, at once.
func TestComposeServerSpeaksFirst(t *testing.T) {
	be := newBackend(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "220 banner ready\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		if strings.TrimSpace(line) == "QUIT" {
			io.WriteString(c, "221 bye\r\n")
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{
		{"handle": []any{cmpHandler("smtp", nil, be.addr)}},
	}, nil))

	for i := range 3 {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// nothing is written before the banner arrives
		conn.SetReadDeadline(start.Add(time.Second))
		r := bufio.NewReader(conn)
		line, err := r.ReadString('\n')
		elapsed := time.Since(start)
		if err != nil || line != "220 banner ready\r\n" {
			conn.Close()
			t.Fatalf("client %d: banner %q, %v after %s (want it within 1s, before the client sends anything)", i, line, err, elapsed)
		}
		t.Logf("client %d: banner after %s", i, elapsed.Round(time.Microsecond))
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(conn, "QUIT\r\n")
		if line, err := r.ReadString('\n'); err != nil || line != "221 bye\r\n" {
			t.Fatalf("client %d: after QUIT %q, %v", i, line, err)
		}
		conn.Close()
	}
	waitFor(t, 3*time.Second, "3 connections in smtp's statistics", func() bool {
		return cmpGetStats(t, c, "smtp").TotalConnections == 3
	})
}
