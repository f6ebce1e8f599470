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
	"syscall"
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
	// One pooled session per call and one goroutine for the second
	// direction: no channel, no closure beyond the go statement's.
	s := sessionPool.Get().(*session)
	s.client, s.backend, s.o = client, backend, o
	s.touch()
	go s.forward()
	rx, idle, err := s.copy(client, backend, o.BackendIdle, o.ClientIdle, o.OnRx, sideBackend)
	if idle || err != nil {
		// unblock the other direction
		client.Close()
		backend.Close()
	}
	<-s.done
	client.Close()
	backend.Close()
	res := Result{Tx: s.tx, Rx: rx, Idle: idle || s.txIdle}
	switch s.firstEOF.Load() {
	case sideClient:
		res.ClosedBy = "client"
	case sideBackend:
		res.ClosedBy = "backend"
	}
	switch {
	case err != nil && !isClosed(err):
		res.Err = err
	case s.txErr != nil && !isClosed(s.txErr):
		res.Err = s.txErr
	}
	s.reset()
	sessionPool.Put(s)
	return res
}

// forward is the client->backend direction, run on its own goroutine; its
// result waits in s until Proxy has received from s.done.
func (s *session) forward() {
	n, idle, err := s.copy(s.backend, s.client, s.o.ClientIdle, s.o.BackendIdle, s.o.OnTx, sideClient)
	if idle || err != nil {
		// Unblock the other direction: without this a client that
		// resets while the backend is silent would leave the session
		// (and the backend connection) open until the backend speaks.
		s.client.Close()
		s.backend.Close()
	}
	s.tx, s.txIdle, s.txErr = n, idle, err
	s.done <- struct{}{} // the last touch of s: Proxy may reuse it from here
}

// session is the state of one Proxy call, pooled: the time of the last byte
// in either direction, the connections, and the client->backend result.
type session struct {
	last     atomic.Int64 // unix nanoseconds
	firstEOF atomic.Int32 // the side whose EOF came first (sideClient, sideBackend)

	client, backend net.Conn
	o               Options
	done            chan struct{} // forward has finished; buffered, reused

	tx     int64 // forward's result
	txIdle bool
	txErr  error

	dirs [2]reader // by side-1: client->backend, backend->client
}

var sessionPool = sync.Pool{New: func() any {
	s := &session{done: make(chan struct{}, 1)}
	for i := range s.dirs {
		s.dirs[i].fn = s.dirs[i].read
	}
	return s
}}

// reset drops every reference s holds, keeping its channel.
func (s *session) reset() {
	s.firstEOF.Store(0)
	s.client, s.backend, s.o = nil, nil, Options{}
	s.tx, s.txIdle, s.txErr = 0, false, nil
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
	// From a *net.TCPConn the direction reads through its raw socket (see
	// reader): the buffer goes back to the pool whenever the socket has no
	// data, so an idle connection holds none. Other sources (TLS, unix
	// sockets) read through Go's Read, which holds the buffer while it
	// blocks; it returns to the pool while the direction splices.
	var rd *reader
	if sTCP != nil && rawReads {
		if rc, err := sTCP.SyscallConn(); err == nil {
			rd = &s.dirs[side-1]
			rd.rc = rc
			defer rd.done()
		}
	}
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
			if rd != nil {
				n, eof, err = rd.copy(dst)
			} else {
				if buf == nil {
					buf = bufPool.Get().(*[]byte)
				}
				n, eof, err = generic(dst, src, *buf)
			}
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
			if !s.firstEOF.CompareAndSwap(0, side) {
				// The other direction ended first and has read dst to
				// its EOF: Proxy closes both sockets now, and the close
				// sends dst its FIN without a shutdown call of its own.
				return total, false, nil
			}
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
			if rd != nil {
				rd.release()
			} else {
				bufPool.Put(buf)
				buf = nil
			}
		}
	}
}

// reader reads one direction's source socket through its syscall.RawConn:
// each read takes the buffer from the pool if it has none, and a read that
// finds no data (EAGAIN) puts it back before the goroutine waits. A blocked
// direction thus holds no buffer, where Go's Read would hold its 32 KiB
// (counted by the heap, paged in as data arrives) for as long as the peer
// stays silent; the reads and syscalls are the same. It lives in the pooled
// session with its read function made once.
type reader struct {
	rc  syscall.RawConn
	buf *[]byte
	n   int   // the last read's result
	err error // the last read's error, other than EAGAIN and EINTR
	fn  func(fd uintptr) bool
}

func (r *reader) read(fd uintptr) bool {
	if r.buf == nil {
		r.buf = bufPool.Get().(*[]byte)
	}
	n, again, err := sysRead(fd, *r.buf)
	if again {
		r.release()
		return false // wait for data (or a deadline, or Close)
	}
	r.n, r.err = n, err
	return true
}

// copy is generic for a raw socket: one read, and the write of what it
// returned; it reports the bytes written and whether the source reached EOF.
func (r *reader) copy(dst net.Conn) (int64, bool, error) {
	if err := r.rc.Read(r.fn); err != nil {
		return 0, false, err
	}
	if r.err != nil {
		return 0, false, r.err
	}
	if r.n == 0 {
		return 0, true, nil
	}
	w, err := dst.Write((*r.buf)[:r.n])
	return int64(w), false, err
}

// release returns the buffer to the pool.
func (r *reader) release() {
	if r.buf != nil {
		bufPool.Put(r.buf)
		r.buf = nil
	}
}

// done ends the direction's use of r.
func (r *reader) done() {
	r.release()
	r.rc, r.n, r.err = nil, 0, nil
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
