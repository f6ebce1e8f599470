package tcpproxy_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-between/between/tcpproxy"
)

// rig is one proxied session over loopback: the test holds client and
// backend; Proxy runs between front (accepted from client) and the
// connection it dialled to backend.
type rig struct {
	client, backend *net.TCPConn
	*outcome
}

// outcome is the result of a Proxy call that runs in the background.
type outcome struct {
	done chan tcpproxy.Result
	once sync.Once
	res  tcpproxy.Result
	ok   bool
}

// runProxy runs Proxy(front, dialled, o) in the background. At cleanup it
// closes the test's ends and checks that Proxy returned.
func runProxy(tb testing.TB, front, dialled net.Conn, o tcpproxy.Options, ends ...net.Conn) *outcome {
	out := &outcome{done: make(chan tcpproxy.Result, 1)}
	go func() { out.done <- tcpproxy.Proxy(front, dialled, o) }()
	tb.Cleanup(func() {
		for _, c := range ends {
			c.Close()
		}
		if _, ok := out.wait(5 * time.Second); !ok {
			tb.Error("Proxy did not return after both ends closed")
		}
	})
	return out
}

// wait returns Proxy's result, or false if it has not returned within d.
func (o *outcome) wait(d time.Duration) (tcpproxy.Result, bool) {
	o.once.Do(func() {
		select {
		case o.res = <-o.done:
			o.ok = true
		case <-time.After(d):
		}
	})
	return o.res, o.ok
}

func pair(tb testing.TB) (dialled, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		d.Close()
		tb.Fatal(err)
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// hideTCP hides *net.TCPConn so that Proxy takes its generic path; like
// tls.Conn and net.UnixConn it still offers CloseWrite.
type hideTCP struct{ *net.TCPConn }

func (h hideTCP) ReadFrom(io.Reader) (int64, error) { panic("hideTCP: ReadFrom must not be used") }

func startRig(tb testing.TB, o tcpproxy.Options, generic bool) *rig {
	tb.Helper()
	client, front := pair(tb)
	dialled, backend := pair(tb)
	var f, d net.Conn = front, dialled
	if generic {
		f, d = hideTCP{front}, hideTCP{dialled}
	}
	return &rig{client: client, backend: backend, outcome: runProxy(tb, f, d, o, client, backend)}
}

// startPipes is startRig over net.Pipe: conns that have no CloseWrite and
// cannot splice, and whose Read takes each Write whole (up to its buffer).
func startPipes(tb testing.TB, o tcpproxy.Options) (client, backend net.Conn, out *outcome) {
	tb.Helper()
	client, front := net.Pipe()
	dialled, backend := net.Pipe()
	return client, backend, runProxy(tb, front, dialled, o, client, backend)
}

// stream writes n pseudo-random bytes (seeded) to w and returns their hash.
func stream(w io.Writer, seed uint64, n int64) ([32]byte, error) {
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, err := io.CopyN(io.MultiWriter(w, h), src, n)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, err
}

// drain reads r to EOF and returns the byte count and hash.
func drain(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return n, sum, err
}

type side struct {
	sent, got     [32]byte
	nGot          int64
	wErr, rErr    error
	closeWriteErr error
}

// exchange sends n bytes from c (then CloseWrite) while reading c to EOF.
func exchange(c *net.TCPConn, seed uint64, n int64, out *side, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		out.sent, out.wErr = stream(c, seed, n)
		out.closeWriteErr = c.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		out.nGot, out.got, out.rErr = drain(c)
	}()
}

// waitFor polls cond until it holds, and fails the test if it does not
// within the time given.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyBulkBothDirections(t *testing.T) {
	const size = 50 << 20
	for _, tt := range []struct {
		name    string
		generic bool
	}{
		{"splice", false},
		{"generic", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var onTx, onRx atomic.Int64
			r := startRig(t, tcpproxy.Options{
				OnTx: func(n int64) { onTx.Add(n) },
				OnRx: func(n int64) { onRx.Add(n) },
			}, tt.generic)
			var cl, be side
			var wg sync.WaitGroup
			exchange(r.client, 1, size, &cl, &wg)
			exchange(r.backend, 2, size, &be, &wg)
			wg.Wait()
			for _, e := range []error{cl.wErr, cl.rErr, be.wErr, be.rErr, cl.closeWriteErr, be.closeWriteErr} {
				if e != nil {
					t.Fatal(e)
				}
			}
			if be.nGot != size || be.got != cl.sent {
				t.Fatalf("client->backend: backend got %d bytes, hash equal %v; want %d bytes and equal hashes", be.nGot, be.got == cl.sent, size)
			}
			if cl.nGot != size || cl.got != be.sent {
				t.Fatalf("backend->client: client got %d bytes, hash equal %v; want %d bytes and equal hashes", cl.nGot, cl.got == be.sent, size)
			}
			res, ok := r.wait(5 * time.Second)
			if !ok {
				t.Fatal("Proxy did not return after both sides half-closed")
			}
			if res.Tx != size || res.Rx != size || res.Err != nil || res.Idle {
				t.Fatalf("Result = %+v, want Tx=Rx=%d, no error, not idle", res, size)
			}
			if onTx.Load() != size || onRx.Load() != size {
				t.Fatalf("OnTx sum %d, OnRx sum %d, want %d each", onTx.Load(), onRx.Load(), size)
			}
		})
	}
}

// TestProxyClosedByBackend: a server that speaks and closes first is
// reported as the side that closed.
func TestProxyClosedByBackend(t *testing.T) {
	r := startRig(t, tcpproxy.Options{}, false)
	if _, err := r.backend.Write([]byte("221 bye\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.backend.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(r.client); err != nil || string(got) != "221 bye\r\n" {
		t.Fatalf("client read %q, %v", got, err)
	}
	r.client.Close()
	res, ok := r.wait(5 * time.Second)
	if !ok {
		t.Fatal("Proxy did not return")
	}
	if res.ClosedBy != "backend" {
		t.Fatalf("ClosedBy = %q, want backend", res.ClosedBy)
	}
}

func TestProxyHalfClose(t *testing.T) {
	request := []byte("GET everything\n")
	reply := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	for _, tt := range []struct {
		name    string
		generic bool
	}{
		{"splice", false},
		{"generic", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startRig(t, tcpproxy.Options{ClientIdle: 5 * time.Second, BackendIdle: 5 * time.Second}, tt.generic)
			if _, err := r.client.Write(request); err != nil {
				t.Fatal(err)
			}
			if err := r.client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			// The backend sees the request and then EOF...
			r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(r.backend)
			if err != nil {
				t.Fatalf("backend read: %v (want the request then EOF)", err)
			}
			if !bytes.Equal(got, request) {
				t.Fatalf("backend got %q, want %q", got, request)
			}
			// ...and can still answer through the open reverse direction.
			errc := make(chan error, 1)
			go func() {
				_, err := r.backend.Write(reply)
				if err == nil {
					err = r.backend.Close()
				}
				errc <- err
			}()
			r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			back, err := io.ReadAll(r.client)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("backend write: %v", err)
			}
			if !bytes.Equal(back, reply) {
				t.Fatalf("client got %d bytes, want the %d-byte reply", len(back), len(reply))
			}
			res, ok := r.wait(5 * time.Second)
			if !ok {
				t.Fatal("Proxy did not return")
			}
			if res.Tx != int64(len(request)) || res.Rx != int64(len(reply)) || res.Err != nil || res.Idle {
				t.Fatalf("Result = %+v, want Tx=%d Rx=%d", res, len(request), len(reply))
			}
			if res.ClosedBy != "client" {
				t.Fatalf("ClosedBy = %q, want client (it half-closed first)", res.ClosedBy)
			}
		})
	}
}

func TestProxyIdleTimeout(t *testing.T) {
	for _, tt := range []struct {
		name    string
		o       tcpproxy.Options
		generic bool
	}{
		{"client idle", tcpproxy.Options{ClientIdle: 300 * time.Millisecond}, false},
		{"backend idle", tcpproxy.Options{BackendIdle: 300 * time.Millisecond}, false},
		{"smaller of both", tcpproxy.Options{ClientIdle: 300 * time.Millisecond, BackendIdle: time.Hour}, false},
		{"generic path", tcpproxy.Options{ClientIdle: 300 * time.Millisecond}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r := startRig(t, tt.o, tt.generic)
			res, ok := r.wait(2 * time.Second)
			took := time.Since(start)
			if !ok {
				t.Fatal("Proxy did not end an idle session within 2 s")
			}
			if !res.Idle || res.Err != nil {
				t.Fatalf("Result = %+v, want Idle and no error", res)
			}
			if took < 300*time.Millisecond || took > time.Second {
				t.Fatalf("idle session ended after %v, want 300ms..1s", took)
			}
			// Both ends see the close.
			for name, c := range map[string]*net.TCPConn{"client": r.client, "backend": r.backend} {
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if n, err := c.Read(make([]byte, 1)); err == nil {
					t.Errorf("%s read %d bytes after idle close, want EOF", name, n)
				} else if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("%s was not closed", name)
				}
			}
		})
	}
}

// trickle sends one byte every 100ms for 1.5 s with idle limits of 400ms:
// the silent direction must not end the session.
func TestProxyOneWayStreamIsNotIdle(t *testing.T) {
	for _, tt := range []struct {
		name     string
		download bool
		generic  bool
	}{
		{"download", true, false},
		{"upload", false, false},
		{"download generic", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startRig(t, tcpproxy.Options{ClientIdle: 400 * time.Millisecond, BackendIdle: 400 * time.Millisecond}, tt.generic)
			from, to := r.backend, r.client
			if !tt.download {
				from, to = r.client, r.backend
			}
			const n = 15
			errc := make(chan error, 1)
			go func() {
				for i := range n {
					if i > 0 {
						time.Sleep(100 * time.Millisecond)
					}
					if _, err := from.Write([]byte{byte('a' + i)}); err != nil {
						errc <- err
						return
					}
				}
				errc <- from.CloseWrite()
			}()
			to.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(to)
			if err != nil {
				t.Fatalf("read: %v after %d bytes", err, len(got))
			}
			if err := <-errc; err != nil {
				t.Fatalf("stream cut while writing: %v", err)
			}
			if len(got) != n {
				t.Fatalf("got %d bytes, want %d", len(got), n)
			}
			to.Close()
			res, ok := r.wait(3 * time.Second)
			if !ok {
				t.Fatal("Proxy did not return")
			}
			if res.Idle {
				t.Fatalf("Result = %+v: a one-way stream was cut as idle", res)
			}
			if moved := res.Rx + res.Tx; moved != n {
				t.Fatalf("Result = %+v, want %d bytes in total", res, n)
			}
		})
	}
}

// Every piece is counted while the connection stays open, within the live
// interval at most.
func TestProxyLiveCounters(t *testing.T) {
	const (
		piece = 10 << 10
		count = 25
	)
	for _, tt := range []struct {
		name     string
		download bool
		generic  bool
	}{
		{"rx", true, false},
		{"tx", false, false},
		{"rx generic", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var live atomic.Int64
			o := tcpproxy.Options{}
			if tt.download {
				o.OnRx = func(n int64) { live.Add(n) }
			} else {
				o.OnTx = func(n int64) { live.Add(n) }
			}
			r := startRig(t, o, tt.generic)
			from, to := r.backend, r.client
			if !tt.download {
				from, to = r.client, r.backend
			}
			go io.Copy(io.Discard, to)
			buf := make([]byte, piece)
			for i := range count {
				if _, err := from.Write(buf); err != nil {
					t.Fatal(err)
				}
				sent := int64((i + 1) * piece)
				waitFor(t, 4*tcpproxy.LiveInterval, fmt.Sprintf("the callbacks to count piece %d of %d", i+1, count), func() bool {
					return live.Load() == sent
				})
			}
			r.client.Close()
			r.backend.Close()
			res, ok := r.wait(3 * time.Second)
			if !ok {
				t.Fatal("Proxy did not return")
			}
			want := int64(piece * count)
			got := res.Rx
			if !tt.download {
				got = res.Tx
			}
			if got != want || live.Load() != want {
				t.Fatalf("Result = %+v, callback sum %d; want %d", res, live.Load(), want)
			}
		})
	}
}

// A reset on either side ends the session at once (no idle timeouts are set,
// so only error handling can end it) and closes the other side.
func TestProxyReset(t *testing.T) {
	for _, tt := range []struct {
		name           string
		backendResets  bool
		generic        bool
		trafficFirst   bool
		wantResultFail bool
	}{
		{name: "backend reset", backendResets: true},
		{name: "backend reset after traffic", backendResets: true, trafficFirst: true},
		{name: "client reset", backendResets: false},
		{name: "backend reset generic", backendResets: true, generic: true},
		{name: "client reset generic", backendResets: false, generic: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startRig(t, tcpproxy.Options{}, tt.generic)
			if tt.trafficFirst {
				if _, err := r.client.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(r.backend, make([]byte, 4)); err != nil {
					t.Fatal(err)
				}
			}
			resetter, other := r.backend, r.client
			if !tt.backendResets {
				resetter, other = r.client, r.backend
			}
			resetter.SetLinger(0) // close sends RST
			resetter.Close()
			res, ok := r.wait(2 * time.Second)
			if !ok {
				t.Fatal("Proxy did not return within 2 s of a reset")
			}
			if res.Err == nil {
				t.Errorf("Result = %+v, want the reset as Err", res)
			}
			other.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err := other.Read(make([]byte, 16)); err == nil {
				t.Fatalf("other side read %d bytes, want it closed", n)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("other side was not closed")
			}
		})
	}
}

// net.Pipe conns have no CloseWrite and cannot splice: the generic path
// copies them and closes the destination on EOF.
func TestProxyPipe(t *testing.T) {
	var onTx, onRx atomic.Int64
	c1, b2, out := startPipes(t, tcpproxy.Options{
		ClientIdle: 5 * time.Second,
		OnTx:       func(n int64) { onTx.Add(n) },
		OnRx:       func(n int64) { onRx.Add(n) },
	})
	req := bytes.Repeat([]byte("q"), 1<<20+17)
	reply := bytes.Repeat([]byte("r"), 300<<10+5)
	werr := make(chan error, 1)
	go func() {
		_, err := c1.Write(req)
		werr <- err
	}()
	got := make([]byte, len(req))
	if _, err := io.ReadFull(b2, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, req) {
		t.Fatal("backend got other bytes than the client sent")
	}
	go func() {
		_, err := b2.Write(reply)
		b2.Close()
		werr <- err
	}()
	back, err := io.ReadAll(c1)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, reply) {
		t.Fatalf("client got %d bytes, want the %d-byte reply", len(back), len(reply))
	}
	res, ok := out.wait(3 * time.Second)
	if !ok {
		t.Fatal("Proxy did not return")
	}
	if res.Tx != int64(len(req)) || res.Rx != int64(len(reply)) || res.Err != nil || res.Idle {
		t.Fatalf("Result = %+v, want Tx=%d Rx=%d, no error", res, len(req), len(reply))
	}
	if onTx.Load() != res.Tx || onRx.Load() != res.Rx {
		t.Fatalf("callbacks tx %d rx %d, want %d %d", onTx.Load(), onRx.Load(), res.Tx, res.Rx)
	}
}

func TestProxyPipeIdle(t *testing.T) {
	start := time.Now()
	_, _, out := startPipes(t, tcpproxy.Options{BackendIdle: 200 * time.Millisecond})
	res, ok := out.wait(3 * time.Second)
	if !ok {
		t.Fatal("Proxy did not end an idle pipe session")
	}
	if !res.Idle || res.Err != nil {
		t.Fatalf("Result = %+v, want Idle", res)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > time.Second {
		t.Fatalf("ended after %v, want 200ms..1s", took)
	}
}

// TestProxyModeSwitches: bulk (spliced), then a pause longer than the live
// tick (back to the buffer), then small exchanges, then bulk again: every byte
// arrives in order on both paths.
func TestProxyModeSwitches(t *testing.T) {
	for _, generic := range []bool{false, true} {
		t.Run(fmt.Sprintf("generic=%v", generic), func(t *testing.T) {
			var tx atomic.Int64
			r := startRig(t, tcpproxy.Options{OnTx: func(n int64) { tx.Add(n) }}, generic)
			r.client.SetDeadline(time.Now().Add(20 * time.Second))
			r.backend.SetDeadline(time.Now().Add(20 * time.Second))
			want := int64(0)
			send := func(n int64, seed uint64) {
				var wg sync.WaitGroup
				var got [32]byte
				var gotN int64
				wg.Add(1)
				go func() {
					defer wg.Done()
					h := sha256.New()
					gotN, _ = io.CopyN(h, r.backend, n)
					copy(got[:], h.Sum(nil))
				}()
				sum, err := stream(r.client, seed, n)
				if err != nil {
					t.Fatal(err)
				}
				wg.Wait()
				if gotN != n || got != sum {
					t.Fatalf("phase of %d bytes: backend got %d bytes, hash match %v", n, gotN, got == sum)
				}
				want += n
			}
			send(4<<20, 1) // bulk: past the splice threshold
			time.Sleep(2 * tcpproxy.LiveInterval)
			for i := range 5 {
				send(100, uint64(10+i)) // small exchanges after the pause
			}
			send(4<<20, 2)
			waitFor(t, 2*time.Second, "OnTx to count every byte sent", func() bool { return tx.Load() == want })
		})
	}
}

// A burst that ends exactly on the pooled buffer's size (32 KiB) fills the
// last read completely; its bytes must be counted at once, not when the next
// burst arrives. net.Pipe hands each Write to Read whole, so every read here
// is full and the connection stays open and silent after the burst.
func TestProxyCountsBurstOnBufferBoundary(t *testing.T) {
	const buffer = 32 << 10 // the pooled buffer's size
	for _, size := range []int{100, buffer, 2 * buffer, 5*buffer + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var tx atomic.Int64
			c1, b2, _ := startPipes(t, tcpproxy.Options{OnTx: func(n int64) { tx.Add(n) }})
			werr := make(chan error, 1)
			go func() {
				_, err := c1.Write(bytes.Repeat([]byte("x"), size))
				werr <- err
			}()
			if _, err := io.ReadFull(b2, make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "OnTx to count the burst while the connection is open", func() bool { return tx.Load() == int64(size) })
		})
	}
}

// TestProxyExchangeZeroAlloc: once a session is up, moving a request and its
// reply (read, write, counters, idle deadlines) allocates nothing.
func TestProxyExchangeZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race")
	}
	for _, generic := range []bool{false, true} {
		t.Run(fmt.Sprintf("generic=%v", generic), func(t *testing.T) {
			var tx, rx atomic.Int64
			r := startRig(t, tcpproxy.Options{
				ClientIdle: time.Minute, BackendIdle: time.Minute,
				OnTx: func(n int64) { tx.Add(n) },
				OnRx: func(n int64) { rx.Add(n) },
			}, generic)
			msg, got := make([]byte, 512), make([]byte, 512)
			exchange := func() {
				if _, err := r.client.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(r.backend, got); err != nil {
					t.Fatal(err)
				}
				if _, err := r.backend.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(r.client, got); err != nil {
					t.Fatal(err)
				}
			}
			exchange() // the buffers are taken on first use
			if a := testing.AllocsPerRun(200, exchange); a != 0 {
				t.Errorf("%v allocations per request and reply", a)
			}
		})
	}
}

// TestIdleSessionHoldsNoBuffer: a session whose two directions wait for data
// holds no copy buffer (32 KiB each), also after bytes have moved. Measured
// as the live heap over 100 idle sessions.
func TestIdleSessionHoldsNoBuffer(t *testing.T) {
	const sessions = 100
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // a pooled buffer survives one GC in the pool's victim cache
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	rigs := make([]*rig, 0, sessions)
	msg, got := make([]byte, 512), make([]byte, 512)
	for range sessions {
		r := startRig(t, tcpproxy.Options{}, false)
		for _, p := range [][2]net.Conn{{r.client, r.backend}, {r.backend, r.client}} {
			if _, err := p[0].Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(p[1], got); err != nil {
				t.Fatal(err)
			}
		}
		rigs = append(rigs, r)
	}
	time.Sleep(50 * time.Millisecond) // both directions back in their reads
	per := (int64(heap()) - int64(before)) / sessions
	runtime.KeepAlive(rigs)
	if per > 16<<10 {
		t.Errorf("%d bytes of heap per idle session, want no copy buffer (< 16 KiB)", per)
	}
	t.Logf("%d bytes of heap per idle session (test conns included)", per)
}
