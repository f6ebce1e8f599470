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

// FuncReader is an optional interface of a Conn whose datagrams can be read
// without a buffer of the reader's: ReadFunc waits like Read (same deadline
// and close errors) and calls fn with the next datagram, valid only until fn
// returns. Serve uses it when the Conn has it, so that a client session
// waiting for its client holds no datagram buffer; with a plain Conn it
// holds a pooled 64 KiB buffer for its whole life. A *listeners.UDPConn
// (between+udp) has it; caddy-l4's own UDP connections do not.
type FuncReader interface {
	ReadFunc(fn func(p []byte)) error
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
	// Linger, when > 0, ends the client session once nothing is in flight
	// (every virtual session completed and parked, or fire-and-forget) and
	// no datagram came from the client for this long, before the idle
	// timeout: like nginx's proxy_responses, a DNS-style client using a new
	// source port per query then holds no session (goroutines, sockets)
	// for the whole idle timeout. Only where closing the client conn loses
	// no datagram that arrives meanwhile (a between+udp listener hands them
	// to a new session); 0 = no early end.
	Linger time.Duration
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
	// datagrams open none; a socket parked for reuse is not one).
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

// maxParked is how many completed virtual sessions' sockets a client
// session keeps for reuse; parking one more closes the oldest.
const maxParked = 4

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
// caller's goroutine plus one per open or parked virtual session (its reply
// reader) and allocates nothing per datagram once a virtual session is open.
// Waiting costs no datagram buffer: a reply reader takes a pooled 64 KiB
// buffer only once a reply is there (on Linux; elsewhere it holds one while
// it waits) and gives it back once the reply is written to the client, and a
// client session reads through FuncReader when c has it; otherwise it holds
// one pooled 64 KiB buffer while it lasts.
//
// A virtual session that completed (max_responses replies for each of its
// requests) does not close its socket: it releases its backend and parks
// the socket and its reader in the client session (at most maxParked, the
// oldest closed first), and the next virtual session to the same backend
// reuses them, so a DNS-style client (max_responses 1) opens no socket and
// starts no goroutine per request. A parked socket relays nothing: a late
// reply (a backend answering more than max_responses times) that arrives
// while it is parked is discarded; one that arrives after the socket was
// reused is taken for a reply to the new request, as it would be on a
// socket that takes several requests. A parked socket closes after the idle
// timeout (30s without one), and when Serve returns.
func Serve(c Conn, client netip.AddrPort, cfg *Config, el Elector, ctr *Counters, total *backend.Stats) error {
	if cfg.MaxRequests == 1 && !cfg.Transparent && cfg.Forwarder == nil {
		return errNoForwarder
	}
	s := &session{c: c, client: client, cfg: cfg, el: el, ctr: ctr, total: total, idle: cfg.idle()}
	now := time.Now()
	s.last.Store(now.UnixNano())
	defer s.closeAll()
	fr, _ := c.(FuncReader)
	var buf []byte
	var relayFn func([]byte)
	if fr != nil {
		relayFn = func(p []byte) {
			s.last.Store(time.Now().UnixNano())
			s.relay(p)
		}
	} else {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf = *bp
	}
	// The deadline is set once and moved only when it fires: activity just
	// records its time, so a busy session makes no deadline calls.
	wait := s.idle
	if l := cfg.Linger; l > 0 && (wait == 0 || l < wait) {
		wait = l
	}
	if wait > 0 {
		c.SetReadDeadline(now.Add(wait))
	}
	for {
		var n int
		var err error
		if fr != nil {
			err = fr.ReadFunc(relayFn)
		} else {
			n, err = c.Read(buf)
		}
		if err != nil {
			if wait > 0 && isTimeout(err) {
				last := time.Unix(0, s.last.Load())
				quiet := time.Since(last)
				if (s.idle > 0 && quiet >= s.idle) || (cfg.Linger > 0 && quiet >= cfg.Linger && s.settled()) {
					return nil
				}
				c.SetReadDeadline(last.Add(wait))
				if !last.Add(wait).After(time.Now()) {
					// lingering with something in flight: look again
					// after another wait, not at once
					c.SetReadDeadline(time.Now().Add(wait))
				}
				continue
			}
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("udp session of %s: read from client: %w", client, err)
		}
		if fr == nil {
			s.last.Store(time.Now().UnixNano())
			s.relay(buf[:n])
		}
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

	// mu guards open, parked, nparked, closing and every vsession's cached.
	// It is taken before a vsession's mu when both are held.
	mu      sync.Mutex
	open    []*vsession          // virtual sessions whose reader runs, parked ones included
	parked  [maxParked]*vsession // completed virtual sessions kept for reuse, oldest first
	nparked int                  // parked[:nparked] are in use
	closing bool                 // closeAll ran: park nothing more
}

// vsession is one virtual session: a backend, a socket connected to it, and
// the goroutine relaying its replies. Once complete it may be parked and
// reused by a later virtual session to the same backend: the socket, the
// reader and this struct carry over, the counts start again.
type vsession struct {
	s      *session
	b      *backend.Backend // fixed for the socket's life: a parked socket is reused only for b
	conn   *net.UDPConn
	rr     *replyReader // reads conn
	idx    int          // position in s.open, guarded by s.mu
	cached bool         // in s.parked, guarded by s.mu
	last   atomic.Int64 // unix nanoseconds of the last datagram through it

	// mu makes "take a request" (send) and "finish" (the reader deciding
	// the session is complete or idle) exclusive, so a datagram is never
	// sent on a session that is finishing: once done is set, nothing is
	// written to the socket until the session is taken out of the parked
	// ones for reuse (which clears done), and never once it is closing.
	mu      sync.Mutex
	sent    int  // requests taken
	replies int  // replies relayed
	done    bool // finished: takes no requests; replies read are discarded
	parked  bool // completed and b released; set by the reader, cleared on reuse
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
		vs := s.reuse(b)
		if vs == nil {
			vs, err = s.dial(b)
			if err != nil {
				s.el.Failed(b, err)
				b.Release()
				tried = append(tried, b)
				continue
			}
		}
		ok, err := s.send(vs, p)
		if ok {
			if s.cfg.MaxRequests == 0 || vs.sent < s.cfg.MaxRequests {
				s.cur = vs
			}
			clear(s.triedBuf[:])
			return
		}
		// A fresh or reused session always takes its first request, so
		// this is a send error; the reader releases b once the socket is
		// closed.
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
	now := time.Now()
	vs.last.Store(now.UnixNano())
	if s.idle == 0 && s.cfg.MaxRequests > 0 && vs.sent >= s.cfg.MaxRequests {
		// Retired: wait for its replies, not forever. Under mu, ordered
		// with the reader's own deadline moves (idledOut).
		vs.conn.SetReadDeadline(now.Add(drainTimeout))
	}
	vs.mu.Unlock()
	s.ctr.PacketsIn.Add(1)
	vs.b.Stats.AddTx(int64(n))
	s.total.AddTx(int64(n))
	return true, nil
}

// dial opens a virtual session to b (acquired by the election) and starts
// its reply reader.
func (s *session) dial(b *backend.Backend) (*vsession, error) {
	conn, err := s.dialBackend(b)
	if err != nil {
		return nil, err
	}
	rr, err := newReplyReader(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	now := time.Now()
	vs := &vsession{s: s, b: b, conn: conn, rr: rr}
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

// reuse takes a parked virtual session to b (acquired by the election), the
// oldest, and starts a new virtual session on it; nil if none is parked.
func (s *session) reuse(b *backend.Backend) *vsession {
	s.mu.Lock()
	if s.nparked == 0 {
		s.mu.Unlock()
		return nil
	}
	var vs *vsession
	for _, p := range s.parked[:s.nparked] {
		if p.b == b {
			vs = p
			break
		}
	}
	if vs == nil {
		s.mu.Unlock()
		return nil
	}
	s.uncache(vs)
	// Under s.mu too: the reader cannot be deciding to close it as idle.
	vs.mu.Lock()
	vs.parked, vs.done = false, false
	vs.sent, vs.replies = 0, 0
	vs.last.Store(time.Now().UnixNano())
	vs.mu.Unlock()
	s.mu.Unlock()
	s.ctr.Sessions.Add(1)
	b.Stats.AddTotal()
	s.total.AddTotal()
	return vs
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
	if ua := b.UDPAddr(); ua != nil {
		// An IP literal, parsed once by Freeze: no parsing, no resolution.
		return net.DialUDP("udp", nil, ua)
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

// settled reports whether nothing is in flight: every open virtual session
// completed and is parked (with fire-and-forget none is ever open).
func (s *session) settled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open) == s.nparked
}

// closeAll closes every virtual session's socket, parked ones included,
// and waits for their readers, which release the backends still held.
func (s *session) closeAll() {
	s.mu.Lock()
	s.closing = true
	for _, vs := range s.parked[:s.nparked] {
		vs.cached = false
	}
	clear(s.parked[:])
	s.nparked = 0
	for _, vs := range s.open {
		vs.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.cur = nil
}

// readReplies relays the backend's replies to the client until the virtual
// session idles out or its socket is closed or fails; then it ends the
// session. A virtual session that completes (max_responses) is parked for
// reuse and the reader goes on, discarding what it reads until the socket
// is reused, closed, or idles out parked.
func (vs *vsession) readReplies() {
	s := vs.s
	var err error
	defer func() { vs.end(err) }()
	maxResponses := s.cfg.MaxResponses
	for {
		var bp *[]byte
		var n int
		bp, n, err = vs.rr.next()
		if err != nil {
			if isTimeout(err) {
				if vs.idledOut() {
					err = nil
					return
				}
				continue
			}
			return
		}
		complete := false
		if maxResponses > 0 {
			vs.mu.Lock()
			if vs.done {
				// Parked (or failed): a late reply to a request whose
				// replies were all relayed. Discarded; it is no activity.
				vs.mu.Unlock()
				bufPool.Put(bp)
				continue
			}
			vs.replies++
			if vs.replies >= maxResponses*vs.sent {
				vs.done = true
				complete = true
			}
			vs.mu.Unlock()
		}
		now := time.Now().UnixNano()
		vs.last.Store(now)
		s.last.Store(now)
		if _, err := s.c.Write((*bp)[:n]); err != nil {
			s.ctr.Dropped[ClientGone].Add(1)
		} else {
			s.ctr.PacketsOut.Add(1)
			vs.b.Stats.AddRx(int64(n))
			s.total.AddRx(int64(n))
		}
		bufPool.Put(bp)
		if complete && !vs.park() {
			return
		}
	}
}

// park keeps a complete virtual session's socket and reader for reuse: it
// releases the backend and puts the session in s.parked, closing the oldest
// parked one if full. It reports false, and parks nothing, once Serve is
// closing; the reader then ends the session.
func (vs *vsession) park() bool {
	s := vs.s
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	var evicted *vsession
	if s.nparked == maxParked {
		evicted = s.parked[0]
		evicted.cached = false
		copy(s.parked[:], s.parked[1:])
		s.nparked--
	}
	vs.mu.Lock()
	vs.parked = true
	vs.mu.Unlock()
	// The deadline closes it if it stays parked; set before it can be
	// reused, so it cannot undo the reused session's own deadline.
	timeout := s.idle
	if timeout == 0 {
		timeout = drainTimeout
	}
	vs.conn.SetReadDeadline(time.Unix(0, vs.last.Load()).Add(timeout))
	// Released before it can be reused: reuse follows an election that
	// acquired b anew.
	vs.b.Release()
	s.ctr.Sessions.Add(-1)
	vs.cached = true
	s.parked[s.nparked] = vs
	s.nparked++
	s.mu.Unlock()
	if evicted != nil {
		evicted.conn.Close() // its reader ends it
	}
	return true
}

// idledOut is called when the reader's deadline fired: it reports whether
// the session is over (marking it done and taking it out of the parked
// ones), else moves the deadline to the idle time after the last datagram
// through it. Without an idle timeout, the drain timeout applies to a
// session that takes no more requests and to a parked one; a session that
// still takes requests (a reused one whose parked deadline fired) has none.
func (vs *vsession) idledOut() bool {
	s := vs.s
	timeout := s.idle
	if timeout == 0 {
		timeout = drainTimeout
	}
	s.mu.Lock() // s.mu before vs.mu: reuse takes both
	vs.mu.Lock()
	last := time.Unix(0, vs.last.Load())
	taking := !vs.parked && !vs.done && (s.cfg.MaxRequests == 0 || vs.sent < s.cfg.MaxRequests)
	// The deadline moves under the locks, so that it is ordered with the
	// one send sets when the session retires.
	switch {
	case vs.parked && !vs.cached:
		// evicted or closing: its socket is closed already
	case s.idle == 0 && taking:
		vs.conn.SetReadDeadline(time.Time{})
		vs.mu.Unlock()
		s.mu.Unlock()
		return false
	case time.Since(last) < timeout:
		vs.conn.SetReadDeadline(last.Add(timeout))
		vs.mu.Unlock()
		s.mu.Unlock()
		return false
	}
	vs.done = true
	vs.mu.Unlock()
	if vs.cached {
		s.uncache(vs) // before s.mu is let go: it must not be reused now
	}
	s.mu.Unlock()
	return true
}

// uncache takes vs out of s.parked. s.mu must be held.
func (s *session) uncache(vs *vsession) {
	vs.cached = false
	for i, p := range s.parked[:s.nparked] {
		if p == vs {
			copy(s.parked[i:], s.parked[i+1:s.nparked])
			s.nparked--
			s.parked[s.nparked] = nil
			return
		}
	}
}

// end closes the virtual session and releases what it holds: the backend
// unless it was parked (released then). err is the read error that ended
// it, if any: an ICMP error (port unreachable: ECONNREFUSED) for what was
// sent is reported as a failure of the backend, unless the session was
// parked (it owes no reply).
func (vs *vsession) end(err error) {
	s := vs.s
	s.mu.Lock()
	if vs.cached {
		s.uncache(vs)
	}
	vs.mu.Lock()
	vs.done = true // no send may start on a socket about to close
	parked := vs.parked
	vs.mu.Unlock()
	last := len(s.open) - 1
	moved := s.open[last]
	s.open[vs.idx] = moved
	moved.idx = vs.idx
	s.open[last] = nil
	s.open = s.open[:last]
	s.mu.Unlock()
	vs.conn.Close()
	if !parked {
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.el.Failed(vs.b, err)
		}
		vs.b.Release()
		s.ctr.Sessions.Add(-1)
	}
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
