package listeners

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// NetworkUDP is the Caddy network type for UDP listen addresses that survive
// config reloads: "between+udp/:5353", "between+udp/[::1]:53".
//
// A between+udp address opens one real UDP socket per host and port, shared
// by every config that listens there, and gives each config a virtual
// [net.Listener] on it. The socket demultiplexes datagrams by client address
// into sessions; each new session is one [*UDPConn], accepted by the newest
// config's listener. Because the listener is a net.Listener, caddy-l4 serves
// it with its stream path: one goroutine and one route match per session.
// A session belongs to the conn that accepted it, so it keeps working across
// reloads until its handler closes it.
const NetworkUDP = "between+udp"

// IsNetworkUDP reports whether the Caddy network address addr (such as
// "between+udp/127.0.0.1:5353") uses the [NetworkUDP] network type. The
// network part is compared the way Caddy parses it: trimmed, case-insensitive.
func IsNetworkUDP(addr string) bool {
	return isNetwork(addr, NetworkUDP)
}

func init() {
	caddy.RegisterNetwork(NetworkUDP, listenUDP)
}

const (
	// defaultUDPMaxSessions caps a socket's session table unless
	// SetUDPMaxSessions says otherwise.
	defaultUDPMaxSessions = 100000

	// udpQueueLen is how many datagrams a session holds for its reader;
	// more are dropped (reason queue_full).
	udpQueueLen = 128

	// udpShardCount is the number of session table shards (a power of two:
	// udpShardBits bits of the address hash pick one).
	udpShardBits  = 5
	udpShardCount = 1 << udpShardBits

	// udpMaxRecorded bounds what TakeFrames records: caddy-l4's matching
	// buffer holds at most 16 KiB (layer4.MaxMatchingBytes), so datagrams
	// that start after that many bytes were never prefetched. The bound
	// keeps the record small for handlers that never call TakeFrames.
	udpMaxRecorded = 16 * 1024

	// udpReadBuffer is the receive buffer a socket asks for (SO_RCVBUF;
	// Linux caps it at net.core.rmem_max, raise that sysctl for more):
	// 4 MiB holds about 2 s of 10 000 small datagrams/s and absorbs the
	// burst of many clients starting at once.
	udpReadBuffer = 4 << 20
)

// Package variables rather than constants so that tests can shorten them;
// a socket reads them once, when it opens.
var (
	// udpBacklog is how many new sessions a virtual listener holds before
	// it is accepted; when full, the datagram that would start one more is
	// dropped (reason backlog).
	udpBacklog = 1024

	// udpIdleTimeout: a session is closed (its Read returns io.EOF) when
	// for this long no datagram arrived, none was written, no Read returned
	// data and no Read waited with a deadline set. A safety net for
	// sessions nobody reads or whose reader waits without a deadline: a
	// handler that reads with a deadline ends idle sessions on its own
	// timer, however long.
	udpIdleTimeout = 2 * time.Minute

	// udpSweepInterval is how often the sweeper looks for idle sessions.
	udpSweepInterval = 15 * time.Second
)

// udpRegistry holds the open UDP sockets. Its lock is taken when a virtual
// listener registers or unregisters, by SetUDPMaxSessions and by
// UDPListenerStats, never on the datagram path.
var udpRegistry = struct {
	sync.Mutex
	sockets     map[string]*udpSocket // shared sockets by "host:port"
	all         map[*udpSocket]struct{}
	maxSessions map[string]int64 // SetUDPMaxSessions by "host:port"
}{
	sockets:     make(map[string]*udpSocket),
	all:         make(map[*udpSocket]struct{}),
	maxSessions: make(map[string]int64),
}

// SetUDPMaxSessions sets the session table cap of the between+udp socket(s)
// at listenAddr, a Caddy network address such as "between+udp/127.0.0.1:5353"
// (a port range sets every port in it). It applies to the open socket at once
// and to sockets opened there later. n <= 0 restores the default, 100000.
// Addresses of another network type, unparsable ones and port 0 are ignored.
func SetUDPMaxSessions(listenAddr string, n int) {
	if !IsNetworkUDP(listenAddr) {
		return
	}
	na, err := caddy.ParseNetworkAddress(listenAddr)
	if err != nil {
		return
	}
	if na.StartPort == 0 {
		return
	}
	udpRegistry.Lock()
	defer udpRegistry.Unlock()
	for p := na.StartPort; p <= na.EndPort; p++ {
		key := net.JoinHostPort(na.Host, strconv.FormatUint(uint64(p), 10))
		if n > 0 {
			udpRegistry.maxSessions[key] = int64(n)
		} else {
			delete(udpRegistry.maxSessions, key)
		}
		if s := udpRegistry.sockets[key]; s != nil {
			s.maxSessions.Store(udpMaxSessionsFor(key))
		}
	}
}

// udpMaxSessionsFor returns the session cap for key. The caller holds
// udpRegistry's lock.
func udpMaxSessionsFor(key string) int64 {
	if n, ok := udpRegistry.maxSessions[key]; ok {
		return n
	}
	return defaultUDPMaxSessions
}

// UDPSocketStats are the counters of one real between+udp socket. They start
// at zero when the socket opens and, since the socket is shared by every
// config on its address, carry on across reloads.
type UDPSocketStats struct {
	// Addr is the socket's local address, "host:port" (e.g. "127.0.0.1:5353",
	// "[::]:53").
	Addr string
	// Sessions is the number of open sessions.
	Sessions int64
	// Packets counts the datagrams received.
	Packets uint64
	// DroppedQueueFull counts datagrams dropped because their session's
	// queue was full (its reader is not keeping up).
	DroppedQueueFull uint64
	// DroppedMaxSessions counts datagrams dropped because they would have
	// started a session over the cap (SetUDPMaxSessions).
	DroppedMaxSessions uint64
	// DroppedBacklog counts datagrams dropped because the newest virtual
	// listener already held as many unaccepted sessions as it may.
	DroppedBacklog uint64
	// DroppedKernel counts datagrams the kernel dropped before the socket's
	// reader got them (receive buffer full: a burst larger than the buffer
	// the socket got, see udpReadBuffer). Linux only; 0 elsewhere.
	DroppedKernel uint64
}

// UDPListenerStats returns the counters of every open between+udp socket,
// ordered by address.
func UDPListenerStats() []UDPSocketStats {
	udpRegistry.Lock()
	out := make([]UDPSocketStats, 0, len(udpRegistry.all))
	for s := range udpRegistry.all {
		out = append(out, UDPSocketStats{
			Addr:               s.laddr.String(),
			Sessions:           s.sessions.Load(),
			Packets:            s.packets.Load(),
			DroppedQueueFull:   s.droppedQueueFull.Load(),
			DroppedMaxSessions: s.droppedMaxSessions.Load(),
			DroppedBacklog:     s.droppedBacklog.Load(),
			DroppedKernel:      kernelDrops(s.pc),
		})
	}
	udpRegistry.Unlock()
	slices.SortFunc(out, func(a, b UDPSocketStats) int { return strings.Compare(a.Addr, b.Addr) })
	return out
}

// listenUDP is the caddy.ListenerFunc for NetworkUDP.
func listenUDP(ctx context.Context, _, host, portRange string, portOffset uint, cfg net.ListenConfig) (any, error) {
	addr, port, err := hostPort(NetworkUDP, host, portRange, portOffset)
	if err != nil {
		return nil, err
	}

	udpRegistry.Lock()
	defer udpRegistry.Unlock()

	// Port 0 asks the kernel for any free port: such a socket has no
	// address another config could name, so it is never shared.
	shared := port != 0
	s := udpRegistry.sockets[addr]
	if s == nil || !shared {
		pc, err := cfg.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", NetworkUDP, err)
		}
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			_ = pc.Close()
			return nil, fmt.Errorf("%s: listening on %s gave a %T, not a UDP socket", NetworkUDP, addr, pc)
		}
		// Bursts (a thousand clients starting at once) overflow the
		// kernel's default receive buffer before the reader gets a turn.
		_ = uc.SetReadBuffer(udpReadBuffer)
		s = newUDPSocket(uc)
		s.maxSessions.Store(udpMaxSessionsFor(addr))
		if shared {
			s.key = addr
			udpRegistry.sockets[addr] = s
		}
		udpRegistry.all[s] = struct{}{}
		go s.readLoop()
		go s.sweepLoop()
	}
	l := s.join()
	// As for between+tcp: a config whose start failed is cancelled without
	// its listeners being closed, and would otherwise stay the newest.
	context.AfterFunc(ctx, func() { l.Close() })
	return l, nil
}

// udpSocket is one real UDP socket, its session table and the virtual
// listeners on it.
type udpSocket struct {
	pc    *net.UDPConn
	laddr *net.UDPAddr
	log   *zap.Logger

	// key is the registry key, "" when the socket is not shared.
	key string
	// members are the open virtual listeners, oldest first (guarded by
	// udpRegistry's lock).
	members []*udpListener
	// target is the newest open member: it gets the next new session; nil
	// once the last member has left.
	target atomic.Pointer[udpListener]

	shards [udpShardCount]udpShard

	maxSessions        atomic.Int64
	sessions           atomic.Int64
	packets            atomic.Uint64
	droppedQueueFull   atomic.Uint64
	droppedMaxSessions atomic.Uint64
	droppedBacklog     atomic.Uint64

	sweepEvery time.Duration
	idleTicks  int // sweeps without activity after which a session closes

	stop        chan struct{} // closed when the last member leaves
	readerDone  chan struct{}
	sweeperDone chan struct{}
}

// udpShard is one part of the session table. Only the reader goroutine adds
// sessions; closing ones remove themselves.
type udpShard struct {
	mu sync.Mutex
	m  map[netip.AddrPort]*UDPConn
	_  [48]byte // a cache line per shard: the reader and closers touch neighbours
}

func newUDPSocket(pc *net.UDPConn) *udpSocket {
	laddr, _ := pc.LocalAddr().(*net.UDPAddr)
	s := &udpSocket{
		pc:          pc,
		laddr:       laddr,
		log:         caddy.Log().Named("between.listeners").With(zap.String("address", NetworkUDP+"/"+pc.LocalAddr().String())),
		sweepEvery:  udpSweepInterval,
		idleTicks:   max(1, int((udpIdleTimeout+udpSweepInterval-1)/udpSweepInterval)),
		stop:        make(chan struct{}),
		readerDone:  make(chan struct{}),
		sweeperDone: make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[netip.AddrPort]*UDPConn)
	}
	return s
}

// join registers a new virtual listener as the newest member.
// The caller holds udpRegistry's lock.
func (s *udpSocket) join() *udpListener {
	l := &udpListener{
		sock:    s,
		queue:   make(chan *UDPConn, udpBacklog),
		closing: make(chan struct{}),
	}
	s.members = append(s.members, l)
	s.target.Store(l)
	return l
}

// leave unregisters l. When l was the last member it closes the real socket
// and reports true.
func (s *udpSocket) leave(l *udpListener) (last bool, err error) {
	udpRegistry.Lock()
	defer udpRegistry.Unlock()
	if i := slices.Index(s.members, l); i >= 0 {
		s.members = slices.Delete(s.members, i, i+1)
	}
	if n := len(s.members); n > 0 {
		s.target.Store(s.members[n-1])
		return false, nil
	}
	s.target.Store(nil)
	if s.key != "" && udpRegistry.sockets[s.key] == s {
		delete(udpRegistry.sockets, s.key)
	}
	delete(udpRegistry.all, s)
	close(s.stop)
	return true, s.pc.Close()
}

// readLoop reads datagrams until the socket is closed, then closes every
// session. One 64 KiB scratch buffer per socket takes any datagram whole;
// deliver copies it into a pooled buffer of its size class.
func (s *udpSocket) readLoop() {
	defer close(s.readerDone)
	defer s.closeSessions()
	scratch := make([]byte, 1<<16)
	var delay time.Duration
	for {
		n, from, err := s.pc.ReadFromUDPAddrPort(scratch)
		if err == nil {
			delay = 0
			s.packets.Add(1)
			if n > 0 {
				// A dual-stack socket reports IPv4 clients as
				// ::ffff:a.b.c.d; key and show them as IPv4.
				s.deliver(scratch[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
			}
			continue
		}
		if !pauseAfter(err, &delay, s.stop, s.log, "UDP socket closed unexpectedly", "reading a datagram failed; retrying") {
			return
		}
	}
}

// shardOf picks the session table shard of a client address.
func shardOf(ap netip.AddrPort) uint32 {
	a := ap.Addr().As16()
	h := binary.LittleEndian.Uint64(a[:8])*0x9e3779b97f4a7c15 ^
		binary.LittleEndian.Uint64(a[8:])*0xc2b2ae3d27d4eb4f ^
		uint64(ap.Port())*0x165667b19e3779f9
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return uint32(h >> (64 - udpShardBits))
}

// deliver queues datagram p from client on its session, starting one when
// the client has none. It never blocks: a datagram that cannot be queued is
// dropped and counted.
func (s *udpSocket) deliver(p []byte, client netip.AddrPort) {
	sh := &s.shards[shardOf(client)]
	sh.mu.Lock()
	if c := sh.m[client]; c != nil {
		c.mu.Lock()
		if c.closeErr == nil {
			queued := c.push(p)
			c.mu.Unlock()
			sh.mu.Unlock()
			if !queued {
				s.droppedQueueFull.Add(1)
			}
			return
		}
		// Closing: it removes itself from the table once it can take
		// the shard lock, unless it has been replaced by then.
		c.mu.Unlock()
	}
	if s.sessions.Load() >= s.maxSessions.Load() {
		sh.mu.Unlock()
		s.droppedMaxSessions.Add(1)
		return
	}
	c := newUDPConn(s, sh, client)
	c.push(p)
	sh.m[client] = c
	s.sessions.Add(1)
	sh.mu.Unlock()

	// Handed over outside the shard lock; no other datagram of this
	// client can arrive meanwhile (this is the only reader goroutine).
	if !s.dispatch(c) {
		if s.target.Load() != nil {
			s.droppedBacklog.Add(1)
		}
		c.close(io.EOF)
	}
}

// dispatch hands the new session c to the newest open virtual listener
// without waiting. It reports false when that listener's backlog is full or
// no listener is left.
func (s *udpSocket) dispatch(c *UDPConn) bool {
	for {
		l := s.target.Load()
		if l == nil {
			return false
		}
		switch l.offer(c) {
		case offerQueued:
			return true
		case offerFull:
			return false
		}
		// l closed meanwhile; it has already been replaced as target.
	}
}

// sweepLoop closes idle sessions until the socket closes. A session is
// marked active by every datagram, Write and Read returning data; one that
// stays unmarked, with no Read waiting under a deadline, for idleTicks sweeps
// in a row is closed.
func (s *udpSocket) sweepLoop() {
	defer close(s.sweeperDone)
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	var idle []*UDPConn
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			for _, c := range sh.m {
				if c.active.Swap(false) || c.timedWaits.Load() > 0 {
					c.idleSweeps = 0
					continue
				}
				if c.idleSweeps++; c.idleSweeps >= s.idleTicks {
					idle = append(idle, c)
				}
			}
			sh.mu.Unlock()
			for _, c := range idle {
				c.close(io.EOF)
			}
			clear(idle)
			idle = idle[:0]
		}
	}
}

// closeSessions closes every session of the socket (it is closing).
func (s *udpSocket) closeSessions() {
	var all []*UDPConn
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, c := range sh.m {
			all = append(all, c)
		}
		sh.mu.Unlock()
	}
	for _, c := range all {
		c.close(io.EOF)
	}
}

// offerResult is what udpListener.offer did with a session.
type offerResult uint8

const (
	offerQueued offerResult = iota
	offerFull
	offerClosed
)

// udpListener is a virtual net.Listener: one config's view of a shared UDP
// socket. Accept returns one *UDPConn per new client session.
type udpListener struct {
	sock  *udpSocket
	queue chan *UDPConn

	// mu orders offers against Close: once closed is set under it, nothing
	// more is queued, so Close's drain leaves nothing behind.
	mu          sync.Mutex
	closed      atomic.Bool
	closeCalled atomic.Bool
	closing     chan struct{} // closed by Close
}

// offer queues the new session c without waiting.
func (l *udpListener) offer(c *UDPConn) offerResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return offerClosed
	}
	select {
	case l.queue <- c:
		return offerQueued
	default:
		return offerFull
	}
}

// handOver passes a session that l will not return from Accept to the newest
// open listener; with none left (or its backlog full) the session closes.
func (l *udpListener) handOver(c *UDPConn) {
	if c.closed.Load() {
		return
	}
	if !l.sock.dispatch(c) {
		if l.sock.target.Load() != nil {
			l.sock.droppedBacklog.Add(uint64(max(1, c.queued())))
		}
		c.close(io.EOF)
	}
}

// Accept waits for and returns the next new session handed to this listener,
// a *UDPConn. After Close it returns an error matching net.ErrClosed.
func (l *udpListener) Accept() (net.Conn, error) {
	for {
		if l.closed.Load() {
			return nil, l.closedErr()
		}
		select {
		case c := <-l.queue:
			if l.closed.Load() {
				// Closed while we were taking it: it belongs to
				// the newest remaining listener.
				l.handOver(c)
				return nil, l.closedErr()
			}
			if c.closed.Load() {
				continue // idle or socket gone before anyone took it
			}
			return c, nil
		case <-l.closing:
			return nil, l.closedErr()
		}
	}
}

func (l *udpListener) closedErr() error {
	return &net.OpError{Op: "accept", Net: "udp", Addr: l.Addr(), Err: net.ErrClosed}
}

// Close unregisters the listener and passes the sessions it has not returned
// from Accept yet to the newest remaining listener. Sessions already accepted
// are not affected: they belong to their conns. Closing the last listener on
// a socket closes the socket and every session on it, and waits for the
// socket's goroutines to end. Close is idempotent.
func (l *udpListener) Close() error {
	if !l.closeCalled.CompareAndSwap(false, true) {
		return nil
	}
	// Unregister first, so that a dispatcher that finds l closed already
	// finds another target.
	last, err := l.sock.leave(l)
	l.mu.Lock()
	l.closed.Store(true)
	l.mu.Unlock()
	close(l.closing)
	for {
		select {
		case c := <-l.queue:
			l.handOver(c)
			continue
		default:
		}
		break
	}
	if last {
		<-l.sock.readerDone
		<-l.sock.sweeperDone
	}
	return err
}

// Addr returns the real socket's address, a *net.UDPAddr.
func (l *udpListener) Addr() net.Addr {
	return l.sock.laddr
}

// udpBufSizes are the size classes of the pooled datagram buffers. The reader
// reads into one 64 KiB scratch buffer and copies each datagram into the
// smallest class that fits: a queued DNS query holds 512 bytes, not 64 KiB,
// so 128 queued datagrams on each of many sessions stay affordable, and an
// idle session holds no buffer at all. The copy is of n bytes still in cache.
var udpBufSizes = [...]int{1 << 9, 1 << 11, 1 << 13, 1 << 16}

// udpBuf is one pooled datagram buffer; data is the datagram.
type udpBuf struct {
	data  []byte
	class uint8
}

var udpBufPools [len(udpBufSizes)]sync.Pool

func init() {
	for i, size := range udpBufSizes {
		udpBufPools[i].New = func() any { return &udpBuf{data: make([]byte, size), class: uint8(i)} }
	}
}

// newUDPBuf returns a pooled buffer holding a copy of p (len(p) <= 65536).
func newUDPBuf(p []byte) *udpBuf {
	class := 0
	for len(p) > udpBufSizes[class] {
		class++
	}
	b := udpBufPools[class].Get().(*udpBuf)
	b.data = b.data[:len(p)]
	copy(b.data, p)
	return b
}

func (b *udpBuf) free() {
	b.data = b.data[:cap(b.data)]
	udpBufPools[b.class].Put(b)
}

// UDPConn is one client session of a between+udp socket: the datagrams from
// one client address, and replies to it from the shared socket. It implements
// net.Conn; Read returns one datagram per call. Its methods may be called
// concurrently.
type UDPConn struct {
	sock   *udpSocket
	shard  *udpShard
	client netip.AddrPort
	remote *net.UDPAddr

	// ready holds a token when Read may have something to do: a datagram,
	// a closed session, a new deadline.
	ready  chan struct{}
	active atomic.Bool // see sweepLoop
	// timedWaits counts the Reads waiting with a deadline (see sweepLoop).
	timedWaits atomic.Int32
	closed     atomic.Bool // closeErr is set

	idleSweeps int // guarded by shard.mu

	mu sync.Mutex
	// q is a ring of queued datagrams: head is the oldest, n how many. It
	// grows up to udpQueueLen as needed, so an idle session holds none.
	q       []*udpBuf
	head, n int
	// cur is the datagram Read has returned part of; off is how much.
	cur      *udpBuf
	off      int
	closeErr error
	popped   bool // Read has taken a datagram: see close
	deadline time.Time
	timer    *time.Timer
	// frames are the lengths of the datagrams Read has started to return,
	// while recording (until TakeFrames or udpMaxRecorded bytes).
	frames        []int
	recorded      int
	recordingDone bool
}

func newUDPConn(s *udpSocket, sh *udpShard, client netip.AddrPort) *UDPConn {
	c := &UDPConn{
		sock:   s,
		shard:  sh,
		client: client,
		remote: net.UDPAddrFromAddrPort(client),
		ready:  make(chan struct{}, 1),
	}
	c.active.Store(true)
	return c
}

// signal wakes a waiting Read. The caller holds c.mu.
func (c *UDPConn) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

func (c *UDPConn) markActive() {
	if !c.active.Load() {
		c.active.Store(true)
	}
}

// push queues a copy of p and reports whether there was room. The caller
// holds c.mu (or c is not yet visible to anyone else).
func (c *UDPConn) push(p []byte) bool {
	c.markActive()
	if c.n == len(c.q) {
		if c.n == udpQueueLen {
			return false
		}
		q := make([]*udpBuf, min(udpQueueLen, max(4, 2*len(c.q))))
		for i := range c.n {
			q[i] = c.q[(c.head+i)%len(c.q)]
		}
		c.q, c.head = q, 0
	}
	c.q[(c.head+c.n)%len(c.q)] = newUDPBuf(p)
	c.n++
	c.signal()
	return true
}

// queued returns how many datagrams wait in the queue.
func (c *UDPConn) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Read reads the next datagram into p. If p is shorter than the datagram,
// Read fills p and the rest comes from the next Read(s); a Read never
// returns bytes of two datagrams. It waits until a datagram arrives, the
// read deadline passes (os.ErrDeadlineExceeded) or the session closes:
// net.ErrClosed after Close, io.EOF when the socket closed or the session
// was idle for too long.
func (c *UDPConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if err := c.await(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	var n int
	if b := c.cur; b != nil {
		n = copy(p, b.data[c.off:])
		c.off += n
		if c.off == len(b.data) {
			b.free()
			c.cur = nil
		}
	} else {
		b := c.pop()
		n = copy(p, b.data)
		if n < len(b.data) {
			c.cur, c.off = b, n
		} else {
			b.free()
		}
	}
	c.mu.Unlock()
	c.markActive()
	return n, nil
}

// ReadFunc waits for the next datagram like Read (same deadline and close
// errors) and calls fn with it, without copying it into a buffer of the
// caller's: a reader that waits in ReadFunc holds no buffer while the
// session is idle. p is the datagram (the rest of it if a Read returned
// part of it) in a pooled buffer, valid only until fn returns; fn must not
// keep it. fn runs without any lock of c held, so it may call Write,
// SetReadDeadline, Close; a concurrent Read or ReadFunc gets the next
// datagram meanwhile.
func (c *UDPConn) ReadFunc(fn func(p []byte)) error {
	c.mu.Lock()
	if err := c.await(); err != nil {
		c.mu.Unlock()
		return err
	}
	b, off := c.cur, c.off
	if b != nil {
		c.cur = nil
	} else {
		b, off = c.pop(), 0
	}
	c.mu.Unlock()
	c.markActive()
	fn(b.data[off:])
	b.free()
	return nil
}

// await waits until a datagram is there to read (a partly read one in
// c.cur or a queued one), and returns nil; or returns the session's close
// error, or os.ErrDeadlineExceeded once the read deadline has passed. The
// caller holds c.mu; await lets go of it while it waits.
func (c *UDPConn) await() error {
	for {
		if c.cur != nil || c.n > 0 {
			return nil
		}
		if err := c.closeErr; err != nil {
			c.signal()
			return err
		}
		var expired <-chan time.Time
		if !c.deadline.IsZero() {
			if !time.Now().Before(c.deadline) {
				return os.ErrDeadlineExceeded
			}
			expired = c.timer.C
		}
		c.mu.Unlock()
		if expired != nil {
			c.timedWaits.Add(1)
		}
		select {
		case <-c.ready:
		case <-expired:
		}
		if expired != nil {
			c.timedWaits.Add(-1)
		}
		c.mu.Lock()
	}
}

// pop takes the oldest queued datagram out of the queue (c.n > 0), records
// its length while recording, and wakes another waiting reader if more are
// queued. The caller holds c.mu and owns the returned buffer.
func (c *UDPConn) pop() *udpBuf {
	b := c.q[c.head]
	c.q[c.head] = nil
	c.head = (c.head + 1) % len(c.q)
	c.n--
	c.popped = true
	if !c.recordingDone {
		c.frames = append(c.frames, len(b.data))
		if c.recorded += len(b.data); c.recorded >= udpMaxRecorded {
			c.recordingDone = true
		}
	}
	if c.n > 0 {
		c.signal() // for another goroutine waiting in Read
	}
	return b
}

// TakeFrames appends to dst the lengths of the datagrams whose bytes Read has
// started to return since the session began, oldest first (the last one may
// be only partly returned), and stops recording. A handler behind caddy-l4
// calls it once: caddy-l4's matching buffer holds exactly those bytes, so
// reading one frame length at a time recovers the datagram boundaries.
// Recording also stops by itself after 16 KiB, caddy-l4's largest prefetch.
func (c *UDPConn) TakeFrames(dst []int) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	dst = append(dst, c.frames...)
	c.frames = nil
	c.recordingDone = true
	return dst
}

// Write sends p to the client as one datagram from the shared socket.
func (c *UDPConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.markActive()
	return c.sock.pc.WriteToUDPAddrPort(p, c.client)
}

// Close ends the session: it leaves the session table (the client's next
// datagram starts a new session) and a waiting Read returns net.ErrClosed.
// Datagrams still queued, which arrived after the session's handler read its
// last one, are not lost when the handler has read at least one: they start
// a new session, handed to the newest config like any new client (a session
// closed before any Read discards them). The shared socket stays open.
// Close is idempotent.
func (c *UDPConn) Close() error {
	c.close(net.ErrClosed)
	return nil
}

// close ends the session with err as Read's result. When the handler
// closes it (net.ErrClosed), its queued datagrams move to a new session;
// otherwise (the socket closed, the sweeper, no listener) they are freed.
func (c *UDPConn) close(err error) {
	sh := c.shard
	sh.mu.Lock() // the order deliver takes the locks in
	c.mu.Lock()
	if c.closeErr != nil {
		c.mu.Unlock()
		sh.mu.Unlock()
		return
	}
	c.closeErr = err
	c.closed.Store(true)
	var next *UDPConn
	// Only a session whose handler read something hands its queue on: a
	// handler that refuses a client without reading would otherwise get
	// the same datagrams back forever.
	if err == net.ErrClosed && c.popped && c.n > 0 && sh.m[c.client] == c && c.sock.target.Load() != nil {
		next = newUDPConn(c.sock, sh, c.client)
		next.q, next.head, next.n = c.q, c.head, c.n
		c.q, c.head, c.n = nil, 0, 0
	}
	for ; c.n > 0; c.n-- {
		c.q[c.head].free()
		c.q[c.head] = nil
		c.head = (c.head + 1) % len(c.q)
	}
	c.q = nil
	if c.cur != nil {
		c.cur.free()
		c.cur = nil
	}
	c.frames = nil
	if c.timer != nil {
		c.timer.Stop()
	}
	c.signal()
	c.mu.Unlock()
	switch {
	case next != nil:
		sh.m[c.client] = next // the session count stays: one replaces the other
	case sh.m[c.client] == c:
		delete(sh.m, c.client)
		c.sock.sessions.Add(-1)
	default:
		c.sock.sessions.Add(-1)
	}
	sh.mu.Unlock()
	if next != nil && !c.sock.dispatch(next) {
		c.sock.droppedBacklog.Add(uint64(next.queued()))
		next.close(io.EOF)
	}
}

// LocalAddr returns the shared socket's address, a *net.UDPAddr.
func (c *UDPConn) LocalAddr() net.Addr { return c.sock.laddr }

// RemoteAddr returns the client's address, a *net.UDPAddr.
func (c *UDPConn) RemoteAddr() net.Addr { return c.remote }

// ClientAddrPort returns the client's address.
func (c *UDPConn) ClientAddrPort() netip.AddrPort { return c.client }

// SetDeadline sets the read deadline (see SetWriteDeadline).
func (c *UDPConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline sets when a waiting Read gives up with
// os.ErrDeadlineExceeded; the zero time means never.
func (c *UDPConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr != nil {
		return net.ErrClosed
	}
	c.deadline = t
	if t.IsZero() {
		if c.timer != nil {
			c.timer.Stop()
		}
		return nil
	}
	if c.timer == nil {
		c.timer = time.NewTimer(time.Until(t))
	} else {
		c.timer.Reset(time.Until(t))
	}
	c.signal() // a waiting Read picks up the new deadline
	return nil
}

// SetWriteDeadline does nothing and returns nil: a Write is one sendto on
// the shared socket, which does not wait for the client; a deadline on the
// shared socket would apply to every session.
func (c *UDPConn) SetWriteDeadline(time.Time) error { return nil }

var (
	_ net.Listener = (*udpListener)(nil)
	_ net.Conn     = (*UDPConn)(nil)
)
