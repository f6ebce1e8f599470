package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerCRUD: gobetween-style create, replace and delete of a server
// through /between/servers/{name}, done as Caddy config changes: visible
// under /config/, serving traffic at once, rejected atomically when invalid,
// and brought back by `caddy run --resume` after a restart.
func TestServerCRUD(t *testing.T) {
	one, two := nameBackend(t, "one"), nameBackend(t, "two")
	addr := freeAddr(t)
	// a running config with a between handler in a layer4 server of another name
	other := freeAddr(t)
	c := startCaddy(t, layer4(map[string]any{"edge": map[string]any{
		"listen": []string{shared(other)},
		"routes": []any{map[string]any{"handle": []any{betweenHandler("inner", map[string]any{
			"discovery": map[string]any{"kind": "static", "static_list": []string{one.addr}},
		})}}},
	}}))
	body := func(backend string, extra string) string {
		return fmt.Sprintf(`{"listen":[%q],"balance":{"policy":"roundrobin"},"discovery":{"kind":"static","static_list":[%q]}%s}`, shared(addr), backend, extra)
	}

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		mention                  string
	}{
		{"create", "POST", "/between/servers/web", body(one.addr, ""), 201, `"name":"web"`},
		{"create again", "POST", "/between/servers/web", body(one.addr, ""), 409, "exists"},
		{"unknown field", "PUT", "/between/servers/web", body(two.addr, `,"retires":1`), 400, "retires"},
		{"invalid value", "PUT", "/between/servers/web", body(two.addr, `,"max_connections":-1`), 400, "max_connections"},
		{"no listen", "POST", "/between/servers/x", `{"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, 400, "listen"},
		{"udp address without protocol udp", "POST", "/between/servers/x", `{"listen":["between+udp/127.0.0.1:1"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, 400, `want protocol \"udp\"`},
		{"replace unknown", "PUT", "/between/servers/nosuch", body(two.addr, ""), 404, "nosuch"},
		{"delete unknown", "DELETE", "/between/servers/nosuch", "", 404, "nosuch"},
		{"delete a handler of another server", "DELETE", "/between/servers/inner", "", 409, "edge"},
		{"wrong method", "PATCH", "/between/servers/web", "", 405, "method"},
	} {
		status, got := adminDo(t, c, tc.method, tc.path, tc.body)
		if status != tc.status || !strings.Contains(got, tc.mention) {
			t.Fatalf("%s: %s %s = %d %s; want %d mentioning %q", tc.name, tc.method, tc.path, status, got, tc.status, tc.mention)
		}
		if status >= 400 && !strings.HasPrefix(strings.TrimSpace(got), `{"error":`) {
			t.Errorf("%s: error body %q is not {\"error\": ...}", tc.name, got)
		}
		if tc.name == "create" {
			waitFor(t, 5*time.Second, "the created server to serve", func() bool { got, _ := ask(addr); return got == "one" })
		}
	}
	// the failed replacements left the created server serving
	if got, err := ask(addr); got != "one" {
		t.Fatalf("after rejected changes: %q, %v; want one", got, err)
	}
	// visible under /config/ as a layer4 server with one between route
	status, cfg := adminDo(t, c, "GET", "/config/apps/layer4/servers/web", "")
	if status != 200 || !strings.Contains(cfg, `"handler":"between"`) || !strings.Contains(cfg, `"name":"web"`) {
		t.Fatalf("GET /config/apps/layer4/servers/web = %d %s", status, cfg)
	}

	// replace: traffic follows the new backend; a connection open across
	// the change keeps working
	echo := echoBackend(t)
	if status, got := adminDo(t, c, "PUT", "/between/servers/web", body(echo.addr, "")); status != 200 {
		t.Fatalf("PUT = %d %s", status, got)
	}
	var open net.Conn
	waitFor(t, 5*time.Second, "a connection through the echo backend", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		conn.SetDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1)
		if _, err := conn.Write([]byte("a")); err != nil || func() error { _, err := io.ReadFull(conn, buf); return err }() != nil || buf[0] != 'a' {
			conn.Close()
			return false
		}
		open = conn
		return true
	})
	defer open.Close()
	if status, got := adminDo(t, c, "PUT", "/between/servers/web", body(two.addr, "")); status != 200 {
		t.Fatalf("PUT = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "traffic to follow the replaced server", func() bool { got, _ := ask(addr); return got == "two" })
	open.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1)
	if _, err := open.Write([]byte("b")); err != nil {
		t.Fatalf("the connection open across the replace: %v", err)
	}
	if _, err := io.ReadFull(open, buf); err != nil || buf[0] != 'b' {
		t.Fatalf("the connection open across the replace: read %q, %v", buf, err)
	}

	// restart with --resume: the change comes back from Caddy's autosave
	c.cmd.Process.Kill()
	c.cmd.Wait()
	r := &instance{t: t, admin: c.admin, home: c.home}
	r.start(t, "run", "--resume")
	waitFor(t, 10*time.Second, "the resumed config to serve the replaced server", func() bool { got, _ := ask(addr); return got == "two" })
	if _, got := adminDo(t, r, "GET", "/between/servers/web", ""); !strings.Contains(got, `"name":"web"`) {
		t.Fatalf("after --resume, GET /between/servers/web = %s", got)
	}

	// delete: the listener goes away, the other server stays
	if status, got := adminDo(t, r, "DELETE", "/between/servers/web", ""); status != 204 {
		t.Fatalf("DELETE = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "the deleted server's listener to close", func() bool { _, err := ask(addr); return err != nil })
	if got, _ := ask(other); got != "one" {
		t.Fatalf("the other server answers %q after the delete, want one", got)
	}
	status, list := adminDo(t, r, "GET", "/between/servers", "")
	var names []struct{ Name string }
	if status != 200 || json.Unmarshal([]byte(list), &names) != nil || len(names) != 1 || names[0].Name != "inner" {
		t.Fatalf("GET /between/servers after the delete = %d %s, want only inner", status, list)
	}
}

// TestServerCRUDTLS: a server created with protocol tls terminates TLS with
// the given certificate files (loaded into the tls app, tagged with the
// server) and forwards plaintext; deleting it takes the files out again.
func TestServerCRUDTLS(t *testing.T) {
	plain := nameBackend(t, "plain")
	cert := cmpNewCert(t, "secure.test")
	certFile, keyFile := cert.files(t)
	addr := freeAddr(t)
	c := startCaddy(t, `{}`)
	body := fmt.Sprintf(`{"listen":[%q],"protocol":"tls","tls":{"cert_path":%q,"key_path":%q},"discovery":{"kind":"static","static_list":[%q]}}`,
		shared(addr), certFile, keyFile, plain.addr)
	if status, got := adminDo(t, c, "POST", "/between/servers/secure", body); status != 201 {
		t.Fatalf("POST = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "TLS through the created server", func() bool {
		got, _ := cmpAskTLS(addr, "secure.test", cert.pool)
		return got == "plain"
	})
	if _, cfg := adminDo(t, c, "GET", "/config/apps/tls/certificates/load_files", ""); !strings.Contains(cfg, "between:secure") {
		t.Fatalf("load_files = %s, want the server's tagged files", cfg)
	}
	for _, bad := range []string{
		`{"listen":["127.0.0.1:1"],"protocol":"tls","discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`,
		`{"listen":["127.0.0.1:1"],"tls":{"cert_path":"x","key_path":"y"},"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`,
	} {
		if status, got := adminDo(t, c, "POST", "/between/servers/bad", bad); status != 400 || !strings.Contains(got, "tls") {
			t.Errorf("POST %s = %d %s, want 400 naming tls", bad, status, got)
		}
	}
	if status, got := adminDo(t, c, "DELETE", "/between/servers/secure", ""); status != 204 {
		t.Fatalf("DELETE = %d %s", status, got)
	}
	if _, cfg := adminDo(t, c, "GET", "/config/apps/tls/certificates/load_files", ""); strings.Contains(cfg, "between:secure") {
		t.Fatalf("load_files after the delete = %s, want the server's files gone", cfg)
	}
}

// TestServerCRUDUDP: a server created with protocol udp listens on
// between+udp/ for a bare address and relays datagrams to a UDP backend and
// its replies back; tls with udp, a TCP address with udp and a udp server
// whose sessions never end are 400s naming the field; DELETE stops the
// relay.
func TestServerCRUDUDP(t *testing.T) {
	echo := newUDPBackend(t, "echo", 1)
	addr := freeUDPAddr(t)
	c := startCaddy(t, `{}`)
	body := fmt.Sprintf(`{"listen":[%q],"protocol":"udp","udp":{"max_responses":1},"discovery":{"kind":"static","static_list":[%q]}}`, addr, echo.addr)
	status, got := adminDo(t, c, "POST", "/between/servers/dns", body)
	if status != 201 || !strings.Contains(got, `"between+udp/`+addr+`"`) || !strings.Contains(got, `"max_responses":1`) {
		t.Fatalf("POST = %d %s; want 201 with listen between+udp/%s and the udp block", status, got, addr)
	}
	client := dialUDP(t, addr)
	if got := udpAskRetry(t, client, "hello"); got != "echo hello 1" {
		t.Fatalf("through the created server: %q, want %q", got, "echo hello 1")
	}
	// a second datagram starts a new virtual session (max_responses 1) and
	// is answered too
	if r, err := udpAsk(client, "again", 1); err != nil || r[0] != "echo again 1" {
		t.Fatalf("second datagram: %q, %v", r, err)
	}
	bad := func(bodies []struct{ body, mention string }) {
		t.Helper()
		for _, tc := range bodies {
			if status, got := adminDo(t, c, "POST", "/between/servers/bad", tc.body); status != 400 || !strings.Contains(got, tc.mention) {
				t.Errorf("POST %s = %d %s, want 400 mentioning %s", tc.body, status, got, tc.mention)
			}
		}
	}
	// refused before any config change
	bad([]struct{ body, mention string }{
		{fmt.Sprintf(`{"listen":[%q],"protocol":"udp","udp":{"max_responses":1},"tls":{"cert_path":"c","key_path":"k"},"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, freeUDPAddr(t)), `field \"tls\"`},
		{fmt.Sprintf(`{"listen":["tcp/%s"],"protocol":"udp","udp":{"max_responses":1},"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, freeAddr(t)), `field \"listen\"`},
	})
	if status, got := adminDo(t, c, "GET", "/config/apps/layer4/servers/dns/listen", ""); status != 200 || !strings.Contains(got, "between+udp/"+addr) {
		t.Fatalf("GET /config/.../dns/listen = %d %s", status, got)
	}
	if status, got := adminDo(t, c, "DELETE", "/between/servers/dns", ""); status != 204 {
		t.Fatalf("DELETE = %d %s", status, got)
	}
	waitFor(t, 10*time.Second, "the deleted server to stop relaying", func() bool {
		_, err := udpAsk(dialUDP(t, addr), "gone?", 1)
		return err != nil
	})
	// refused by the handler's provisioning: a failed load restarts Caddy's
	// admin server (a request right after it may be reset), so this comes
	// last, with no admin request after it
	bad([]struct{ body, mention string }{
		{fmt.Sprintf(`{"listen":[%q],"protocol":"udp","discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, freeUDPAddr(t)), "needs udp.max_requests, udp.max_responses, client_idle_timeout or backend_idle_timeout"},
	})
}

// TestServerCRUDGobetweenBody: POST and PUT /between/servers/{name} take a
// body in gobetween's server form as it is (bind, balance as a name,
// healthcheck kind none, tls with min_version, udp, durations as text),
// converted by the gobetween adapter: a tcp server balances, a tls server
// terminates TLS with its files (and DELETE takes them out of the tls app
// again), a udp server relays datagrams; and gobetween's write tooling works
// through the rewrite shim of docs/migration-gobetween.md.
func TestServerCRUDGobetweenBody(t *testing.T) {
	one, two := nameBackend(t, "one"), nameBackend(t, "two")
	c := startCaddy(t, `{}`)

	// (a) tcp: round robin over both backends, then PUT in the same form
	addr := freeAddr(t)
	body := func(backends ...string) string {
		list, _ := json.Marshal(backends)
		return fmt.Sprintf(`{"bind":%q,"protocol":"tcp","balance":"roundrobin","max_connections":100,"client_idle_timeout":"1m","backend_idle_timeout":"0",`+
			`"backend_connection_timeout":"2s","healthcheck":{"kind":"none","interval":"2s"},"discovery":{"kind":"static","static_list":%s}}`, addr, list)
	}
	status, got := adminDo(t, c, "POST", "/between/servers/g1", body(one.addr, two.addr))
	if status != 201 || !strings.Contains(got, `"between+tcp/`+addr+`"`) || !strings.Contains(got, `"balance":{"policy":"roundrobin"}`) || strings.Contains(got, "healthcheck") {
		t.Fatalf("POST gobetween body = %d %s", status, got)
	}
	seen := map[string]bool{}
	waitFor(t, 5*time.Second, "both backends through g1", func() bool {
		if got, err := ask(addr); err == nil {
			seen[got] = true
		}
		return seen["one"] && seen["two"]
	})
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		mention                  string
	}{
		{"create again", "POST", "/between/servers/g1", body(one.addr), 409, "exists"},
		{"bind and listen", "POST", "/between/servers/gx", `{"bind":"127.0.0.1:1","listen":["127.0.0.1:1"],"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, 400, `\"bind\"`},
		{"unknown gobetween key", "POST", "/between/servers/gx", `{"bind":"127.0.0.1:1","bogus":1,"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, 400, "servers.gx.bogus"},
		{"bad balance", "PUT", "/between/servers/g1", strings.Replace(body(two.addr), `"roundrobin"`, `"random"`, 1), 400, "servers.g1.balance"},
		{"session tickets off", "POST", "/between/servers/gx", `{"bind":"127.0.0.1:1","protocol":"tls","tls":{"cert_path":"c","key_path":"k","session_tickets":false},"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}}`, 400, "servers.gx.tls.session_tickets"},
		{"replace unknown", "PUT", "/between/servers/nosuch", body(two.addr), 404, "nosuch"},
	} {
		status, got := adminDo(t, c, tc.method, tc.path, tc.body)
		if status != tc.status || !strings.Contains(got, tc.mention) || !strings.HasPrefix(strings.TrimSpace(got), `{"error":`) {
			t.Fatalf("%s: %s %s = %d %s; want %d {\"error\": ...} mentioning %q", tc.name, tc.method, tc.path, status, got, tc.status, tc.mention)
		}
	}
	if status, got := adminDo(t, c, "PUT", "/between/servers/g1", body(two.addr)); status != 200 {
		t.Fatalf("PUT gobetween body = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "traffic to follow the replaced g1", func() bool {
		for range 4 {
			if got, _ := ask(addr); got != "two" {
				return false
			}
		}
		return true
	})

	// (b) tls with cert_path/key_path and min_version: the handshake is
	// verified against the certificate; TLS 1.2 is refused (min tls1.3);
	// DELETE takes the files out of the tls app
	cert := btNewCert(t, "secure.test", "secure.test")
	pem, err := os.ReadFile(cert.cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	taddr := freeAddr(t)
	tbody := fmt.Sprintf(`{"bind":%q,"protocol":"tls","tls":{"cert_path":%q,"key_path":%q,"min_version":"tls1.3","prefer_server_ciphers":true},"discovery":{"kind":"static","static_list":[%q]}}`,
		taddr, cert.cert, cert.key, one.addr)
	if status, got := adminDo(t, c, "POST", "/between/servers/gtls", tbody); status != 201 || !strings.Contains(got, `"protocol_min":"tls1.3"`) {
		t.Fatalf("POST gobetween tls body = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "TLS through gtls", func() bool {
		got, _ := cmpAskTLS(taddr, "secure.test", roots)
		return got == "one"
	})
	if conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", taddr,
		&tls.Config{ServerName: "secure.test", RootCAs: roots, MaxVersion: tls.VersionTLS12}); err == nil {
		conn.Close()
		t.Fatal("a TLS 1.2 client was accepted; want min_version tls1.3 to refuse it")
	}
	if _, got := adminDo(t, c, "GET", "/config/apps/tls/certificates/load_files", ""); !strings.Contains(got, `"between:gtls"`) || !strings.Contains(got, cert.cert) {
		t.Fatalf("load_files = %s, want gtls's tagged files", got)
	}
	if status, got := adminDo(t, c, "DELETE", "/between/servers/gtls", ""); status != 204 {
		t.Fatalf("DELETE gtls = %d %s", status, got)
	}
	if status, got := adminDo(t, c, "GET", "/config/apps/tls", ""); status != 200 || strings.Contains(got, "between:gtls") || strings.Contains(got, cert.cert) {
		t.Fatalf("GET /config/apps/tls after the delete = %d %s, want gtls's files gone", status, got)
	}
	if _, err := cmpAskTLS(taddr, "secure.test", roots); err == nil {
		t.Fatal("gtls still answers after DELETE")
	}

	// (c) udp: a datagram is relayed to the backend and the reply back
	echo := newUDPBackend(t, "echo", 1)
	uaddr := freeUDPAddr(t)
	ubody := fmt.Sprintf(`{"bind":%q,"protocol":"udp","udp":{"max_responses":1},"healthcheck":{"kind":"none"},"discovery":{"kind":"static","static_list":[%q]}}`, uaddr, echo.addr)
	if status, got := adminDo(t, c, "POST", "/between/servers/gudp", ubody); status != 201 || !strings.Contains(got, `"between+udp/`+uaddr+`"`) {
		t.Fatalf("POST gobetween udp body = %d %s", status, got)
	}
	if got := udpAskRetry(t, dialUDP(t, uaddr), "hello"); got != "echo hello 1" {
		t.Fatalf("through gudp: %q, want %q", got, "echo hello 1")
	}

	// (d) the shim of docs/migration-gobetween.md, in the same Caddy: POST
	// /servers/g2 with gobetween's body on the shim's address creates the
	// server, GET /servers/g2/stats answers, DELETE /servers/g2 removes it
	doc, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "migration-gobetween.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "### Keeping gobetween tooling working")
	_, after, ok2 := strings.Cut(after, "```caddyfile\n")
	shim, _, ok3 := strings.Cut(after, "```")
	if !ok || !ok2 || !ok3 || !strings.Contains(shim, "127.0.0.1:8888") || !strings.Contains(shim, "127.0.0.1:2019") {
		t.Fatalf("no shim example in docs/migration-gobetween.md:\n%s", shim)
	}
	shimAddr := freeAddr(t)
	shim = strings.ReplaceAll(strings.ReplaceAll(shim, "127.0.0.1:8888", shimAddr), "127.0.0.1:2019", "ADMIN")
	s := startCaddyfile(t, "{\n\tadmin ADMIN\n}\n"+shim)
	viaShim := &instance{t: t, admin: shimAddr}
	waitFor(t, 5*time.Second, "the shim to answer GET /", func() bool {
		status, got := adminDo(t, viaShim, "GET", "/", "")
		return status == 200 && strings.Contains(got, `"caddy_l4_version"`)
	})
	addr2 := freeAddr(t)
	body2 := fmt.Sprintf(`{"bind":%q,"balance":"leastconn","healthcheck":{"kind":"ping","interval":"1s","timeout":"500ms"},"discovery":{"kind":"static","static_list":[%q]}}`, addr2, one.addr)
	if status, got := adminDo(t, viaShim, "POST", "/servers/g2", body2); status != 201 || !strings.Contains(got, `"name":"g2"`) {
		t.Fatalf("POST /servers/g2 through the shim = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "g2 to serve", func() bool { got, _ := ask(addr2); return got == "one" })
	var stats struct {
		Backends []struct {
			Host, Port string
			Stats      struct{ Live bool }
		}
	}
	waitFor(t, 5*time.Second, "GET /servers/g2/stats through the shim", func() bool {
		status, got := adminDo(t, viaShim, "GET", "/servers/g2/stats", "")
		return status == 200 && json.Unmarshal([]byte(got), &stats) == nil && len(stats.Backends) == 1 && stats.Backends[0].Host+":"+stats.Backends[0].Port == one.addr
	})
	if status, got := adminDo(t, s, "GET", "/config/apps/layer4/servers/g2/listen", ""); status != 200 || !strings.Contains(got, "between+tcp/"+addr2) {
		t.Fatalf("GET /config/.../g2/listen = %d %s", status, got)
	}
	if status, got := adminDo(t, viaShim, "DELETE", "/servers/g2", ""); status != 204 {
		t.Fatalf("DELETE /servers/g2 through the shim = %d %s", status, got)
	}
	waitFor(t, 5*time.Second, "g2's listener to close", func() bool { _, err := ask(addr2); return err != nil })
	if status, _ := adminDo(t, viaShim, "GET", "/servers/g2/stats", ""); status != 404 {
		t.Fatalf("GET /servers/g2/stats after the delete = %d, want 404", status)
	}
}
