package udpsession

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
)

// forwarderIdle is how long a Forwarder keeps a backend's socket that sent
// nothing: backends that left the pool do not keep sockets forever, and a
// backend named by host is looked up again after a quiet spell.
const forwarderIdle = 2 * time.Minute

// errForwarderClosed is Send's answer after Close.
var errForwarderClosed = fmt.Errorf("udp forwarder: %w", net.ErrClosed)

// Forwarder holds one shared UDP socket per backend address for
// fire-and-forget (max_requests 1): every client session of a handler sends
// through it, so a datagram costs no socket of its own. Replies are read and
// dropped. An error the kernel reports on a socket (an ICMP port
// unreachable comes back as ECONNREFUSED) is returned by the next Send to
// that backend, so the election learns of a backend that is down. A socket
// that sent nothing for two minutes is closed. Safe for concurrent use;
// Close closes every socket.
type Forwarder struct {
	mu     sync.RWMutex
	conns  map[string]*fwdConn // by backend address
	closed bool
	wg     sync.WaitGroup // drain goroutines

	idle    time.Duration // forwarderIdle; tests shorten it
	drained atomic.Uint64 // replies read and dropped
}

// fwdConn is one backend's shared socket.
type fwdConn struct {
	conn *net.UDPConn
	last atomic.Int64          // unix nanoseconds of a recent Send, refreshed about once a second
	err  atomic.Pointer[error] // an error the drain goroutine read, for the next Send
}

// NewForwarder returns a Forwarder without sockets; they are opened on first
// use.
func NewForwarder() *Forwarder {
	return &Forwarder{conns: make(map[string]*fwdConn), idle: forwarderIdle}
}

// Send sends p to b as one datagram on b's shared socket, opening it on
// first use. It returns the error of the send, or one the socket reported
// since the last Send (the backend refused an earlier datagram).
func (f *Forwarder) Send(b *backend.Backend, p []byte) error {
	addr := b.Address()
	for range 2 {
		fc, err := f.conn(addr)
		if err != nil {
			return err
		}
		if e := fc.err.Load(); e != nil && fc.err.CompareAndSwap(e, nil) {
			return *e
		}
		// Refreshing the time only when it is a second old keeps the
		// shared cache line read-mostly under concurrent sends.
		now := time.Now().UnixNano()
		if now-fc.last.Load() > int64(time.Second) {
			fc.last.Store(now)
		}
		_, err = fc.conn.Write(p)
		if errors.Is(err, net.ErrClosed) {
			continue // closed as idle just now: open a new one
		}
		return err
	}
	return errForwarderClosed
}

// conn returns the socket for addr, opening it if needed.
func (f *Forwarder) conn(addr string) (*fwdConn, error) {
	f.mu.RLock()
	fc, closed := f.conns[addr], f.closed
	f.mu.RUnlock()
	if fc != nil {
		return fc, nil
	}
	if closed {
		return nil, errForwarderClosed
	}
	// Dial outside the lock: a name lookup must not stall other backends.
	c, err := dialUDP(addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		c.Close()
		return nil, errForwarderClosed
	}
	if fc = f.conns[addr]; fc != nil { // another Send was first
		f.mu.Unlock()
		c.Close()
		return fc, nil
	}
	fc = &fwdConn{conn: c}
	fc.last.Store(time.Now().UnixNano())
	f.conns[addr] = fc
	f.wg.Add(1)
	f.mu.Unlock()
	go f.drain(addr, fc)
	return fc, nil
}

// drain reads and drops fc's replies, keeps the errors the socket reports
// for the next Send, and closes the socket once it has been idle.
func (f *Forwarder) drain(addr string, fc *fwdConn) {
	defer f.wg.Done()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	fc.conn.SetReadDeadline(time.Now().Add(f.idle))
	for {
		_, err := fc.conn.Read(buf)
		switch {
		case err == nil:
			f.drained.Add(1)
		case errors.Is(err, net.ErrClosed):
			return
		case isTimeout(err):
			last := time.Unix(0, fc.last.Load())
			if time.Since(last) < f.idle {
				fc.conn.SetReadDeadline(last.Add(f.idle))
				continue
			}
			f.mu.Lock()
			if f.conns[addr] == fc {
				delete(f.conns, addr)
			}
			f.mu.Unlock()
			fc.conn.Close()
			return
		default:
			e := err // only this branch moves an error to the heap
			fc.err.Store(&e)
		}
	}
}

// Close closes every socket and waits for their drain goroutines. Send
// fails after Close.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for addr, fc := range f.conns {
		fc.conn.Close()
		delete(f.conns, addr)
	}
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}
