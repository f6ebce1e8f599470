//go:build linux

package udpsession

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needRoot skips a test that needs root (network namespaces, CAP_NET_ADMIN)
// when it runs as another user, except in CI (CI=true), where it fails.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("transparent sockets and network namespaces need root; CI runs as root")
	}
	t.Skip("transparent sockets and network namespaces need root; skipping")
}

func TestCheckTransparent(t *testing.T) {
	needRoot(t)
	if err := CheckTransparent(); err != nil {
		t.Fatalf("CheckTransparent as root: %v", err)
	}
}

// withoutNetAdmin runs fn on an OS thread whose effective capabilities lack
// CAP_NET_ADMIN and CAP_NET_RAW (the kernel accepts either for
// IP_TRANSPARENT). Capabilities are per thread on Linux and the kernel checks
// the calling thread's, so this is what a process started without them
// sees, without a child process or an external tool (setpriv, capsh). The
// thread stays locked and ends with the goroutine, so the reduced
// capabilities never leak to other goroutines; the Go runtime starts new
// threads from a clean template thread, not from a locked one.
func withoutNetAdmin(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- fmt.Errorf("capget: %w", err)
			return
		}
		data[0].Effective &^= 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- fmt.Errorf("capset: %w", err)
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("dropping CAP_NET_ADMIN for the test thread: %v", err)
	}
}

func TestTransparentWithoutCapNetAdmin(t *testing.T) {
	var (
		checkErr, dial4Err, dial6Err error
		c4, c6                       *net.UDPConn
	)
	from4 := netip.MustParseAddrPort("192.0.2.7:40053")
	from6 := netip.MustParseAddrPort("[2001:db8::7]:40053")
	withoutNetAdmin(t, func() {
		checkErr = CheckTransparent()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c4, dial4Err = DialTransparent(ctx, from4, "127.0.0.1:9")
		c6, dial6Err = DialTransparent(ctx, from6, "[::1]:9")
	})
	for _, c := range []*net.UDPConn{c4, c6} {
		if c != nil {
			c.Close()
		}
	}
	tests := []struct {
		what string
		err  error
		want []string
	}{
		{"CheckTransparent", checkErr, []string{"CAP_NET_ADMIN", "setcap cap_net_admin+ep", "root"}},
		{"DialTransparent IPv4", dial4Err, []string{"CAP_NET_ADMIN", "IP_TRANSPARENT", from4.String()}},
		{"DialTransparent IPv6", dial6Err, []string{"CAP_NET_ADMIN", "IPV6_TRANSPARENT", from6.String()}},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Errorf("%s without CAP_NET_ADMIN: no error", tt.what)
			continue
		}
		t.Logf("%s without CAP_NET_ADMIN: %v", tt.what, tt.err)
		for _, w := range tt.want {
			if !strings.Contains(tt.err.Error(), w) {
				t.Errorf("%s without CAP_NET_ADMIN: error %q does not mention %q", tt.what, tt.err, w)
			}
		}
	}
}

func TestDialTransparentBadAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialTransparent(ctx, netip.AddrPort{}, "127.0.0.1:9")
	if err == nil {
		c.Close()
		t.Fatal("DialTransparent from an invalid address: no error")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:9") {
		t.Errorf("error %q does not name the backend", err)
	}
}

var netnsSeq atomic.Int64

// testNetns creates a network namespace with lo up that is deleted when
// the test ends, and returns its name.
func testNetns(t *testing.T, role string) string {
	t.Helper()
	ns := fmt.Sprintf("between-ut-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), role)
	ipRun(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	ipRun(t, "-n", ns, "link", "set", "lo", "up")
	return ns
}

// ipRun runs ip(8) with args and fails the test on error.
func ipRun(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// inNetns runs fn on an OS thread that has joined network namespace ns;
// sockets fn opens belong to ns for their whole life, whichever goroutine
// uses them later. The thread ends with fn (it stays locked), so no other
// goroutine ever runs in ns.
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open("/run/netns/" + ns)
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
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// transparentNet is the test topology: a "proxy" and a "backend" namespace
// joined by a veth pair. The backend routes everything via the proxy, and
// the proxy delivers what the backend sends to any address locally (policy
// routing), which is what lets a transparent socket bound to a client's
// address receive the backend's replies.
type transparentNet struct {
	proxyNS, backendNS string
	backend            netip.Addr // the backend's address
	client             netip.Addr // a client address, local nowhere
}

// newTransparentNet builds the topology for IPv4 or IPv6; policy is how the
// proxy delivers the backend's replies locally: "source" (ip rule from the
// backend's net and interface) or "socket" (iptables -m socket --transparent
// marks them, ip rule fwmark), the two ways the README documents.
func newTransparentNet(t *testing.T, v6 bool, policy string) transparentNet {
	t.Helper()
	needRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ip (iproute2) not found: CI must install it")
		}
		t.Skip("ip (iproute2) not found; skipping")
	}
	n := transparentNet{proxyNS: testNetns(t, "proxy"), backendNS: testNetns(t, "backend")}
	for _, ns := range []string{n.proxyNS, n.backendNS} {
		// no duplicate address detection on the veths: their link-local
		// addresses, which neighbour discovery uses, work at once
		inNetns(t, ns, func() {
			for _, conf := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/accept_dad", []byte("0"), 0o644); err != nil && v6 {
					t.Errorf("disable IPv6 DAD in %s: %v", ns, err)
				}
			}
		})
	}
	// the interfaces are created inside the namespaces, so their names
	// need not be unique on the host
	ipRun(t, "-n", n.proxyNS, "link", "add", "vp", "type", "veth", "peer", "name", "vb", "netns", n.backendNS)
	ipRun(t, "-n", n.proxyNS, "link", "set", "vp", "up")
	ipRun(t, "-n", n.backendNS, "link", "set", "vb", "up")
	fam, proxyNet, proxyIP, backendIP, client, any := "-4", "10.99.1.0/24", "10.99.1.1", "10.99.1.2", "10.99.2.5", "0.0.0.0/0"
	var nodad []string
	if v6 {
		fam, proxyNet, proxyIP, backendIP, client, any = "-6", "fd00:99:1::/64", "fd00:99:1::1", "fd00:99:1::2", "fd00:99:2::5", "::/0"
		nodad = []string{"nodad"}
	}
	plen := strings.Split(proxyNet, "/")[1]
	ipRun(t, append([]string{"-n", n.proxyNS, fam, "addr", "add", proxyIP + "/" + plen, "dev", "vp"}, nodad...)...)
	ipRun(t, append([]string{"-n", n.backendNS, fam, "addr", "add", backendIP + "/" + plen, "dev", "vb"}, nodad...)...)
	ipRun(t, "-n", n.backendNS, fam, "route", "add", "default", "via", proxyIP)
	switch policy {
	case "source":
		// what the backend sends (from its net, arriving on vp) is
		// delivered locally, whatever its destination
		ipRun(t, "-n", n.proxyNS, fam, "rule", "add", "from", proxyNet, "iif", "vp", "lookup", "100")
	case "socket":
		// only packets for which a transparent socket exists are marked
		// and delivered locally (the kernel's tproxy documentation)
		iptables := "iptables"
		if v6 {
			iptables = "ip6tables"
		}
		if _, err := exec.LookPath(iptables); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: CI must install iptables", iptables)
			}
			t.Skipf("%s not found; skipping", iptables)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.proxyNS, iptables, "-t", "mangle", "-A", "PREROUTING",
			"-p", "udp", "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", "1").CombinedOutput(); err != nil {
			t.Fatalf("%s -m socket --transparent in %s: %v\n%s", iptables, n.proxyNS, err, out)
		}
		ipRun(t, "-n", n.proxyNS, fam, "rule", "add", "fwmark", "1", "lookup", "100")
	default:
		t.Fatalf("unknown policy %q", policy)
	}
	ipRun(t, "-n", n.proxyNS, fam, "route", "add", "local", any, "dev", "lo", "table", "100")
	n.backend = netip.MustParseAddr(backendIP)
	n.client = netip.MustParseAddr(client)
	return n
}

func TestDialTransparent(t *testing.T) {
	for _, tt := range []struct {
		v6     bool
		policy string
	}{{false, "source"}, {true, "source"}, {false, "socket"}, {true, "socket"}} {
		name := "IPv4"
		if tt.v6 {
			name = "IPv6"
		}
		v6 := tt.v6
		t.Run(name+","+tt.policy, func(t *testing.T) {
			n := newTransparentNet(t, v6, tt.policy)
			var (
				be  *net.UDPConn
				err error
			)
			inNetns(t, n.backendNS, func() {
				be, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.backend, 0)))
			})
			if err != nil {
				t.Fatalf("backend listen: %v", err)
			}
			defer be.Close()
			beAddr := be.LocalAddr().(*net.UDPAddr).AddrPort()

			froms := []netip.AddrPort{netip.AddrPortFrom(n.client, 40053)}
			if !v6 {
				// an IPv4-mapped client address (as a dual-stack listener
				// reports it) is dialed as IPv4
				froms = append(froms, netip.AddrPortFrom(netip.AddrFrom16(n.client.As16()), 40054))
			}
			for _, from := range froms {
				var c *net.UDPConn
				inNetns(t, n.proxyNS, func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					c, err = DialTransparent(ctx, from, beAddr.String())
				})
				if err != nil {
					t.Fatalf("DialTransparent(%s, %s): %v", from, beAddr, err)
				}
				want := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				if got := c.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
					t.Errorf("local address %s, want %s", got, want)
				}
				start := time.Now()
				transparentRoundTrip(t, c, be, want)
				t.Logf("round trip from %s in %s", from, time.Since(start))
				c.Close()
			}
		})
	}
}

// transparentRoundTrip sends a datagram on c, checks that be receives it
// from client, answers it, and checks that c receives the answer.
func transparentRoundTrip(t *testing.T, c, be *net.UDPConn, client netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	be.SetDeadline(deadline)
	msg := []byte("ping from " + client.String())
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write to backend: %v", err)
	}
	buf := make([]byte, 1500)
	nr, src, err := be.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("backend read: %v", err)
	}
	if src != client {
		t.Errorf("the backend saw source %s, want the client's %s", src, client)
	}
	if !bytes.Equal(buf[:nr], msg) {
		t.Errorf("the backend got %q, want %q", buf[:nr], msg)
	}
	reply := []byte("pong to " + src.String())
	if _, err := be.WriteToUDPAddrPort(reply, src); err != nil {
		t.Fatalf("backend reply: %v", err)
	}
	nr, err = c.Read(buf)
	if err != nil {
		t.Fatalf("read the reply on the transparent socket: %v", err)
	}
	if !bytes.Equal(buf[:nr], reply) {
		t.Errorf("the transparent socket got %q, want %q", buf[:nr], reply)
	}
}
