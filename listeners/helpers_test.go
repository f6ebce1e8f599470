package listeners

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// kind is what the checks shared by the TCP and UDP tests need to know about
// one kind of virtual listener.
type kind[L net.Listener] struct {
	network  string
	listen   caddy.ListenerFunc
	freePort func(t testing.TB, host string) string
	// sameSocket reports whether a and b share one socket.
	sameSocket func(a, b L) bool
}

var (
	tcpKind = kind[*listener]{NetworkTCP, listenTCP, freePort, func(a, b *listener) bool { return a.sock == b.sock }}
	udpKind = kind[*udpListener]{NetworkUDP, listenUDP, freeUDPPort, func(a, b *udpListener) bool { return a.sock == b.sock }}
)

// openOn returns a virtual listener of k on host:port through k's
// ListenerFunc and closes it at the end of the test.
func openOn[L net.Listener](t testing.TB, k kind[L], host, port string) L {
	t.Helper()
	ln, err := k.listen(context.Background(), k.network, host, port, 0, net.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	l := ln.(L)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// checkRegistered fails unless init registered k's network with Caddy
// (RegisterNetwork panics on a second registration of the same name).
func checkRegistered[L net.Listener](t *testing.T, k kind[L]) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatalf("registering %s again did not panic: init did not register it", k.network)
		}
	}()
	caddy.RegisterNetwork(k.network, k.listen)
}

// networkCase is an address and whether it names the network under test.
type networkCase struct {
	addr string
	want bool
}

// checkIsNetwork checks isNetwork, called name in failures, on every case.
func checkIsNetwork(t *testing.T, name string, isNetwork func(string) bool, cases []networkCase) {
	t.Helper()
	for _, tc := range cases {
		if got := isNetwork(tc.addr); got != tc.want {
			t.Errorf("%s(%q) = %v, want %v", name, tc.addr, got, tc.want)
		}
	}
}

// badAddr is a host and a port range that must not be listened on.
type badAddr struct{ host, port string }

// checkListenRejects fails for every address that k's ListenerFunc listens
// on; checkErr, if not nil, then checks the error of each refused one.
func checkListenRejects[L net.Listener](t *testing.T, k kind[L], addrs []badAddr, checkErr func(hp badAddr, err error)) {
	t.Helper()
	for _, tc := range addrs {
		ln, err := k.listen(context.Background(), k.network, tc.host, tc.port, 0, net.ListenConfig{})
		if err == nil {
			ln.(net.Listener).Close()
			t.Errorf("listen %q %q: no error", tc.host, tc.port)
		} else if checkErr != nil {
			checkErr(tc, err)
		}
	}
}

// checkCloseIdempotentAndAccept: Close twice is fine; a blocked Accept is
// released by Close and any later Accept returns net.ErrClosed. It runs as
// two subtests, named by name: without and with another listener open on
// the socket.
func checkCloseIdempotentAndAccept[L net.Listener](t *testing.T, k kind[L], name func(other bool) string) {
	for _, other := range []bool{false, true} {
		t.Run(name(other), func(t *testing.T) {
			port := k.freePort(t, "127.0.0.1")
			if other {
				openOn(t, k, "127.0.0.1", port)
			}
			l := openOn(t, k, "127.0.0.1", port)
			blocked := make(chan error, 1)
			go func() {
				_, err := l.Accept()
				blocked <- err
			}()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if err := <-blocked; !errors.Is(err, net.ErrClosed) {
				t.Fatalf("blocked Accept: %v, want net.ErrClosed", err)
			}
			for range 2 {
				if err := l.Close(); err != nil {
					t.Fatalf("second Close: %v", err)
				}
				if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
				}
			}
		})
	}
}

// checkPortZeroNotShared: port 0 binds a fresh socket per call.
func checkPortZeroNotShared[L net.Listener](t *testing.T, k kind[L]) {
	t.Helper()
	a := openOn(t, k, "127.0.0.1", "0")
	b := openOn(t, k, "127.0.0.1", "0")
	if k.sameSocket(a, b) || a.Addr().String() == b.Addr().String() {
		t.Fatalf("port 0 listeners share a socket: %v %v", a.Addr(), b.Addr())
	}
}

// listenTwiceThroughCaddy listens twice on k's network at 127.0.0.1:port
// through Caddy's NetworkAddress in ctx, checks that both calls give an L,
// share one socket and have that address, and closes both at the end of the
// test. check, if not nil, first checks what each Listen call returned.
func listenTwiceThroughCaddy[L net.Listener](t *testing.T, k kind[L], ctx caddy.Context, port string, check func(ln any)) []L {
	t.Helper()
	na, err := caddy.ParseNetworkAddress(k.network + "/127.0.0.1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	var got []L
	for range 2 {
		ln, err := na.Listen(ctx, 0, net.ListenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if check != nil {
			check(ln)
		}
		l, ok := ln.(L)
		if !ok {
			var want L
			t.Fatalf("Listen returned %T, want %T", ln, want)
		}
		t.Cleanup(func() { _ = l.Close() })
		got = append(got, l)
	}
	if !k.sameSocket(got[0], got[1]) {
		t.Fatal("two Listen calls on one address did not share the socket")
	}
	if got[0].Addr().String() != "127.0.0.1:"+port {
		t.Fatalf("Addr() = %v", got[0].Addr())
	}
	return got
}
