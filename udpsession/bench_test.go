package udpsession

import (
	"testing"
	"time"
)

// BenchmarkServeDatagram relays one request and its reply per op between an
// in-memory client and an echo backend on loopback, through one open
// virtual session: the steady-state UDP path.
func BenchmarkServeDatagram(b *testing.B) {
	echo := startEcho(b, 1, false)
	r := startServe(b, &Config{ClientIdle: time.Minute}, newElector(echo.b))
	req := make([]byte, 64)
	r.exchange(b, string(req)) // open the session
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		r.c.in <- req
		r.c.free <- <-r.c.out
	}
	b.StopTimer()
	r.stop(b)
}

// BenchmarkForwarderSend is the fire-and-forget send on a shared socket.
func BenchmarkForwarderSend(b *testing.B) {
	echo := startEcho(b, 0, false)
	f := NewForwarder()
	defer f.Close()
	p := make([]byte, 64)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Send(echo.b, p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServeNewSession relays one request and its reply per op with
// max_responses 1 (DNS-style): every request starts a new virtual session,
// on a socket of its own or a parked one reused.
func BenchmarkServeNewSession(b *testing.B) {
	echo := startEcho(b, 1, false)
	r := startServe(b, &Config{MaxResponses: 1, ClientIdle: time.Minute}, newElector(echo.b))
	req := make([]byte, 64)
	r.exchange(b, string(req))
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		r.c.in <- req
		r.c.free <- <-r.c.out
	}
	b.StopTimer()
	r.stop(b)
}
