package e2e

// TLS termination: caddy-l4's tls handler in front of between, with
// certificates from Caddy's tls app: ACME from a real Pebble through the
// companion app's acme_hosts (JSON and Caddyfile), load_files, connection
// policies (versions, ciphers, ALPN, session tickets, default SNI).

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
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
)

func init() {
	exercises["tls-server.caddyfile"] = exerciseTLSServer
	exercises["tls-policies.json"] = exerciseTLSPolicies
}

// pebble is a running Pebble ACME server.
type pebble struct {
	dir      string // ACME directory URL
	caFile   string // trust anchor of Pebble's own HTTPS endpoint
	rootFile string // Pebble's issuing root, which the certificates it issues chain to
	cmd      *exec.Cmd
	out      lockedBuffer
}

// logs returns what Pebble printed so far.
func (p *pebble) logs() string {
	return p.out.String()
}

// startPebble runs Pebble on free loopback ports with its own HTTPS
// certificate. alwaysValid makes it accept every challenge without
// checking; otherwise it validates TLS-ALPN-01 on tlsPort (HTTP-01 on a
// port nobody serves), resolving every name to 127.0.0.1 through dnsAddr.
func startPebble(t *testing.T, alwaysValid bool, tlsPort int, dnsAddr string) *pebble {
	t.Helper()
	bin := needTool(t, "pebble", "pebble")
	dir := t.TempDir()
	cert := cmpNewCert(t, "localhost")
	certFile, keyFile := cert.files(t)
	acme, mgmt := freeAddr(t), freeAddr(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress": acme, "managementListenAddress": mgmt,
		"certificate": certFile, "privateKey": keyFile,
		"httpPort": freePort(t), "tlsPort": tlsPort,
		"ocspResponderURL": "", "externalAccountBindingRequired": false,
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &pebble{dir: "https://" + strings.Replace(acme, "127.0.0.1", "localhost", 1) + "/dir", caFile: certFile}
	args := []string{"-config", cfgFile, "-strict=false"}
	if dnsAddr != "" {
		args = append(args, "-dnsserver", dnsAddr)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	if alwaysValid {
		p.cmd.Env = append(p.cmd.Env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("pebble output:\n%s", tail(p.logs(), 40))
		}
	})
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.pool}}}
	var root []byte
	waitFor(t, 15*time.Second, "Pebble's management endpoint", func() bool {
		resp, err := client.Get("https://" + strings.Replace(mgmt, "127.0.0.1", "localhost", 1) + "/roots/0")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		root, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == 200
	})
	if blk, _ := pem.Decode(root); blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("Pebble's /roots/0 is not a PEM certificate: %q", root)
	}
	p.rootFile = filepath.Join(dir, "root.pem")
	if err := os.WriteFile(p.rootFile, root, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// verifiedSession runs `openssl s_client` against addr for serverName,
// verifying the chain against caFile and the name, sends line and returns
// what came back (stdout, stderr and the error).
func verifiedSession(t *testing.T, addr, serverName, caFile, line string, extra ...string) (string, string, error) {
	t.Helper()
	openssl := needTool(t, "openssl", "openssl")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"s_client", "-connect", addr, "-verify_return_error", "-CAfile", caFile, "-quiet"}
	if serverName != "" {
		args = append(args, "-servername", serverName, "-verify_hostname", serverName)
	} else {
		args = append(args, "-noservername")
	}
	cmd := exec.CommandContext(ctx, openssl, append(args, extra...)...)
	cmd.Stdin = strings.NewReader(line)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	return out.String(), stderr.String(), err
}

// waitServed waits until the listener serves serverName with a certificate
// that verifies against caFile, and the plaintext backend (a banner
// backend) answers through it.
func waitServed(t *testing.T, addr, serverName, caFile string) {
	t.Helper()
	want := "hello from the plain backend\necho: ping over tls\n"
	var out, stderr string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, stderr, _ = verifiedSession(t, addr, serverName, caFile, "ping over tls\n")
		if out == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no verified session for %s within 60s: stdout %q, stderr %q", serverName, out, tail(stderr, 5))
}

// pebbleIssuer is an acme issuer for Pebble. The TLS-ALPN-01 challenge is
// the only one enabled and its port is the layer4 listener's: certmagic
// finds the port taken and leaves the answer to the tls handler there.
func pebbleIssuer(p *pebble, tlsPort int) map[string]any {
	return map[string]any{
		"module": "acme", "ca": p.dir, "trusted_roots_pem_files": []string{p.caFile},
		"challenges": map[string]any{
			"http":     map[string]any{"disabled": true},
			"tls-alpn": map[string]any{"alternate_port": tlsPort},
		},
	}
}

// acmeApps is a layer4 server on addr with the route [tls, between] to
// backend, acme_hosts names, and the tls app's issuer.
func acmeApps(addr, backend string, issuer map[string]any, names ...string) string {
	return cmpApps(addr, []map[string]any{{
		"handle": []any{map[string]any{"handler": "tls"}, cmpHandler("acme", nil, backend)},
	}}, map[string]any{
		"between": map[string]any{"acme_hosts": names},
		"tls":     map[string]any{"automation": map[string]any{"policies": []any{map[string]any{"issuers": []any{issuer}}}}},
	})
}

// TestTLSTerminationACME: apps.between.acme_hosts gets a certificate from a
// real Pebble for a name no HTTP site uses; the layer4 tls handler serves it
// (openssl verifies it against Pebble's root and the name) and between
// carries the plaintext to the backend.
func TestTLSTerminationACME(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startPebble(t, true, port, "")
	be := cmpBannerBackend(t, "hello from the plain backend")
	c := startCaddy(t, acmeApps("between+tcp/"+addr, be.addr, pebbleIssuer(p, port), "l4.test"))
	waitServed(t, addr, "l4.test", p.rootFile)
	if !c.logged("acme_hosts handed to the tls app", nil) {
		t.Error("the companion app did not log that it handed acme_hosts to the tls app")
	}
	if !strings.Contains(c.logs(), "certificate obtained successfully") {
		t.Error("Caddy did not log an obtained certificate")
	}
}

// TestTLSTerminationACMEInvalid: acme_hosts with an IP address, a wildcard
// or a duplicate is refused at load time, naming the field.
func TestTLSTerminationACMEInvalid(t *testing.T) {
	addr := freeAddr(t)
	be := nameBackend(t, "x")
	c := startCaddy(t, cmpApps(addr, []map[string]any{{"handle": []any{cmpHandler("x", nil, be.addr)}}}, nil))
	for _, names := range [][]string{{"127.0.0.1"}, {"*.l4.test"}, {"l4.test", "l4.test"}} {
		apps := acmeApps(addr, be.addr, map[string]any{"module": "internal"}, names...)
		code, body := c.load(apps)
		if code == 200 || !strings.Contains(body, "acme_hosts") {
			t.Errorf("acme_hosts %q: load answered %d %s, want an error naming acme_hosts", names, code, body)
		}
	}
}

// TestTLSTerminationCaddyfile: the same from a Caddyfile: the between
// global option's acme_hosts, the CA from acme_ca and its HTTPS trust
// anchor from acme_ca_root (the example examples/tls-server.caddyfile).
func TestTLSTerminationCaddyfile(t *testing.T) {
	exerciseTLSServer(t, filepath.Join(repoRoot(), "examples", "tls-server.caddyfile"))
}

// exerciseTLSServer runs examples/tls-server.caddyfile against Pebble: its
// acme_hosts name gets a certificate and the backend answers through TLS.
func exerciseTLSServer(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 5443, 5432)
	p := startPebble(t, true, ports[5443], "")
	be := newBackend(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "hello from the plain backend\n")
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		fmt.Fprintf(c, "echo: %s\n", strings.TrimSpace(string(buf[:n])))
	})
	text = strings.ReplaceAll(text, fmt.Sprintf("127.0.0.1:%d", ports[5432]), be.addr)
	text = strings.ReplaceAll(text, "db.example.com", "l4.test")
	text = strings.Replace(text, "{\n", fmt.Sprintf("{\n\tadmin ADMIN\n\tacme_ca %s\n\tacme_ca_root %s\n", p.dir, p.caFile), 1)
	c := startCaddyfile(t, text)
	addr := fmt.Sprintf("127.0.0.1:%d", ports[5443])
	waitServed(t, addr, "l4.test", p.rootFile)
	if !c.logged("acme_hosts handed to the tls app", nil) {
		t.Error("the companion app did not log that it handed acme_hosts to the tls app")
	}
}

// TestTLSTerminationLoadFiles: a certificate from load_files; a client
// without SNI gets it through the connection policy's default_sni; the
// minimum TLS 1.2 refuses a TLS 1.1 client (openssl and Go) while a TLS 1.2
// client gets through.
func TestTLSTerminationLoadFiles(t *testing.T) {
	cert := cmpNewCert(t, "files.test")
	certFile, keyFile := cert.files(t)
	be := cmpBannerBackend(t, "hello from the plain backend")
	addr := freeAddr(t)
	startCaddy(t, cmpApps("between+tcp/"+addr, []map[string]any{{
		"handle": []any{
			map[string]any{"handler": "tls", "connection_policies": []any{
				map[string]any{"protocol_min": "tls1.2", "default_sni": "files.test"},
			}},
			cmpHandler("files", nil, be.addr),
		},
	}}, map[string]any{
		"tls": map[string]any{"certificates": map[string]any{
			"load_files": []any{map[string]any{"certificate": certFile, "key": keyFile}},
		}},
	}))
	want := "hello from the plain backend\necho: hi\n"

	t.Run("sni", func(t *testing.T) {
		out, stderr, err := verifiedSession(t, addr, "files.test", certFile, "hi\n")
		if err != nil || out != want {
			t.Fatalf("openssl: %v, stdout %q, stderr %q", err, out, stderr)
		}
	})
	t.Run("no sni", func(t *testing.T) {
		out, stderr, err := verifiedSession(t, addr, "", certFile, "hi\n", "-verify_hostname", "files.test")
		if err != nil || out != want {
			t.Fatalf("openssl -noservername: %v, stdout %q, stderr %q", err, out, stderr)
		}
		d := &net.Dialer{Timeout: 2 * time.Second}
		tc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		if st := tc.ConnectionState(); st.ServerName != "" || st.PeerCertificates[0].DNSNames[0] != "files.test" {
			t.Fatalf("without SNI: server name %q, certificate for %v", st.ServerName, st.PeerCertificates[0].DNSNames)
		}
	})
	t.Run("tls1.1 refused", func(t *testing.T) {
		// Debian's openssl refuses TLS 1.1 itself at its default security level
		_, stderr, err := verifiedSession(t, addr, "files.test", certFile, "hi\n", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
		if err == nil || !strings.Contains(stderr, "alert protocol version") {
			t.Fatalf("openssl -tls1_1: %v, stderr %q; want the server's protocol_version alert", err, stderr)
		}
		d := &net.Dialer{Timeout: 2 * time.Second}
		_, err = tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: "files.test", RootCAs: cert.pool, MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11})
		if err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("Go TLS 1.1 client: %v, want a protocol version alert", err)
		}
		tc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: "files.test", RootCAs: cert.pool, MaxVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("Go TLS 1.2 client: %v", err)
		}
		defer tc.Close()
		if v := tc.ConnectionState().Version; v != tls.VersionTLS12 {
			t.Fatalf("negotiated %s, want TLS 1.2", tls.VersionName(v))
		}
	})
}

// exerciseTLSPolicies runs examples/tls-policies.json: TLS 1.2 only, two
// cipher suites, ALPN "postgresql", no session tickets, default SNI, with a
// certificate from Caddy's internal CA.
func exerciseTLSPolicies(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 6443, 6432)
	be := cmpBannerBackend(t, "hello from the plain backend")
	text = strings.ReplaceAll(text, fmt.Sprintf("127.0.0.1:%d", ports[6432]), be.addr)
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatal(err)
	}
	c := startCaddy(t, string(cfg["apps"]))
	addr := fmt.Sprintf("127.0.0.1:%d", ports[6443])
	roots := x509.NewCertPool()
	waitFor(t, 10*time.Second, "the internal CA's root", func() bool {
		resp, err := http.Get("http://" + c.admin + "/pki/ca/local")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var ca struct {
			Root string `json:"root_certificate"`
		}
		return json.NewDecoder(resp.Body).Decode(&ca) == nil && roots.AppendCertsFromPEM([]byte(ca.Root))
	})
	d := &net.Dialer{Timeout: 2 * time.Second}
	dial := func(cfg *tls.Config) (*tls.Conn, error) {
		if cfg.RootCAs == nil {
			cfg.RootCAs = roots
		}
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			cfg.ServerName = "policies.example"
		}
		return tls.DialWithDialer(d, "tcp", addr, cfg)
	}
	var tc *tls.Conn
	waitFor(t, 20*time.Second, "the internal certificate", func() bool {
		var err error
		tc, err = dial(&tls.Config{NextProtos: []string{"postgresql"}})
		return err == nil
	})
	st := tc.ConnectionState()
	buf := make([]byte, 64)
	tc.SetDeadline(time.Now().Add(3 * time.Second))
	n, _ := io.ReadFull(tc, buf[:len("hello from the plain backend\n")])
	tc.Close()
	if string(buf[:n]) != "hello from the plain backend\n" {
		t.Errorf("backend banner through TLS: %q", buf[:n])
	}
	if st.Version != tls.VersionTLS12 {
		t.Errorf("protocol_max tls1.2: negotiated %s", tls.VersionName(st.Version))
	}
	if cs := tls.CipherSuiteName(st.CipherSuite); cs != "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" && cs != "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" {
		t.Errorf("cipher_suites: negotiated %s", cs)
	}
	if st.NegotiatedProtocol != "postgresql" {
		t.Errorf("alpn: negotiated %q, want postgresql", st.NegotiatedProtocol)
	}
	if _, err := dial(&tls.Config{MinVersion: tls.VersionTLS13}); err == nil {
		t.Error("protocol_max tls1.2: a TLS 1.3-only client got through")
	}
	if _, err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}); err == nil {
		t.Error("cipher_suites: a client offering only TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 got through")
	}
	if _, err := dial(&tls.Config{NextProtos: []string{"h2"}}); err == nil {
		t.Error("alpn: a client offering only h2 got through")
	}
	cache := tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		tc, err := dial(&tls.Config{ClientSessionCache: cache})
		if err != nil {
			t.Fatal(err)
		}
		tc.SetDeadline(time.Now().Add(3 * time.Second))
		io.ReadFull(tc, buf[:1]) // the client stores a ticket only when it reads past the handshake
		if tc.ConnectionState().DidResume {
			t.Errorf("session_tickets disabled: connection %d resumed a session", i+1)
		}
		tc.Close()
	}
	tc, err = dial(&tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("client without SNI: %v", err)
	}
	if names := tc.ConnectionState().PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != "policies.example" {
		t.Errorf("default_sni: a client without SNI got a certificate for %v", names)
	}
	tc.Close()
}

// TestTLSTerminationPolicies runs examples/tls-policies.json.
func TestTLSTerminationPolicies(t *testing.T) {
	exerciseTLSPolicies(t, filepath.Join(repoRoot(), "examples", "tls-policies.json"))
}

// TestTLSTerminationTLSALPN01: Pebble really validates the TLS-ALPN-01
// challenge against the layer4 listener (its tlsPort is the listener's port,
// every name resolves to 127.0.0.1 through pebble-challtestsrv's DNS): the
// tls handler's handshake answers it with certmagic's challenge certificate
// and the certificate is issued.
func TestTLSTerminationTLSALPN01(t *testing.T) {
	bin := needTool(t, "pebble-challtestsrv", "pebble")
	dns := freeAddr(t)
	srv := exec.Command(bin, "-dns01", dns, "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", freeAddr(t), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	var srvOut lockedBuffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("pebble-challtestsrv output:\n%s", tail(srvOut.String(), 20))
		}
	})
	waitFor(t, 10*time.Second, "pebble-challtestsrv's DNS server", func() bool {
		c, err := net.DialTimeout("tcp", dns, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startPebble(t, false, port, dns)
	be := cmpBannerBackend(t, "hello from the plain backend")
	c := startCaddy(t, acmeApps("between+tcp/"+addr, be.addr, pebbleIssuer(p, port), "l4.test"))
	waitServed(t, addr, "l4.test", p.rootFile)
	if !c.logged("trying to solve challenge", map[string]any{"challenge_type": "tls-alpn-01"}) {
		t.Error("Caddy did not log solving the tls-alpn-01 challenge")
	}
	// the layer4 listener's tls handshake served the challenge certificate
	// (certmagic found the port taken and did not listen itself)
	if !c.logged("served key authentication certificate", map[string]any{"challenge": "tls-alpn-01", "server_name": "l4.test", "distributed": false}) {
		t.Error("the tls handler did not serve the tls-alpn-01 key authentication certificate")
	}
	if !strings.Contains(p.logs(), "set VALID by completed challenge") {
		t.Error("Pebble did not validate the challenge")
	}
}
