// Package listeners registers the Caddy network type "between+tcp": TCP
// listening sockets that survive config reloads without resetting a single
// connection.
//
// Caddy starts a new config before it stops the old one, so every listen
// address is opened twice for a moment. For plain TCP addresses Caddy binds a
// second SO_REUSEPORT socket and then closes the old one, and the kernel resets
// the connections still waiting in the closed socket's accept queue (unless
// net.ipv4.tcp_migrate_req is 1). An address written as between+tcp/HOST:PORT
// instead opens one real socket per host and port, shared by every config that
// listens there. Each config gets its own virtual [net.Listener] on that socket;
// a single accept goroutine per socket hands every new connection to the newest
// virtual listener that is still open. When a config stops, its virtual
// listener passes the connections it has not accepted yet to the newest
// remaining one, and the real socket closes only when the last virtual listener
// on it is closed.
//
// The network type "between+udp" (udp.go) does the same for UDP: one shared
// socket per address, a session table, and one [net.Conn] per client address.
//
// Importing the package (for its side effect) is enough to make the network
// types available, e.g. in a layer4 server's listen addresses.
package listeners

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// NetworkTCP is the Caddy network type registered by this package. Addresses
// use it as a prefix: "between+tcp/:6380", "between+tcp/[::1]:80".
const NetworkTCP = "between+tcp"

// IsNetworkTCP reports whether the Caddy network address addr (such as
// "between+tcp/127.0.0.1:6380") uses the [NetworkTCP] network type. The
// network part is compared the way Caddy parses it: trimmed, case-insensitive.
func IsNetworkTCP(addr string) bool {
	return isNetwork(addr, NetworkTCP)
}

// isNetwork reports whether the Caddy network address addr uses network.
func isNetwork(addr, network string) bool {
	n, _, found := strings.Cut(addr, "/")
	return found && strings.EqualFold(strings.TrimSpace(n), network)
}

func init() {
	caddy.RegisterNetwork(NetworkTCP, listenTCP)
}

const (
	// queueSize is how many accepted connections a virtual listener holds
	// before the accept goroutine waits for its Accept.
	queueSize = 64

	// minBackoff and maxBackoff bound the pause after a failed accept
	// (EMFILE, ENFILE, ENOBUFS...): it starts at minBackoff and doubles.
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second

	// closedBit marks a virtual listener's state as closed; the bits below
	// it count the dispatchers currently offering it a connection.
	closedBit   = int64(1) << 62
	offerersMsk = closedBit - 1
)

// registry holds the shared sockets by "host:port". Its lock is taken only
// when a virtual listener registers or unregisters, never on the accept path.
var registry = struct {
	sync.Mutex
	sockets map[string]*socket
}{sockets: make(map[string]*socket)}

// listenTCP is the caddy.ListenerFunc for NetworkTCP.
func listenTCP(ctx context.Context, _, host, portRange string, portOffset uint, cfg net.ListenConfig) (any, error) {
	addr, port, err := hostPort(NetworkTCP, host, portRange, portOffset)
	if err != nil {
		return nil, err
	}

	registry.Lock()
	defer registry.Unlock()

	// Port 0 asks the kernel for any free port: such a socket has no
	// address another config could name, so it is never shared.
	shared := port != 0
	s := registry.sockets[addr]
	if s == nil || !shared {
		// No TCP keepalive on accepted connections (Go's default would set
		// four socket options on each, first probe after 15s): off by
		// default, as in HAProxy; the between handler's keepalive field
		// turns it on for the sockets it proxies.
		cfg.KeepAlive, cfg.KeepAliveConfig = -1, net.KeepAliveConfig{}
		ln, err := cfg.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", NetworkTCP, err)
		}
		s = newSocket(ln)
		if shared {
			s.key = addr
			registry.sockets[addr] = s
		}
		go s.acceptLoop()
	}
	l := s.join()
	// A config whose start fails is cancelled without its listeners being
	// closed (caddy-l4 returns on the first listen error and Caddy does not
	// stop an app whose Start failed); left open, the failed config's
	// listener would be the newest and take every new connection. The
	// config's context ends after a normal stop too, when Close has already
	// run and this is a no-op.
	context.AfterFunc(ctx, func() { l.Close() })
	return l, nil
}

// hostPort returns the "host:port" a ListenerFunc of network listens on:
// host without IPv6 brackets, and the port portOffset places into portRange.
// Errors name network.
func hostPort(network, host, portRange string, portOffset uint) (string, uint16, error) {
	if portRange == "" {
		return "", 0, fmt.Errorf("%s: the address has no port (write e.g. %s/:PORT or %s/HOST:PORT)", network, network, network)
	}
	port, err := resolvePort(portRange, portOffset)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", network, err)
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10)), port, nil
}

// resolvePort returns the port portOffset places after the start of
// portRange ("6380" or "6380-6389").
func resolvePort(portRange string, portOffset uint) (uint16, error) {
	if portRange == "" {
		return 0, errors.New("the address has no port")
	}
	first, last, isRange := strings.Cut(portRange, "-")
	if !isRange {
		last = first
	}
	start, err1 := strconv.ParseUint(first, 10, 16)
	end, err2 := strconv.ParseUint(last, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid port %q: only port numbers 0-65535 (or a range of them) are supported", portRange)
	}
	if end < start {
		return 0, fmt.Errorf("invalid port range %q: end is before start", portRange)
	}
	if uint64(portOffset) > end-start {
		return 0, fmt.Errorf("port offset %d is outside port range %q", portOffset, portRange)
	}
	return uint16(start + uint64(portOffset)), nil
}

// socket is one real listening socket and the virtual listeners on it.
type socket struct {
	ln  net.Listener
	log *zap.Logger

	// key is the registry key, "" when the socket is not shared.
	key string
	// members are the open virtual listeners, oldest first (guarded by
	// registry's lock).
	members []*listener
	// target is the newest open member: the one that gets the next
	// connection; nil once the last member has left.
	target atomic.Pointer[listener]

	stop chan struct{} // closed when the last member leaves
	done chan struct{} // closed when acceptLoop has returned
}

func newSocket(ln net.Listener) *socket {
	return &socket{
		ln:   ln,
		log:  caddy.Log().Named("between.listeners").With(zap.String("address", NetworkTCP+"/"+ln.Addr().String())),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
}

// join registers a new virtual listener as the newest member.
// The caller holds registry's lock.
func (s *socket) join() *listener {
	l := &listener{
		sock:    s,
		queue:   make(chan net.Conn, queueSize),
		closing: make(chan struct{}),
	}
	s.members = append(s.members, l)
	s.target.Store(l)
	return l
}

// leave unregisters l. When l was the last member it closes the real socket
// and reports true.
func (s *socket) leave(l *listener) (last bool, err error) {
	registry.Lock()
	defer registry.Unlock()
	for i, m := range s.members {
		if m == l {
			s.members = append(s.members[:i], s.members[i+1:]...)
			break
		}
	}
	if n := len(s.members); n > 0 {
		s.target.Store(s.members[n-1])
		return false, nil
	}
	s.target.Store(nil)
	if s.key != "" && registry.sockets[s.key] == s {
		delete(registry.sockets, s.key)
	}
	close(s.stop)
	return true, s.ln.Close()
}

// acceptLoop accepts connections on the real socket until it is closed and
// dispatches each one to the newest virtual listener.
func (s *socket) acceptLoop() {
	defer close(s.done)
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err == nil {
			delay = 0
			s.dispatch(c)
			continue
		}
		if !pauseAfter(err, &delay, s.stop, s.log, "listening socket closed unexpectedly", "accepting a connection failed; retrying") {
			return
		}
	}
}

// pauseAfter handles a failed accept or read of a socket's loop: it reports
// false when the loop should end (the socket is stopping, or was closed
// under it: closedMsg is logged), else it logs retryMsg and waits delay,
// which starts at minBackoff and doubles up to maxBackoff (EMFILE, ENFILE,
// ENOBUFS... pass), and reports true.
func pauseAfter(err error, delay *time.Duration, stop <-chan struct{}, log *zap.Logger, closedMsg, retryMsg string) bool {
	select {
	case <-stop:
		return false
	default:
	}
	if errors.Is(err, net.ErrClosed) {
		log.Error(closedMsg, zap.Error(err))
		return false
	}
	if *delay == 0 {
		*delay = minBackoff
	} else {
		*delay = min(2**delay, maxBackoff)
	}
	log.Error(retryMsg, zap.Error(err), zap.Duration("retry_in", *delay))
	t := time.NewTimer(*delay)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}

// dispatch hands c to the newest open virtual listener, waiting while its
// queue is full. With no listener left, c is closed: the socket is going away.
func (s *socket) dispatch(c net.Conn) {
	for {
		l := s.target.Load()
		if l == nil {
			_ = c.Close()
			return
		}
		if l.offer(c) {
			return
		}
		// l closed meanwhile; it has already been replaced as target.
	}
}

// listener is a virtual net.Listener: one config's view of a shared socket.
type listener struct {
	sock  *socket
	queue chan net.Conn

	// state is closedBit | number of dispatchers inside offer. Whoever
	// brings it to exactly closedBit (Close, or the last dispatcher to
	// leave after Close) re-dispatches what is left in queue, so nothing
	// can stay behind in a closed listener's queue.
	state       atomic.Int64
	closeCalled atomic.Bool
	closing     chan struct{} // closed by Close
}

// offer queues c on l and reports whether it did; false means l is closed
// and c is still the caller's.
func (l *listener) offer(c net.Conn) bool {
	if l.state.Add(1)&closedBit != 0 {
		l.release()
		return false
	}
	queued := false
	select {
	case l.queue <- c:
		queued = true
	case <-l.closing:
	}
	l.release()
	return queued
}

// release ends an offer; the last one to leave a closed listener drains it.
func (l *listener) release() {
	if l.state.Add(-1) == closedBit {
		l.drain()
	}
}

// drain re-dispatches every connection left in l's queue.
func (l *listener) drain() {
	for {
		select {
		case c := <-l.queue:
			l.sock.dispatch(c)
		default:
			return
		}
	}
}

// Accept waits for and returns the next connection handed to this listener:
// the *net.TCPConn accepted on the real socket, unwrapped. After Close it
// returns an error matching net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	if l.state.Load()&closedBit != 0 {
		return nil, l.closedErr()
	}
	select {
	case c := <-l.queue:
		if l.state.Load()&closedBit != 0 {
			// Closed while we were taking it: it belongs to the
			// newest remaining listener.
			l.sock.dispatch(c)
			return nil, l.closedErr()
		}
		return c, nil
	case <-l.closing:
		return nil, l.closedErr()
	}
}

func (l *listener) closedErr() error {
	return &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
}

// Close unregisters the listener and passes the connections queued on it to
// the newest remaining listener. Closing the last listener on a socket
// closes the socket (connections still queued are then closed) and waits for
// its accept goroutine to end. Close is idempotent.
func (l *listener) Close() error {
	if !l.closeCalled.CompareAndSwap(false, true) {
		return nil
	}
	// Unregister first, so that a dispatcher that sees the closed state
	// already finds another target.
	last, err := l.sock.leave(l)
	old := l.state.Or(closedBit)
	close(l.closing)
	if old&offerersMsk == 0 {
		l.drain()
	}
	if last {
		<-l.sock.done
	}
	return err
}

// Addr returns the real socket's address.
func (l *listener) Addr() net.Addr {
	return l.sock.ln.Addr()
}

var _ net.Listener = (*listener)(nil)
