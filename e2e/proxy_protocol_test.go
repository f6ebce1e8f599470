package e2e

import (
	"bufio"
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
)

func init() {
	exercises["proxy-protocol.caddyfile"] = exerciseProxyProtocol
}

// haproxy is a running HAProxy whose log lines (format raw, to stdout) the
// test reads.
type haproxy struct {
	out lockedBuffer
	pid int
}

func (h *haproxy) logs() string { return h.out.String() }

// startHAProxy runs HAProxy in the foreground with the given sections after
// a global section that logs to stdout, and waits until it accepts on ready.
func startHAProxy(t *testing.T, sections, ready string) *haproxy {
	t.Helper()
	bin := needTool(t, "haproxy", "haproxy")
	cfg := "global\n\tlog stdout format raw local0\n" +
		"defaults\n\tmode tcp\n\tlog global\n\ttimeout connect 2s\n\ttimeout client 10s\n\ttimeout server 10s\n" + sections
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &haproxy{}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &h.out, &h.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.pid = cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", tail(h.logs(), 30))
		}
	})
	waitFor(t, 10*time.Second, "haproxy to listen on "+ready, func() bool {
		c, err := net.DialTimeout("tcp", ready, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return h
}

// dialFrom connects to addr from the local IP from (any port).
func dialFrom(from, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return d.Dial("tcp", addr)
}

// TestProxyProtocolToBackend: Between sends PROXY v1 and v2 headers to
// HAProxy (accept-proxy), which logs the client and destination addresses it
// was told; for an IPv4 client (127.0.0.2) and an IPv6 client (::1).
func TestProxyProtocolToBackend(t *testing.T) {
	echo := echoBackend(t)
	peer := freeAddr(t)
	hp := startHAProxy(t, fmt.Sprintf(`frontend fe
	bind %s accept-proxy
	option logasap
	log-format "seen ci=%%ci cp=%%cp fi=%%fi fp=%%fp"
	default_backend be
backend be
	server echo %s
`, peer, echo.addr), peer)

	servers := map[string]any{}
	ports := map[string]int{}
	for _, v := range []string{"1", "2"} {
		p := freePort(t)
		ports[v] = p
		servers["pp"+v] = map[string]any{
			"listen":         []string{fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("[::1]:%d", p)},
			"discovery":      map[string]any{"kind": "static", "static_list": []string{peer}},
			"proxy_protocol": map[string]any{"version": v},
		}
	}
	chain := freeAddr(t)
	servers["chain"] = map[string]any{
		"listen":                []string{chain},
		"discovery":             map[string]any{"kind": "static", "static_list": []string{peer}},
		"accept_proxy_protocol": map[string]any{"allow": []string{"127.0.0.1/32"}},
		"proxy_protocol":        map[string]any{"version": "2"},
	}
	startCaddy(t, between(servers))

	// accept_proxy_protocol then proxy_protocol: the declared addresses go on
	t.Run("declared", func(t *testing.T) {
		conn, err := dialFrom("127.0.0.1", chain)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "PROXY TCP6 2001:db8::9 2001:db8::10 1111 2222\r\nhello\n")
		if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "hello\n" {
			t.Fatalf("echo: %q, %v", line, err)
		}
		want := "seen ci=2001:db8::9 cp=1111 fi=2001:db8::10 fp=2222"
		waitFor(t, 5*time.Second, "haproxy to log "+want, func() bool {
			return strings.Contains(hp.logs(), want+"\n")
		})
	})

	for _, c := range []struct {
		version, client, listen string
	}{
		{"1", "127.0.0.2", "127.0.0.1"},
		{"2", "127.0.0.2", "127.0.0.1"},
		{"1", "::1", "::1"},
		{"2", "::1", "::1"},
	} {
		t.Run("v"+c.version+"/"+c.client, func(t *testing.T) {
			addr := net.JoinHostPort(c.listen, fmt.Sprint(ports[c.version]))
			conn, err := dialFrom(c.client, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(conn, "hello v%s\n", c.version)
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || line != "hello v"+c.version+"\n" {
				t.Fatalf("echo through Between and HAProxy: %q, %v", line, err)
			}
			local := conn.LocalAddr().(*net.TCPAddr)
			want := fmt.Sprintf("seen ci=%s cp=%d fi=%s fp=%d", c.client, local.Port, c.listen, ports[c.version])
			waitFor(t, 5*time.Second, "haproxy to log "+want, func() bool {
				return strings.Contains(hp.logs(), want+"\n")
			})
		})
	}
}

// TestProxyProtocolFromClients: HAProxy in front of Between sends PROXY v2
// (or v1); caddy-l4's proxy_protocol handler, or Between's own
// accept_proxy_protocol, reads it, and Between's access rules and iphash act
// on the original client address, not HAProxy's.
func TestProxyProtocolFromClients(t *testing.T) {
	for _, c := range []struct{ name, send string }{
		{"caddy-l4 handler", "send-proxy-v2"},
		{"accept_proxy_protocol v2", "send-proxy-v2"},
		{"accept_proxy_protocol v1", "send-proxy"},
	} {
		t.Run(c.name, func(t *testing.T) { testProxyFromClients(t, c.name, c.send) })
	}
}

func testProxyFromClients(t *testing.T, mode, send string) {
	var backends []string
	for _, n := range []string{"a", "b", "c"} {
		backends = append(backends, nameBackend(t, n).addr)
	}
	lb := freeAddr(t)
	fields := map[string]any{
		"balance":   map[string]any{"policy": "iphash"},
		"discovery": map[string]any{"kind": "static", "static_list": backends},
		"access":    map[string]any{"default": "allow", "rules": []string{"deny 127.0.0.3"}},
	}
	handle := []any{map[string]any{"handler": "proxy_protocol", "allow": []string{"127.0.0.1/32"}}, betweenHandler("front", fields)}
	if mode != "caddy-l4 handler" {
		fields["accept_proxy_protocol"] = map[string]any{"allow": []string{"127.0.0.1"}}
		handle = []any{betweenHandler("front", fields)}
	}
	c := startCaddy(t, layer4(map[string]any{"front": map[string]any{
		"listen": []string{lb},
		"routes": []any{map[string]any{"handle": handle}},
	}}))
	front := freeAddr(t)
	startHAProxy(t, fmt.Sprintf(`frontend fe
	bind %s
	default_backend be
backend be
	server between %s %s
`, front, lb, send), front)

	askFrom := func(from string) (string, error) {
		conn, err := dialFrom(from, front)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		return strings.TrimSpace(line), err
	}

	// denied by its own address although HAProxy (127.0.0.1) is allowed
	if got, err := askFrom("127.0.0.3"); err != io.EOF && !isReset(err) || got != "" {
		t.Errorf("127.0.0.3 (denied): got %q, %v; want the connection closed with no data", got, err)
	}
	waitFor(t, 5*time.Second, "the refusal in Between's statistics", func() bool {
		return statsRefused(t, c, "front") >= 1
	})

	// iphash on the declared addresses: each client keeps its backend, and
	// the clients spread over more than the one backend HAProxy's own
	// address would get
	seen := map[string]bool{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9", "127.0.0.10"} {
		first, err := askFrom(ip)
		if err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
		for range 3 {
			if got, err := askFrom(ip); got != first || err != nil {
				t.Errorf("%s: backend %q then %q (%v): iphash must keep a client on one backend", ip, first, got, err)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Errorf("8 client addresses all went to %v: iphash saw one address (HAProxy's?)", seen)
	}

	if mode != "caddy-l4 handler" {
		// a client outside allow is not trusted: its header is not read
		// (the backend gets it as data) and its own address counts
		conn, err := dialFrom("127.0.0.4", lb)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "PROXY TCP4 127.0.0.3 127.0.0.1 1 2\r\n")
		if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line == "" {
			t.Errorf("untrusted client declaring a denied address: %q, %v; want served under its own address", line, err)
		}
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// statsRefused is a handler's refused_connections from its live statistics.
func statsRefused(t *testing.T, c *instance, name string) uint64 {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers/" + name + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Refused uint64 `json:"refused_connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s.Refused
}

// exerciseProxyProtocol runs examples/proxy-protocol.caddyfile: a client
// declares an address in a PROXY v1 header, Between's access rules act on
// it, and Caddy's http app behind Between (proxy_protocol listener wrapper)
// answers with that address, handed on in Between's PROXY v2 header.
func exerciseProxyProtocol(t *testing.T, path string) {
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text, ports := rewritePorts(t, string(orig), 3000, 3001)
	text = strings.Replace(text, "{\n", "{\n\tadmin ADMIN\n", 1)
	startCaddyfile(t, text)
	lb := fmt.Sprintf("127.0.0.1:%d", ports[3000])
	get := func(declared string) (string, error) {
		conn, err := net.DialTimeout("tcp", lb, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "PROXY TCP4 %s 127.0.0.1 5555 %d\r\nGET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", declared, ports[3000])
		b, err := io.ReadAll(conn)
		return string(b), err
	}
	waitFor(t, 5*time.Second, "the example to answer with the declared client", func() bool {
		body, _ := get("192.0.2.7")
		return strings.HasSuffix(body, "client 192.0.2.7")
	})
	if body, _ := get("192.0.2.66"); body != "" {
		t.Errorf("denied client 192.0.2.66 got an answer: %q", body)
	}
}
