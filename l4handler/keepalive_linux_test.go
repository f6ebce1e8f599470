package l4handler

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestKeepaliveCaddyfile: the keepalive subdirective fills the field.
func TestKeepaliveCaddyfile(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("between x {\n\tkeepalive 45s\n\tdiscovery static 127.0.0.1:1\n}")); err != nil {
		t.Fatal(err)
	}
	if time.Duration(h.Keepalive) != 45*time.Second {
		t.Fatalf("keepalive = %v, want 45s", time.Duration(h.Keepalive))
	}
}

// TestKeepalive: without the keepalive field neither socket of a session on
// a between+tcp listener has TCP keepalive; with "45s" both have it, first
// probe after 45 seconds. The sockets are found among this process's file
// descriptors by their addresses (Caddy runs in process).
func TestKeepalive(t *testing.T) {
	for _, tc := range []struct {
		field string
		want  int // TCP_KEEPIDLE in seconds, 0 = SO_KEEPALIVE off
	}{
		{"", 0},
		{`"keepalive":"45s"`, 45},
	} {
		t.Run(fmt.Sprintf("keepalive=%d", tc.want), func(t *testing.T) {
			bl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer bl.Close()
			held := make(chan net.Conn, 1)
			go func() {
				if c, err := bl.Accept(); err == nil {
					held <- c
				}
			}()
			lb, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := lb.Addr().String()
			lb.Close()
			fields := fmt.Sprintf(`"discovery":{"kind":"static","static_list":[%q]}`, bl.Addr().String())
			if tc.field != "" {
				fields += "," + tc.field
			}
			if err := caddy.Load(config(map[string]string{"ka": server("between+tcp/"+addr, handlerJSON("ka", fields))}), true); err != nil {
				t.Fatal(err)
			}
			defer caddy.Stop()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var back net.Conn
			select {
			case back = <-held:
				defer back.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("the backend got no connection")
			}
			// A byte through the proxy: once the backend has it, the
			// handler's dial has returned, with its socket options set
			// (the backend's accept alone can come before that).
			c.SetDeadline(time.Now().Add(5 * time.Second))
			back.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := back.Read(make([]byte, 1)); err != nil {
				t.Fatalf("the backend got no byte: %v", err)
			}
			// the proxy's client socket: local addr, peer = our client; its
			// backend socket: peer = the backend, local = what it accepted
			clientSide := findSocket(t, addr, c.LocalAddr().String())
			backendSide := findSocket(t, back.RemoteAddr().String(), bl.Addr().String())
			for name, fd := range map[string]int{"client socket": clientSide, "backend socket": backendSide} {
				on, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
				if err != nil {
					t.Fatal(err)
				}
				if tc.want == 0 {
					if on != 0 {
						t.Errorf("%s: SO_KEEPALIVE on, want off", name)
					}
					continue
				}
				idle, err := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
				if err != nil {
					t.Fatal(err)
				}
				if on == 0 || idle != tc.want {
					t.Errorf("%s: SO_KEEPALIVE %d, TCP_KEEPIDLE %d; want on, %d", name, on, idle, tc.want)
				}
			}
		})
	}
}

// findSocket returns the file descriptor of this process whose TCP socket has
// local address local and peer address peer, waiting up to 5s for it.
func findSocket(t *testing.T, local, peer string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			fd, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			ls, err1 := syscall.Getsockname(fd)
			ps, err2 := syscall.Getpeername(fd)
			if err1 != nil || err2 != nil {
				continue
			}
			if sockaddr(ls) == local && sockaddr(ps) == peer {
				return fd
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no socket %s -> %s in this process", local, peer)
	return -1
}

// sockaddr formats an IPv4 socket address as "ip:port" ("" for others).
func sockaddr(sa syscall.Sockaddr) string {
	a, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		return ""
	}
	return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
}
