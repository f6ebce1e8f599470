package udpsession

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

func (f *Forwarder) sockets() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.conns)
}

// TestForwarderSend: one socket per backend, shared by every sender;
// replies are drained.
func TestForwarderSend(t *testing.T) {
	base := runtime.NumGoroutine()
	a, b := startEcho(t, 1, true), startEcho(t, 1, true)
	f := NewForwarder()
	const senders, each = 4, 26
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for i := range each {
				e := a
				if i%2 == 1 {
					e = b
				}
				if err := f.Send(e.b, []byte(msg(i))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	want := int64(senders * each / 2)
	waitFor(t, 3*time.Second, "both backends to get every datagram", func() bool {
		return a.got.Load() == want && b.got.Load() == want
	})
	waitFor(t, 3*time.Second, "every reply drained", func() bool { return f.drained.Load() == uint64(2*want) })
	if n := f.sockets(); n != 2 {
		t.Errorf("%d sockets, want 2", n)
	}
	for _, e := range []*echoServer{a, b} {
		if n := len(e.sourceCounts()); n != 1 {
			t.Errorf("backend %s got datagrams from %d sources, want 1 shared socket", e.b.Address(), n)
		}
	}
	f.Close()
	if err := f.Send(a.b, []byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close = %v, want net.ErrClosed", err)
	}
	a.conn.Close()
	b.conn.Close()
	<-a.done
	<-b.done
	waitFor(t, 3*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base })
}

// TestForwarderRefused: an ICMP port unreachable for one datagram is
// returned by the next Send to that backend, once.
func TestForwarderRefused(t *testing.T) {
	down := closedPort(t)
	f := NewForwarder()
	defer f.Close()
	if err := f.Send(down, []byte("one")); err != nil {
		t.Fatalf("first Send: %v", err)
	}
	f.mu.RLock()
	fc := f.conns[down.Address()]
	f.mu.RUnlock()
	waitFor(t, 3*time.Second, "the refusal to be read", func() bool { return fc.err.Load() != nil })
	if err := f.Send(down, []byte("two")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("second Send = %v, want ECONNREFUSED", err)
	}
}

// TestForwarderIdle: a socket that sent nothing for the idle time is closed,
// and the next Send opens a new one.
func TestForwarderIdle(t *testing.T) {
	e := startEcho(t, 1, true)
	f := NewForwarder()
	defer f.Close()
	f.idle = 100 * time.Millisecond
	if err := f.Send(e.b, []byte("one")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the idle socket to close", func() bool { return f.sockets() == 0 })
	if err := f.Send(e.b, []byte("two")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the second datagram", func() bool { return e.got.Load() == 2 })
	if n := len(e.sourceCounts()); n != 2 {
		t.Errorf("%d sources, want 2 (a new socket after the idle close)", n)
	}
}

// TestForwarderSendZeroAlloc: sending on an open socket allocates nothing.
func TestForwarderSendZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race")
	}
	e := startEcho(t, 0, false)
	f := NewForwarder()
	defer f.Close()
	p := []byte("fire and forget")
	if err := f.Send(e.b, p); err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(1000, func() {
		if err := f.Send(e.b, p); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("%v allocations per Send", a)
	}
}
