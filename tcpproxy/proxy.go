// Package tcpproxy moves the bytes of one proxied TCP session between a client
// and a backend connection: zero-copy (kernel splice) for bulk transfers
// between two *net.TCPConn, a pooled buffer for short exchanges, live byte
// counters, half-close, and idle timeouts that count traffic in both
// directions. It has no Caddy dependency.
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure one Proxy call. The zero value proxies without timeouts.
type Options struct {
	// ClientIdle and BackendIdle end the session when no byte moved in EITHER
	// direction for that long: the client->backend direction uses ClientIdle,
	// the backend->client direction BackendIdle (0 = no limit for it). A
	// one-way stream therefore never idles out.
	ClientIdle, BackendIdle time.Duration
	// OnTx is called with the number of bytes copied client->backend, at least
	// every LiveInterval while data flows. May be nil.
	OnTx func(n int64)
	// OnRx is called likewise for backend->client bytes. May be nil.
	OnRx func(n int64)
}

// LiveInterval bounds how stale the byte counters may be while data flows.
const LiveInterval = 250 * time.Millisecond

// chunk is the largest amount one splice call moves between two counter
// updates; the buffered path counts after every write.
const chunk = 1 << 20

// bulkThreshold is how much a TCP-to-TCP direction moves through the pooled
// buffer before it switches to splice.
const bulkThreshold = 256 << 10

// Result tells how a session ended.
type Result struct {
	// Tx and Rx are the bytes copied client->backend and backend->client.
	Tx, Rx int64
	// Idle is true when an idle timeout ended the session.
	Idle bool
	// Err is the first error other than a normal close, if any.
	Err error
	// ClosedBy is the side whose end of stream (FIN) came first: "client" or
	// "backend"; "" when neither direction ended normally (idle, error).
	ClosedBy string
}

// Sides of a session, for Result.ClosedBy.
const (
	sideClient  = 1 // the client->backend direction reached EOF
	sideBackend = 2 // the backend->client direction reached EOF
)

// Proxy copies client->backend and backend->client until both directions have
// ended, an error occurs or the session idles out; then it closes both
// connections. When one side half-closes (FIN), the other side's write half
// is closed and the reverse direction keeps flowing.
func Proxy(client, backend net.Conn, o Options) Result {
	s := &session{}
	s.touch()
	type done struct {
		n    int64
		idle bool
		err  error
	}
	ch := make(chan done, 1)
	go func() {
		n, idle, err := s.copy(backend, client, o.ClientIdle, o.BackendIdle, o.OnTx, sideClient)
		if idle || err != nil {
			// Unblock the other direction: without this a client that
			// resets while the backend is silent would leave the session
			// (and the backend connection) open until the backend speaks.
			client.Close()
			backend.Close()
		}
		ch <- done{n, idle, err}
	}()
	rx, idle, err := s.copy(client, backend, o.BackendIdle, o.ClientIdle, o.OnRx, sideBackend)
	if idle || err != nil {
		// unblock the other direction
		client.Close()
		backend.Close()
	}
	d := <-ch
	client.Close()
	backend.Close()
	res := Result{Tx: d.n, Rx: rx, Idle: idle || d.idle}
	switch s.firstEOF.Load() {
	case sideClient:
		res.ClosedBy = "client"
	case sideBackend:
		res.ClosedBy = "backend"
	}
	switch {
	case err != nil && !isClosed(err):
		res.Err = err
	case d.err != nil && !isClosed(d.err):
		res.Err = d.err
	}
	return res
}

// session is the state both directions share: the time of the last byte.
type session struct {
	last     atomic.Int64 // unix nanoseconds
	firstEOF atomic.Int32 // the side whose EOF came first (sideClient, sideBackend)
}

func (s *session) touch() { s.last.Store(time.Now().UnixNano()) }

// idleFor reports how long no byte moved in either direction.
func (s *session) idleFor(now time.Time) time.Duration {
	return now.Sub(time.Unix(0, s.last.Load()))
}

// copy moves src->dst until EOF (then half-closes dst), an error, or idleness
// (idle is this direction's limit, other the reverse direction's: the session
// idles out when the smaller non-zero one passes with no byte either way).
func (s *session) copy(dst, src net.Conn, idle, other time.Duration, count func(int64), side int32) (total int64, idled bool, err error) {
	limit := idle
	if limit == 0 || (other > 0 && other < limit) {
		limit = other
	}
	tick := LiveInterval
	if limit > 0 && limit/4 < tick {
		tick = max(limit/4, time.Millisecond)
	}
	// A direction starts with the pooled-buffer copy: for the short exchanges
	// of request/response traffic one read and one write are the cheapest,
	// splice would cost a pipe per session, and a blocked read needs no
	// wake-ups, so an idle connection costs nothing. Once a TCP-to-TCP
	// direction has moved bulkThreshold bytes it switches to splice, and bulk
	// data never enters user space (HAProxy's "splice-auto" makes a similar
	// choice). Splice reports its progress only at a deadline, so it runs
	// with one every tick; a tick with no byte at all means the bulk is over,
	// and the direction goes back to the buffer.
	dTCP, _ := dst.(*net.TCPConn)
	sTCP, _ := src.(*net.TCPConn)
	canSplice := dTCP != nil && sTCP != nil
	var lr *io.LimitedReader // made when the direction first splices: short sessions never need it
	splicing := false
	var buffered int64 // bytes moved through the buffer since the last splice phase
	var armed bool     // a read deadline is set
	// The buffer belongs to the direction while it copies through user space
	// (a blocked read holds it anyway) and goes back to the pool while it
	// splices: one pool round trip per phase, none per read.
	var buf *[]byte
	defer func() {
		if buf != nil {
			bufPool.Put(buf)
		}
	}()
	for {
		now := time.Now()
		switch {
		case splicing:
			src.SetReadDeadline(now.Add(tick))
			armed = true
		case limit > 0:
			// wake up when the session would idle out, counting both directions
			src.SetReadDeadline(time.Unix(0, s.last.Load()).Add(limit))
			armed = true
		case armed:
			src.SetReadDeadline(time.Time{})
			armed = false
		}
		var n int64
		var eof bool
		if splicing {
			lr.N = chunk
			n, err = dTCP.ReadFrom(lr)
			// splice returns early without error only at EOF
			eof = err == nil && n < chunk
		} else {
			if buf == nil {
				buf = bufPool.Get().(*[]byte)
			}
			n, eof, err = generic(dst, src, *buf)
			buffered += n
		}
		// Every write is counted before the next read: a read may block for
		// as long as the peer stays silent.
		if n > 0 {
			total += n
			s.touch()
			if count != nil {
				count(n)
			}
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return total, false, err
			}
			if limit > 0 && s.idleFor(time.Now()) >= limit {
				return total, true, nil
			}
			if splicing && n == 0 {
				splicing, buffered = false, 0
			}
			continue
		}
		if eof {
			s.firstEOF.CompareAndSwap(0, side)
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			} else {
				dst.Close()
			}
			return total, false, nil
		}
		if !splicing && canSplice && buffered >= bulkThreshold {
			splicing = true
			if lr == nil {
				lr = &io.LimitedReader{R: sTCP}
			}
			bufPool.Put(buf)
			buf = nil
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// generic is the user-space copy for connections the kernel cannot splice
// (TLS, unix sockets) and for short exchanges: one read into buf and the
// write of what it returned. It returns the bytes written and whether src
// reached EOF.
func generic(dst, src net.Conn, buf []byte) (int64, bool, error) {
	r, rerr := src.Read(buf)
	if r > 0 {
		w, werr := dst.Write(buf[:r])
		if werr != nil {
			return int64(w), false, werr
		}
	}
	if rerr == io.EOF {
		return int64(r), true, nil
	}
	return int64(r), false, rerr
}

// isClosed reports errors that mean "this side was closed" rather than a
// failure. io.ErrClosedPipe is what a net.Pipe (and other in-memory conns)
// report after the generic path closed them on the other direction's EOF.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, os.ErrDeadlineExceeded)
}
