package l4handler

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/listeners"
	"github.com/caddy-between/between/udpsession"
	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

// udpHandler is the UDP side of a handler on a UDP listener: the settings of
// its virtual sessions, and the election udpsession.Serve calls back into.
type udpHandler struct {
	h           *Handler
	cfg         udpsession.Config // on caddy-l4's own UDP server
	lingerCfg   udpsession.Config // on a between+udp listener
	once        sync.Once         // finish, at the first client
	maxSessions int64
}

// isPacketNetwork reports whether a Caddy network name is a datagram one.
func isPacketNetwork(network string) bool {
	switch strings.ToLower(network) {
	case "udp", "udp4", "udp6", "unixgram", listeners.NetworkUDP:
		return true
	}
	return false
}

// setTransport learns from the listen addresses of the layer4 servers the
// handler sits in whether it relays TCP connections or UDP datagrams, and
// checks the fields that only make sense for one of them.
func (h *Handler) setTransport(locs []Location) error {
	var tcpLoc, udpLoc *Location
	var tcpAddr, udpAddr string
	for i := range locs {
		for _, addr := range locs[i].Listen {
			na, err := caddy.ParseNetworkAddress(addr)
			if err != nil {
				continue // caddy-l4 reports it
			}
			if isPacketNetwork(na.Network) {
				if na.Network == "unixgram" {
					return fmt.Errorf("between handler %q in %s: listen %q: unix datagram sockets are not supported; use udp/ or between+udp/", h.Name, &locs[i], addr)
				}
				udpLoc, udpAddr = &locs[i], addr
			} else {
				tcpLoc, tcpAddr = &locs[i], addr
			}
		}
	}
	if tcpLoc != nil && udpLoc != nil {
		return fmt.Errorf("between handler %q: listens for TCP in %s (%q) and for UDP in %s (%q); use a handler of another name for each", h.Name, tcpLoc, tcpAddr, udpLoc, udpAddr)
	}
	if udpLoc == nil {
		if h.UDP != nil {
			where := ""
			if tcpLoc != nil {
				where = fmt.Sprintf(" in %s (listen %q)", tcpLoc, tcpAddr)
			}
			return fmt.Errorf("between handler %q%s: udp: only for UDP listeners (udp/ADDRESS or between+udp/ADDRESS)", h.Name, where)
		}
		return h.checkHealthProtocol("tcp", tcpLoc)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"sni", h.SNI != nil}, {"proxy_protocol", h.ProxyProtocol != nil},
		{"accept_proxy_protocol", h.AcceptProxyProtocol != nil}, {"backends_tls", h.BackendsTLS != nil},
	} {
		if f.set {
			return fmt.Errorf("between handler %q in %s: %s: only for TCP listeners, and %q is UDP", h.Name, udpLoc, f.name, udpAddr)
		}
	}
	u := h.UDP
	if u == nil {
		u = new(UDPConfig)
	}
	if err := u.provision(h); err != nil {
		return fmt.Errorf("between handler %q in %s: %w", h.Name, udpLoc, err)
	}
	if err := h.checkHealthProtocol("udp", udpLoc); err != nil {
		return err
	}
	h.udp = &udpHandler{
		h: h,
		cfg: udpsession.Config{
			MaxRequests:  u.MaxRequests,
			MaxResponses: u.MaxResponses,
			ClientIdle:   time.Duration(h.ClientIdleTimeout),
			BackendIdle:  time.Duration(h.BackendIdleTimeout),
			DialTimeout:  time.Duration(h.BackendConnectionTimeout),
			Transparent:  u.Transparent,
		},
		maxSessions: int64(u.MaxSessions),
	}
	if h.MaxConnections > 0 && h.MaxConnections < u.MaxSessions {
		// on UDP, max_connections caps client sessions too
		h.udp.maxSessions = int64(h.MaxConnections)
	}
	if h.udp.cfg.ClientIdle == 0 && h.udp.cfg.BackendIdle == 0 {
		// A client session must end some time, or a between+udp listener
		// would keep every client it ever saw until max_sessions.
		h.udp.cfg.ClientIdle = defaultUDPIdle
	}
	return nil
}

// checkHealthProtocol asks the health checker whether it can check servers
// of this protocol (a TCP ping cannot check a UDP server).
func (h *Handler) checkHealthProtocol(proto string, loc *Location) error {
	v, ok := h.checker.(interface{ ValidateProtocol(string) error })
	if !ok {
		return nil
	}
	if err := v.ValidateProtocol(proto); err != nil {
		if loc != nil {
			return fmt.Errorf("between handler %q in %s: healthcheck: %w", h.Name, loc, err)
		}
		return fmt.Errorf("between handler %q: healthcheck: %w", h.Name, err)
	}
	return nil
}

// handleUDP serves one client session (one client address) of a UDP
// listener: it relays the client's datagrams through virtual sessions until
// the session idles out or its conn closes. On a between+udp listener the
// conn is read directly after the datagrams caddy-l4's matchers consumed; on
// a stock udp listener through caddy-l4's connection.
func (h *Handler) handleUDP(cx *layer4.Connection) error {
	u, st := h.udp, h.state
	client := addrPort(cx.RemoteAddr())
	if !h.Access.allowed(client.Addr().Unmap()) {
		st.udp.Dropped[udpsession.Refused].Add(1)
		st.stats.AddRefused()
		if ce, n := st.refusals.check(h.logger, refusedAccess); ce != nil {
			ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.Int64("count", n))
		}
		return nil
	}
	if !st.stats.TryAddActive(u.maxSessions) {
		st.udp.Dropped[udpsession.MaxSessions].Add(1)
		st.stats.AddRefused()
		if ce, n := st.refusals.check(h.logger, refusedMaxSessions); ce != nil {
			ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.Int64("max_sessions", u.maxSessions), zap.Int64("count", n))
		}
		return nil
	}
	defer st.stats.AddActive(-1)
	if h.DrainTimeout > 0 {
		st.conns.Store(cx.Conn, struct{}{})
		defer st.conns.Delete(cx.Conn)
	}
	st.awaitDiscovery()

	// Serve writes replies from several goroutines: never through cx,
	// whose byte counters are not safe for that; write to the socket.
	fc := framedPool.Get().(*framedConn)
	fc.cx = cx
	if lc, ok := cx.Conn.(*listeners.UDPConn); ok {
		fc.lc = lc
		fc.frames = lc.TakeFrames(fc.frames[:0])
	}
	defer func() { *fc = framedConn{frames: fc.frames[:0]}; framedPool.Put(fc) }()
	u.once.Do(func() { u.finish(st) })
	cfg := &u.cfg
	var c udpsession.Conn = fc
	if fc.lc != nil {
		c = funcFramedConn{fc} // a udpsession.FuncReader: no buffer held while idle
		cfg = &u.lingerCfg
	}
	return udpsession.Serve(c, client, cfg, u, st.udp, st.stats)
}

// framedConn is the client side of a session as udpsession.Serve reads it.
// On a between+udp listener (lc set) it returns first the datagrams caddy-l4's
// matchers already read (through cx, which holds their bytes, cut at the
// boundaries the listener recorded), then reads the listener's conn directly.
// On caddy-l4's own UDP server it reads through cx, which keeps datagram
// boundaries, and rounds read deadlines up to a whole second: that server
// keeps only the seconds of a deadline and checks it before handing over a
// queued datagram, so a deadline with a fraction would refuse datagrams
// that are already there.
type framedConn struct {
	cx     *layer4.Connection
	lc     *listeners.UDPConn // nil on caddy-l4's own UDP server
	frames []int
	next   int
}

var framedPool = sync.Pool{New: func() any { return &framedConn{frames: make([]int, 0, 8)} }}

// Read returns one datagram.
func (f *framedConn) Read(p []byte) (int, error) {
	if f.lc == nil {
		return f.cx.Read(p)
	}
	if f.next < len(f.frames) {
		n := min(f.frames[f.next], len(p))
		f.next++
		return io.ReadFull(f.cx, p[:n])
	}
	return f.lc.Read(p)
}

// funcFramedConn is a framedConn on a between+udp listener, where Serve can
// read without a buffer of its own: it adds udpsession.FuncReader. (On
// caddy-l4's own UDP server Serve reads into a pooled 64 KiB buffer, held
// while the session lasts: caddy-l4's connection has no way to hand over a
// datagram without copying it into the reader's buffer.)
type funcFramedConn struct{ *framedConn }

// frameBufPool holds the buffers the datagrams caddy-l4 prefetched are read
// into: the first datagram(s) of a session only.
var frameBufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// ReadFunc calls fn with the next datagram: first the ones caddy-l4's
// matchers already read (copied out of cx into a pooled buffer), then the
// listener conn's, handed over without a copy (UDPConn.ReadFunc). p is
// valid only until fn returns.
func (f funcFramedConn) ReadFunc(fn func(p []byte)) error {
	if f.next < len(f.frames) {
		bp := frameBufPool.Get().(*[]byte)
		defer frameBufPool.Put(bp)
		n, err := f.Read(*bp)
		if err != nil {
			return err
		}
		fn((*bp)[:n])
		return nil
	}
	return f.lc.ReadFunc(fn)
}

// Write sends one datagram to the client; safe for concurrent use.
func (f *framedConn) Write(p []byte) (int, error) {
	if f.lc == nil {
		return f.cx.Conn.Write(p)
	}
	return f.lc.Write(p)
}

// SetReadDeadline bounds the next Read.
func (f *framedConn) SetReadDeadline(t time.Time) error {
	if f.lc == nil {
		if r := t.Truncate(time.Second); !r.Equal(t) {
			t = r.Add(time.Second)
		}
		return f.cx.SetReadDeadline(t)
	}
	return f.lc.SetReadDeadline(t)
}

// Elect picks a backend for a new virtual session of client, skipping the
// ones tried already, and returns it acquired.
func (u *udpHandler) Elect(client netip.AddrPort, tried []*backend.Backend) (*backend.Backend, error) {
	h, st := u.h, u.h.state
	c := clientPool.Get().(*balancers.Client)
	defer releaseClient(c)
	c.IP, c.Port = client.Addr().Unmap(), client.Port()
	c.Skip = append(c.Skip, tried...)
	pool := *st.pool.Load()
	for range len(pool) + 1 {
		b, err := h.balancer.Elect(c, pool)
		if err != nil {
			if len(tried) > 0 {
				err = errors.New("dial failed on every tried backend")
			} else {
				err = h.explain(err, c)
			}
			if ce, n := st.refusals.check(h.logger, refusalKind(err)); ce != nil {
				ce.Write(zap.Stringer("client", client), zap.String("reason", err.Error()), zap.Int64("count", n))
			}
			return nil, err
		}
		if b.Acquire() {
			return b, nil
		}
		c.Skip = append(c.Skip, b) // filled up between election and now
	}
	return nil, errors.New("no eligible backend")
}

// Failed counts a backend socket that could not be opened or written to.
func (u *udpHandler) Failed(b *backend.Backend, err error) {
	st := u.h.state
	b.Stats.AddRefused()
	st.health.DialFailed(b.Address())
	if ce, n := st.refusals.check(u.h.logger, refusedBackendSend); ce != nil {
		ce.Write(zap.String("backend", b.Address()), zap.Error(err), zap.Int64("count", n))
	}
}

// finish completes the handler's session configs with its state's
// forwarder. The between+udp one lingers: a client session with nothing in
// flight ends after udpLinger without a datagram, as the listener hands
// datagrams that arrive meanwhile to a new session (caddy-l4's own UDP server
// would drop them, so there sessions last the idle timeout).
func (u *udpHandler) finish(st *state) {
	u.cfg.Forwarder = st.fwd
	u.lingerCfg = u.cfg
	u.lingerCfg.Linger = udpLinger
}

// udpLinger is how long a between+udp client session with nothing in flight
// waits for the client's next datagram before it ends (releasing its
// goroutines and parked sockets), when that is sooner than the idle timeout.
const udpLinger = time.Second

var _ udpsession.FuncReader = funcFramedConn{}
