package e2e

// UDP transparent mode end to end: three network namespaces, client - proxy
// - backend, joined by veth pairs; the proxy namespace routes between the
// client's and the backend's nets. Caddy runs in the proxy namespace with a
// between handler in transparent mode; the backend, an echo that prefixes
// each reply with the source address it saw, must see the client's own
// address, and its replies must come back through the proxy's transparent
// socket to the client.
//
// The client's and the backend's sockets are opened in this process, on
// OS threads that joined their namespace (setns), so no helper process is
// needed; caddy is started through `ip netns exec`.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tpNet is the addressing of one IP family of the test topology.
type tpNet struct {
	family           string // "-4" or "-6" for ip(8)
	clientNet, beNet string // prefixes: client - proxy, proxy - backend
	client, proxyC   string // addresses on the client link
	proxyB, backend  string // addresses on the backend link
	plen, anyPrefix  string // prefix length of both nets; the whole address space
	forwardingSysctl string
}

var tpNets = map[string]tpNet{
	"IPv4": {"-4", "10.98.1.0/24", "10.98.2.0/24", "10.98.1.2", "10.98.1.1", "10.98.2.1", "10.98.2.2", "24", "0.0.0.0/0", "net/ipv4/ip_forward"},
	"IPv6": {"-6", "fd00:98:1::/64", "fd00:98:2::/64", "fd00:98:1::2", "fd00:98:1::1", "fd00:98:2::1", "fd00:98:2::2", "64", "::/0", "net/ipv6/conf/all/forwarding"},
}

func TestUDPTransparent(t *testing.T) {
	for _, name := range []string{"IPv4", "IPv6"} {
		t.Run(name, func(t *testing.T) { udpTransparent(t, tpNets[name]) })
	}
}

func udpTransparent(t *testing.T, n tpNet) {
	nsNeedRoot(t)
	ip := needTool(t, "ip", "iproute2")
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	clientNS, proxyNS, backendNS := tpNetns(t, ip, "client"), tpNetns(t, ip, "proxy"), tpNetns(t, ip, "backend")
	for _, ns := range []string{clientNS, proxyNS, backendNS} {
		// no duplicate address detection: IPv6 addresses, link-local ones
		// included, work at once
		tpSysctl(t, ns, "net/ipv6/conf/all/accept_dad", "0")
		tpSysctl(t, ns, "net/ipv6/conf/default/accept_dad", "0")
	}
	tpSysctl(t, proxyNS, n.forwardingSysctl, "1")

	// veths are created inside the namespaces: their names are private
	run("-n", proxyNS, "link", "add", "pc", "type", "veth", "peer", "name", "c0", "netns", clientNS)
	run("-n", proxyNS, "link", "add", "pb", "type", "veth", "peer", "name", "b0", "netns", backendNS)
	addr := func(ns, a, dev string) {
		args := []string{"-n", ns, n.family, "addr", "add", a + "/" + n.plen, "dev", dev}
		if n.family == "-6" {
			args = append(args, "nodad")
		}
		run(args...)
		run("-n", ns, "link", "set", dev, "up")
	}
	addr(clientNS, n.client, "c0")
	addr(proxyNS, n.proxyC, "pc")
	addr(proxyNS, n.proxyB, "pb")
	addr(backendNS, n.backend, "b0")
	run("-n", clientNS, n.family, "route", "add", "default", "via", n.proxyC)
	// the backend answers the client's address through the proxy
	run("-n", backendNS, n.family, "route", "add", "default", "via", n.proxyB)
	// the proxy delivers what comes from the backend net locally, whatever
	// its destination: the backend's replies to a client address reach the
	// transparent socket bound to it (iif keeps the proxy's own traffic
	// from the backend-side address out of the rule)
	run("-n", proxyNS, n.family, "rule", "add", "from", n.beNet, "iif", "pb", "lookup", "100")
	run("-n", proxyNS, n.family, "route", "add", "local", n.anyPrefix, "dev", "lo", "table", "100")

	be := tpEchoBackend(t, backendNS, netip.AddrPortFrom(netip.MustParseAddr(n.backend), 5353))

	proxyAddr := netip.AddrPortFrom(netip.MustParseAddr(n.proxyC), 5353)
	apps := layer4(map[string]any{"tp": map[string]any{
		"listen": []string{"between+udp/" + proxyAddr.String()},
		"routes": []any{map[string]any{"handle": []any{map[string]any{
			"handler":             "between",
			"name":                "tp",
			"discovery":           map[string]any{"kind": "static", "static_list": []string{be.addr.String()}},
			"udp":                 map[string]any{"transparent": true, "max_responses": 1},
			"client_idle_timeout": "10s",
		}}}},
	}})
	caddy := tpStartCaddy(t, ip, proxyNS, apps)

	var client *net.UDPConn
	tpInNetns(t, clientNS, func() error {
		var err error
		client, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(n.client), 0)))
		return err
	})
	defer client.Close()
	clientAddr := client.LocalAddr().(*net.UDPAddr).AddrPort()

	// each datagram is its own virtual session (max_responses 1): each is
	// dialed from the client's address anew and gets its own reply
	buf := make([]byte, 2048)
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		want := "src=" + clientAddr.String() + " " + msg
		// caddy may still be starting: resend until the answer comes
		deadline := time.Now().Add(15 * time.Second)
		var got string
		for got == "" {
			if time.Now().After(deadline) {
				t.Fatalf("datagram %d: no reply from %s within 15s (backend saw %v); caddy output:\n%s",
					i, proxyAddr, be.sources(), tail(caddy.logs(), logTail()))
			}
			if _, err := client.WriteToUDPAddrPort([]byte(msg), proxyAddr); err != nil {
				t.Fatalf("client write: %v", err)
			}
			client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				nr, from, err := client.ReadFromUDPAddrPort(buf)
				if err != nil {
					break // timeout: send again
				}
				if from != proxyAddr {
					t.Errorf("reply from %s, want the proxy's %s", from, proxyAddr)
				}
				if r := string(buf[:nr]); strings.HasSuffix(r, " "+msg) {
					got = r
					break
				}
				// a late answer to an earlier resend: read on
			}
		}
		if got != want {
			t.Errorf("datagram %d: reply %q, want %q (the backend must see the client's address)", i, got, want)
		}
	}
	for _, src := range be.sources() {
		if src != clientAddr {
			t.Errorf("the backend saw a datagram from %s, want only the client's %s", src, clientAddr)
		}
	}
}

// TestUDPTransparentNeedsCapNetAdmin starts caddy without CAP_NET_ADMIN
// (and CAP_NET_RAW, which the kernel also accepts for IP_TRANSPARENT): the
// config must be refused at start with an error that says what is missing,
// not fail on the first datagram. setpriv drops the capabilities from the
// bounding and inheritable sets, so root's caddy starts without them.
func TestUDPTransparentNeedsCapNetAdmin(t *testing.T) {
	nsNeedRoot(t)
	setpriv := needTool(t, "setpriv", "util-linux")
	apps := layer4(map[string]any{"tp": map[string]any{
		"listen": []string{fmt.Sprintf("between+udp/127.0.0.1:%d", freePort(t))},
		"routes": []any{map[string]any{"handle": []any{map[string]any{
			"handler":             "between",
			"name":                "tp",
			"discovery":           map[string]any{"kind": "static", "static_list": []string{"127.0.0.1:9"}},
			"udp":                 map[string]any{"transparent": true, "max_responses": 1},
			"client_idle_timeout": "10s",
		}}}},
	}})
	home := t.TempDir()
	path := filepath.Join(home, "caddy.json")
	cfg := fmt.Sprintf(`{"admin":{"disabled":true},"apps":%s}`, apps)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, setpriv, "--inh-caps=-all", "--bounding-set=-net_admin,-net_raw", "--",
		caddyBin, "run", "--config", path)
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("caddy without CAP_NET_ADMIN kept running with a transparent handler; output:\n%s", tail(string(out), logTail()))
	}
	if err == nil {
		t.Fatalf("caddy without CAP_NET_ADMIN exited cleanly; output:\n%s", tail(string(out), logTail()))
	}
	for _, want := range []string{"udp.transparent", "CAP_NET_ADMIN", "setcap"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("caddy's start error does not mention %q; output:\n%s", want, tail(string(out), logTail()))
		}
	}
}

// tpNetns creates a network namespace with lo up, deleted (after stopping
// whatever the test started in it) when the test ends.
func tpNetns(t *testing.T, ip, role string) string {
	t.Helper()
	ns := fmt.Sprintf("between-e2e-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	if out, err := exec.Command(ip, "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", ns, err, out)
	}
	return ns
}

// tpInNetns runs fn on an OS thread that joined network namespace ns, so
// the sockets fn opens live in ns (whichever goroutine uses them later).
// The thread stays locked and ends with fn: no other goroutine runs in ns.
func tpInNetns(t *testing.T, ns string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			done <- err
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			done <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		done <- fn()
	}()
	if err := <-done; err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// tpSysctl sets a network sysctl (path under /proc/sys) in namespace ns.
func tpSysctl(t *testing.T, ns, key, value string) {
	t.Helper()
	tpInNetns(t, ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// tpBackend is a UDP echo in the backend namespace: it answers each
// datagram with "src=<source it saw> <datagram>".
type tpBackend struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []netip.AddrPort
}

func (b *tpBackend) sources() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]netip.AddrPort(nil), b.seen...)
}

func tpEchoBackend(t *testing.T, ns string, addr netip.AddrPort) *tpBackend {
	t.Helper()
	var pc *net.UDPConn
	tpInNetns(t, ns, func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	b := &tpBackend{addr: addr}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, src, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.mu.Lock()
			b.seen = append(b.seen, src)
			b.mu.Unlock()
			reply := append([]byte("src="+src.String()+" "), buf[:n]...)
			pc.WriteToUDPAddrPort(reply, src)
		}
	}()
	return b
}

// tpStartCaddy runs caddy in namespace ns with the apps config and its
// admin endpoint off (it would be out of this process's reach). Readiness is
// the caller's first answered datagram.
func tpStartCaddy(t *testing.T, ip, ns, apps string) *instance {
	t.Helper()
	c := &instance{t: t, home: t.TempDir()}
	cfg := fmt.Sprintf(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"DEBUG"}}},"apps":%s}`, apps)
	path := filepath.Join(c.home, "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// ip netns exec replaces itself with caddy: the PID started here is caddy's
	c.cmd = exec.Command(ip, "netns", "exec", ns, caddyBin, "run", "--config", path)
	c.cmd.Dir = c.home
	c.cmd.Env = append(os.Environ(), "HOME="+c.home, "XDG_DATA_HOME="+c.home, "XDG_CONFIG_HOME="+c.home)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		if t.Failed() {
			t.Logf("caddy output:\n%s", tail(c.logs(), logTail()))
		}
	})
	return c
}
