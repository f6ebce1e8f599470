package udpsession

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
)

// Conn is the client side of one client session: a *listeners.UDPConn on
// between+udp, caddy-l4's *layer4.Connection on a stock udp listener (one
// datagram per Read given a 64 KiB buffer). Serve calls Read and
// SetReadDeadline from one goroutine, and Write from the reply readers of
// its virtual sessions, possibly several at once: Write must be safe for
// concurrent use and with Read.
type Conn interface {
	// Read returns one datagram from the client.
	Read(p []byte) (int, error)
	// Write sends p to the client as one datagram.
	Write(p []byte) (int, error)
	// SetReadDeadline bounds Read; a Read past it fails with an error whose
	// Timeout() is true (os.ErrDeadlineExceeded).
	SetReadDeadline(t time.Time) error
}

// Config are the limits of the virtual sessions of a handler. Serve only
// reads it; one Config serves every client session of a handler.
type Config struct {
	// MaxRequests is how many client datagrams a virtual session takes
	// (0 = no limit). 1 is fire-and-forget: each datagram is elected and sent
	// on its own, and replies are dropped.
	MaxRequests int
	// MaxResponses ends a virtual session once it has relayed this many
	// replies for each datagram it sent (0 = no limit).
	MaxResponses int
	// ClientIdle and BackendIdle end a session when nothing moved through
	// it, either way, for the smaller non-zero of them; both 0 = no idle end
	// (the handler's validation requires some limit).
	ClientIdle, BackendIdle time.Duration
	// DialTimeout bounds opening a backend socket: the name lookup of a
	// backend host, the bind and connect of a transparent socket (connecting
	// a plain UDP socket never blocks). 0 = no limit.
	DialTimeout time.Duration
	// Transparent dials backends from the client's address (DialTransparent).
	Transparent bool
	// Forwarder sends fire-and-forget datagrams. Required when MaxRequests
	// is 1 and Transparent is false.
	Forwarder *Forwarder
}

// idle is the smaller non-zero of the two idle timeouts, 0 if neither is set.
func (cfg *Config) idle() time.Duration {
	c, b := cfg.ClientIdle, cfg.BackendIdle
	if c == 0 || (b > 0 && b < c) {
		return b
	}
	return c
}

// Elector is what Serve needs from the handler: election and passive health.
type Elector interface {
	// Elect picks a backend for a new virtual session of client and returns
	// it acquired (b.Acquire() already returned true; Serve calls Release).
	// tried lists the backends whose dial or send failed for this datagram;
	// Elect should not return them again, and returns an error once no
	// backend is left.
	Elect(client netip.AddrPort, tried []*backend.Backend) (*backend.Backend, error)
	// Failed reports a backend socket that could not be opened, written to,
	// or that reported an error (an ICMP port unreachable comes back as
	// ECONNREFUSED): for counters, passive health and a rate-limited log.
	Failed(b *backend.Backend, err error)
}

// Reason is why a datagram was dropped; String is its metric label.
type Reason uint8

// Reasons for dropping a datagram.
const (
	// NoBackend: the election found no backend ("no_backend").
	NoBackend Reason = iota
	// SendError: every backend tried for the datagram failed ("send_error").
	SendError
	// MaxSessions: the handler's max_sessions was reached ("max_sessions");
	// counted by the handler.
	MaxSessions
	// Refused: an access rule refused the client ("refused"); counted by
	// the handler.
	Refused
	// ClientGone: a reply could not be written to the client
	// ("client_write_error").
	ClientGone
	// NumReasons is the number of reasons, the length of Counters.Dropped.
	NumReasons
)

var reasonNames = [NumReasons]string{"no_backend", "send_error", "max_sessions", "refused", "client_write_error"}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Counters are a handler's UDP totals. They live in the handler's state and
// survive config reloads; every field is an atomic.
type Counters struct {
	// Sessions is the number of virtual sessions open now (fire-and-forget
	// datagrams open none).
	Sessions atomic.Int64
	// PacketsIn counts datagrams relayed client -> backend.
	PacketsIn atomic.Uint64
	// PacketsOut counts datagrams relayed backend -> client.
	PacketsOut atomic.Uint64
	// Dropped counts the datagrams dropped, by Reason.
	Dropped [NumReasons]atomic.Uint64
}

// bufSize holds any UDP datagram.
const bufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// maxAttempts bounds the elections for one datagram, in case an Elector
// returns a backend that is in tried again.
const maxAttempts = 32

// drainTimeout is how long a virtual session that takes no more requests
// waits for replies when no idle timeout is set: without it, max_requests
// alone would leave one socket and goroutine per N datagrams open for as
// long as the client session lasts.
const drainTimeout = 30 * time.Second

// errNoForwarder is Serve's answer to a fire-and-forget Config without one.
var errNoForwarder = errors.New("udpsession: max_requests 1 without transparent needs Config.Forwarder")

// Serve runs one client session until c.Read fails (the conn was closed) or
// nothing moved either way for the idle timeout; then it returns nil (an
// error only for a Config without a needed Forwarder or an unexpected read
// error), having closed every backend socket it opened, waited for every
// reply reader and released every backend.
//
// Each virtual session counts once in b.Stats and total (AddTotal); bytes
// client -> backend are Tx, backend -> client Rx, on both. Serve runs in the
// caller's goroutine plus one per open virtual session (its reply reader)
// and allocates nothing per datagram once a virtual session is open: the
// client session and each virtual session hold one pooled 64 KiB buffer.
func Serve(c Conn, client netip.AddrPort, cfg *Config, el Elector, ctr *Counters, total *backend.Stats) error {
	if cfg.MaxRequests == 1 && !cfg.Transparent && cfg.Forwarder == nil {
		return errNoForwarder
	}
	s := &session{c: c, client: client, cfg: cfg, el: el, ctr: ctr, total: total, idle: cfg.idle()}
	now := time.Now()
	s.last.Store(now.UnixNano())
	bp := bufPool.Get().(*[]byte)
	defer func() {
		s.closeAll()
		bufPool.Put(bp)
	}()
	buf := *bp
	// The deadline is set once and moved only when it fires: activity just
	// records its time, so a busy session makes no deadline calls.
	if s.idle > 0 {
		c.SetReadDeadline(now.Add(s.idle))
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			if s.idle > 0 && isTimeout(err) {
				last := time.Unix(0, s.last.Load())
				if time.Since(last) < s.idle {
					c.SetReadDeadline(last.Add(s.idle))
					continue
				}
				return nil
			}
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("udp session of %s: read from client: %w", client, err)
		}
		s.last.Store(time.Now().UnixNano())
		s.relay(buf[:n])
	}
}

// session is one client session.
type session struct {
	c      Conn
	client netip.AddrPort
	cfg    *Config
	el     Elector
	ctr    *Counters
	total  *backend.Stats
	idle   time.Duration
	last   atomic.Int64 // unix nanoseconds of the last datagram either way

	// owned by Serve's goroutine
	cur      *vsession           // the virtual session taking requests, if any
	triedBuf [4]*backend.Backend // backing store of tried, so a failure or two allocate nothing
	wg       sync.WaitGroup      // reply readers
	mu       sync.Mutex          // guards open
	open     []*vsession         // virtual sessions whose reader runs
}

// vsession is one virtual session: a backend, a socket connected to it, and
// the goroutine relaying its replies.
type vsession struct {
	s    *session
	b    *backend.Backend
	conn *net.UDPConn
	idx  int          // position in s.open, guarded by s.mu
	last atomic.Int64 // unix nanoseconds of the last datagram through it

	// mu makes "take a request" (send) and "finish" (the reader deciding
	// the session is complete or idle) exclusive, so a datagram is never
	// sent on a session that is finishing: once done is set, the socket is
	// closed and nothing is written to it again.
	mu      sync.Mutex
	sent    int  // requests taken
	replies int  // replies relayed
	done    bool // finished: takes no requests
}

// relay sends one client datagram: on the current virtual session if it
// still takes requests, else on a new one.
func (s *session) relay(p []byte) {
	if s.cfg.MaxRequests == 1 {
		s.fireAndForget(p)
		return
	}
	tried := s.triedBuf[:0]
	if vs := s.cur; vs != nil {
		ok, err := s.send(vs, p)
		if ok {
			return
		}
		s.cur = nil
		if err != nil {
			s.el.Failed(vs.b, err)
			tried = append(tried, vs.b)
		}
	}
	for range maxAttempts {
		b, err := s.el.Elect(s.client, tried)
		if err != nil {
			s.drop(tried)
			return
		}
		vs, err := s.dial(b)
		if err != nil {
			s.el.Failed(b, err)
			b.Release()
			tried = append(tried, b)
			continue
		}
		ok, err := s.send(vs, p)
		if ok {
			if s.cfg.MaxRequests == 0 || vs.sent < s.cfg.MaxRequests {
				s.cur = vs
			}
			clear(s.triedBuf[:])
			return
		}
		// A fresh session always takes its first request, so this is a
		// send error; the reader releases b once the socket is closed.
		s.el.Failed(b, err)
		tried = append(tried, b)
	}
	s.ctr.Dropped[SendError].Add(1)
	clear(s.triedBuf[:])
}

// drop counts a datagram that found no backend: NoBackend if none was
// elected at all, SendError if every elected one failed.
func (s *session) drop(tried []*backend.Backend) {
	if len(tried) == 0 {
		s.ctr.Dropped[NoBackend].Add(1)
	} else {
		s.ctr.Dropped[SendError].Add(1)
	}
	clear(s.triedBuf[:])
}

// send writes p on vs if vs still takes requests. It reports whether p was
// taken; err is the write's error, after which vs is finished.
func (s *session) send(vs *vsession, p []byte) (bool, error) {
	vs.mu.Lock()
	if vs.done || (s.cfg.MaxRequests > 0 && vs.sent >= s.cfg.MaxRequests) {
		vs.mu.Unlock()
		return false, nil
	}
	// The write happens under mu: the reader cannot finish (and close the
	// socket) in the middle of it.
	n, err := vs.conn.Write(p)
	if err != nil {
		vs.done = true
		vs.mu.Unlock()
		vs.conn.Close() // the reader ends and releases the backend
		return false, err
	}
	vs.sent++
	vs.last.Store(time.Now().UnixNano())
	retired := s.cfg.MaxRequests > 0 && vs.sent >= s.cfg.MaxRequests
	vs.mu.Unlock()
	s.ctr.PacketsIn.Add(1)
	vs.b.Stats.AddTx(int64(n))
	s.total.AddTx(int64(n))
	if retired && s.idle == 0 {
		vs.conn.SetReadDeadline(time.Now().Add(drainTimeout))
	}
	return true, nil
}

// dial opens a virtual session to b (acquired by the election) and starts
// its reply reader.
func (s *session) dial(b *backend.Backend) (*vsession, error) {
	conn, err := s.dialBackend(b)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	vs := &vsession{s: s, b: b, conn: conn}
	vs.last.Store(now.UnixNano())
	if s.idle > 0 {
		conn.SetReadDeadline(now.Add(s.idle))
	}
	s.mu.Lock()
	vs.idx = len(s.open)
	s.open = append(s.open, vs)
	s.mu.Unlock()
	s.ctr.Sessions.Add(1)
	b.Stats.AddTotal()
	s.total.AddTotal()
	s.wg.Add(1)
	go vs.readReplies()
	return vs, nil
}

// dialBackend opens a UDP socket connected to b: from the client's address
// in transparent mode, else from an ephemeral port of this host.
func (s *session) dialBackend(b *backend.Backend) (*net.UDPConn, error) {
	if s.cfg.Transparent {
		ctx := context.Background()
		if s.cfg.DialTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.cfg.DialTimeout)
			defer cancel()
		}
		return DialTransparent(ctx, s.client, b.Address())
	}
	return dialUDP(b.Address(), s.cfg.DialTimeout)
}

// dialUDP opens a UDP socket connected to addr ("host:port").
func dialUDP(addr string, timeout time.Duration) (*net.UDPConn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("udp", addr)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dial udp %s: unexpected %T", addr, c)
	}
	return uc, nil
}

// fireAndForget sends p on its own (max_requests 1): elect, send, release.
// Replies are dropped. In transparent mode each datagram opens and closes a
// socket bound to the client's address (a socket, bind and connect per
// datagram, and a few allocations), since the shared sockets of a
// Forwarder cannot carry the client's address.
func (s *session) fireAndForget(p []byte) {
	tried := s.triedBuf[:0]
	for range maxAttempts {
		b, err := s.el.Elect(s.client, tried)
		if err != nil {
			s.drop(tried)
			return
		}
		if s.cfg.Transparent {
			err = s.sendTransparent(b, p)
		} else {
			err = s.cfg.Forwarder.Send(b, p)
		}
		if err != nil {
			s.el.Failed(b, err)
			b.Release()
			tried = append(tried, b)
			continue
		}
		b.Stats.AddTotal()
		s.total.AddTotal()
		b.Stats.AddTx(int64(len(p)))
		s.total.AddTx(int64(len(p)))
		b.Release()
		s.ctr.PacketsIn.Add(1)
		clear(s.triedBuf[:])
		return
	}
	s.ctr.Dropped[SendError].Add(1)
	clear(s.triedBuf[:])
}

// sendTransparent sends p to b from the client's address on a socket of
// its own, closed at once.
func (s *session) sendTransparent(b *backend.Backend, p []byte) error {
	conn, err := s.dialBackend(b)
	if err != nil {
		return err
	}
	_, err = conn.Write(p)
	conn.Close()
	return err
}

// closeAll closes every virtual session's socket and waits for their
// readers, which release the backends.
func (s *session) closeAll() {
	s.mu.Lock()
	for _, vs := range s.open {
		vs.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.cur = nil
}

// readReplies relays the backend's replies to the client until the virtual
// session completes (max_responses), idles out, or its socket is closed or
// fails; then it ends the session.
func (vs *vsession) readReplies() {
	s := vs.s
	bp := bufPool.Get().(*[]byte)
	defer vs.end(bp)
	buf := *bp
	maxResponses := s.cfg.MaxResponses
	for {
		n, err := vs.conn.Read(buf)
		if err != nil {
			if isTimeout(err) {
				if vs.idledOut() {
					return
				}
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				// An ICMP error (port unreachable: ECONNREFUSED) for what
				// was sent: the backend is not there.
				s.el.Failed(vs.b, err)
			}
			return
		}
		now := time.Now().UnixNano()
		vs.last.Store(now)
		s.last.Store(now)
		complete := false
		if maxResponses > 0 {
			vs.mu.Lock()
			vs.replies++
			if vs.replies >= maxResponses*vs.sent {
				vs.done = true
				complete = true
			}
			vs.mu.Unlock()
		}
		if _, err := s.c.Write(buf[:n]); err != nil {
			s.ctr.Dropped[ClientGone].Add(1)
		} else {
			s.ctr.PacketsOut.Add(1)
			vs.b.Stats.AddRx(int64(n))
			s.total.AddRx(int64(n))
		}
		if complete {
			return
		}
	}
}

// idledOut is called when the reader's deadline fired: it reports whether
// the session is over (marking it done), else moves the deadline to the
// idle time after the last datagram through it.
func (vs *vsession) idledOut() bool {
	idle := vs.s.idle
	vs.mu.Lock()
	if idle == 0 {
		// The only deadline without an idle timeout is the drain one.
		vs.done = true
		vs.mu.Unlock()
		return true
	}
	last := time.Unix(0, vs.last.Load())
	if time.Since(last) >= idle {
		vs.done = true
		vs.mu.Unlock()
		return true
	}
	vs.mu.Unlock()
	vs.conn.SetReadDeadline(last.Add(idle))
	return false
}

// end closes the virtual session and releases what it holds.
func (vs *vsession) end(bp *[]byte) {
	s := vs.s
	vs.mu.Lock()
	vs.done = true // no send may start on a socket about to close
	vs.mu.Unlock()
	vs.conn.Close()
	s.mu.Lock()
	last := len(s.open) - 1
	moved := s.open[last]
	s.open[vs.idx] = moved
	moved.idx = vs.idx
	s.open[last] = nil
	s.open = s.open[:last]
	s.mu.Unlock()
	vs.b.Release()
	s.ctr.Sessions.Add(-1)
	bufPool.Put(bp)
	s.wg.Done()
}

// isTimeout reports a deadline error.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isClosed reports errors that mean the client conn is gone rather than a
// failure.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}
