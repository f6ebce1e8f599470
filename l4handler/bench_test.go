package l4handler

// Allocations per TCP connection through an in-process caddy-l4 server, to
// tell caddy-l4's share from Between's. Every iteration is one client
// connection: dial, (when the server answers) write one byte, half-close and
// read the one-byte answer, read until EOF, close; and then wait until every
// goroutine the connection started (layer4's handler, Between's or the
// proxy's copy loops, the test backend's) has returned, so each iteration is
// counted whole. The numbers include the client's dial (15 allocations) and,
// where there is one, the test backend's accept and answer (8).
//
//	go test -run xxx -bench Conn -benchmem ./l4handler/
//
// bench/README.md splits the allocations of ConnBetween between caddy-l4,
// Between and Go's net package, from two exact memory profiles
// (-memprofilerate 1) of 10000 and 20000 connections, the first subtracted
// from the second so that Caddy's start-up cancels out.
//
// The benchmarks:
//   - ConnBare: a plain Go accept loop that closes each connection, no Caddy:
//     the cost of the client's dial and the server's accept alone.
//   - ConnLayer4Only: a layer4 server whose one route is caddy-l4's close
//     handler: accept, WrapConnection, route, close. (Its echo handler would
//     add io.Copy's 32 KiB buffer per connection.)
//   - ConnBetween: the same route with the between handler, proxying to a
//     local backend that answers one byte.
//   - ConnL4Proxy: caddy-l4's own proxy handler to the same backend.
//
// Each Caddy benchmark runs on a plain listen address (listen=tcp) and on
// Between's network type (listen=between+tcp).

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// benchAddr is a loopback TCP address that was free a moment ago.
func benchAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// oneByteBackend accepts connections and answers each with one byte: read
// one byte, write one, close.
func oneByteBackend(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				var buf [1]byte
				if _, err := io.ReadFull(c, buf[:]); err == nil {
					c.Write(buf[:])
				}
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// benchCaddy runs the layer4 server srv (listening on addr) in the in-process
// Caddy until the benchmark ends.
func benchCaddy(b *testing.B, srv string) {
	b.Helper()
	if err := caddy.Load(config(map[string]string{"bench": srv}), true); err != nil {
		b.Fatalf("loading config: %v", err)
	}
	b.Cleanup(func() { caddy.Stop() })
}

// oneConn is one client connection: dial; if ask, write a byte, half-close
// and read the one-byte answer; read until EOF, close.
func oneConn(b *testing.B, addr string, ask bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	buf := [8]byte{'x'}
	if ask {
		if _, err := c.Write(buf[:1]); err != nil {
			b.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			b.Fatalf("no answer: %v", err)
		}
	}
	for {
		n, err := c.Read(buf[:])
		if err == io.EOF {
			break
		}
		if err != nil || n > 0 {
			b.Fatalf("after the answer: %d more bytes, %v", n, err)
		}
	}
	c.Close()
}

// settle waits until no more than base goroutines run: the server side has
// finished the previous connection.
func settle(b *testing.B, base int) {
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			b.Fatalf("%d goroutines still running, want %d", runtime.NumGoroutine(), base)
		}
		runtime.Gosched()
	}
}

// benchConns measures b.N sequential connections to addr (see oneConn).
func benchConns(b *testing.B, addr string, ask bool) {
	b.Helper()
	// warm up pools and the runtime, then take the idle goroutine count
	for range 50 {
		oneConn(b, addr, ask)
	}
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		oneConn(b, addr, ask)
		settle(b, base)
	}
}

// listens are the two ways a layer4 server can listen.
var listens = []struct{ name, prefix string }{
	{"tcp", ""},
	{"between+tcp", "between+tcp/"},
}

func BenchmarkConnBare(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	benchConns(b, ln.Addr().String(), false)
}

func BenchmarkConnLayer4Only(b *testing.B) {
	for _, l := range listens {
		b.Run("listen="+l.name, func(b *testing.B) {
			addr := benchAddr(b)
			benchCaddy(b, server(l.prefix+addr, `{"handler":"close"}`))
			benchConns(b, addr, false)
		})
	}
}

func BenchmarkConnBetween(b *testing.B) {
	for _, l := range listens {
		b.Run("listen="+l.name, func(b *testing.B) {
			backend := oneByteBackend(b)
			addr := benchAddr(b)
			h := handlerJSON("bench", fmt.Sprintf(`"balance":{"policy":"roundrobin"},"discovery":{"kind":"static","static_list":[%q]}`, backend))
			benchCaddy(b, server(l.prefix+addr, h))
			benchConns(b, addr, true)
		})
	}
}

func BenchmarkConnL4Proxy(b *testing.B) {
	for _, l := range listens {
		b.Run("listen="+l.name, func(b *testing.B) {
			backend := oneByteBackend(b)
			addr := benchAddr(b)
			benchCaddy(b, server(l.prefix+addr, fmt.Sprintf(`{"handler":"proxy","upstreams":[{"dial":[%q]}]}`, backend)))
			benchConns(b, addr, true)
		})
	}
}
