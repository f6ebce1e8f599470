package l4handler

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/tcpproxy"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

// Handle serves one client connection from election to close. It never calls
// next: the handler is terminal. Refusals and backend failures are counted
// and logged here, so it returns nil (caddy-l4 would log a returned error a
// second time).
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	if h.udp != nil {
		return h.handleUDP(cx)
	}
	st := h.state
	client := clientPool.Get().(*balancers.Client)
	defer releaseClient(client)
	client.IP, client.Port = clientAddr(cx.RemoteAddr())
	// accept_proxy_protocol: the balancer in front declares the client
	var declared, declaredDst netip.AddrPort
	if a := h.AcceptProxyProtocol; a != nil && a.trusts(client.IP) {
		src, dst, err := a.read(cx)
		if err != nil {
			st.stats.AddRefused()
			if ce, n := st.refusals.check(h.logger, refusedProxyHeader); ce != nil {
				ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.Error(err), zap.Int64("count", n))
			}
			return nil
		}
		if src.IsValid() {
			declared, declaredDst = src, dst
			client.IP, client.Port = src.Addr().Unmap(), src.Port()
		}
	}
	if !h.Access.allowed(client.IP) {
		st.stats.AddRefused()
		if ce, n := st.refusals.check(h.logger, refusedAccess); ce != nil {
			ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.Int64("count", n))
		}
		return nil
	}
	if !st.stats.TryAddActive(int64(h.MaxConnections)) {
		st.stats.AddRefused()
		if ce, n := st.refusals.check(h.logger, refusedMaxConns); ce != nil {
			ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.Int("max_connections", h.MaxConnections), zap.Int64("count", n))
		}
		return nil
	}
	defer st.stats.AddActive(-1)
	start := time.Now()

	// The socket the bytes are copied from: the raw *net.TCPConn on plain TCP
	// (so that the kernel splices), else (after caddy-l4's tls or
	// proxy_protocol handlers) the connection as caddy-l4 wrapped it.
	var down net.Conn = cx
	if tc, ok := cx.Conn.(*net.TCPConn); ok {
		down = tc
		if h.keepalive.Enable {
			_ = tc.SetKeepAliveConfig(h.keepalive)
		}
	}
	if h.DrainTimeout > 0 {
		// only a drain_timeout ever closes connections from outside
		st.conns.Store(down, struct{}{})
		defer st.conns.Delete(down)
	}

	// Bytes caddy-l4's matchers already read (a tls matcher's ClientHello,
	// an http matcher's request line) go to the backend first.
	pb := prefixPool.Get().(*[]byte)
	defer func() { releasePrefix(pb) }()
	prefix := *pb
	if h.sni != nil {
		if name, ok := cx.Replacer().Get("l4.tls.server_name"); ok {
			client.SNI, _ = name.(string)
		} else {
			// no tls matcher ran: read the ClientHello ourselves, through
			// cx so that any byte a matcher read comes first
			var peeked []byte
			client.SNI, peeked = h.peekSNI(cx)
			prefix = append(prefix, peeked...)
		}
	}
	if down != net.Conn(cx) {
		if n := len(cx.MatchingBytes()); n > 0 {
			prefix = append(prefix, make([]byte, n)...)
			if _, err := io.ReadFull(cx, prefix[len(prefix)-n:]); err != nil {
				return nil
			}
		}
	}
	*pb = prefix

	st.awaitDiscovery()
	b, up, err := h.connect(client)
	if err != nil {
		st.stats.AddRefused()
		if ce, n := st.refusals.check(h.logger, refusalKind(err)); ce != nil {
			ce.Write(zap.Stringer("client", cx.RemoteAddr()), zap.String("sni", client.SNI), zap.String("reason", err.Error()), zap.Int64("count", n))
		}
		return nil
	}
	defer b.Release()
	st.stats.AddTotal()
	b.Stats.AddTotal()
	// The PROXY header goes first on the wire, in the same write as the
	// matcher bytes; it is not client data, so tx does not count it.
	hdr := 0
	if h.proxyVer != 0 {
		src, dst := declared, declaredDst
		if !src.IsValid() {
			src, dst = addrPort(cx.RemoteAddr()), addrPort(cx.LocalAddr())
		}
		prefix, hdr = withProxyHeader(prefix, h.proxyVer, src, dst)
		*pb = prefix
	}
	if len(prefix) > 0 {
		if _, err := up.Write(prefix); err != nil {
			up.Close()
			return nil
		}
		if n := int64(len(prefix) - hdr); n > 0 {
			b.Stats.AddTx(n)
			st.stats.AddTx(n)
		}
	}
	// the session may idle for hours: give the buffer back now
	releasePrefix(pb)
	pb = nil
	cnt := counterPool.Get().(*counter)
	cnt.backend, cnt.handler = b.Stats, st.stats
	res := tcpproxy.Proxy(down, up, tcpproxy.Options{
		ClientIdle:  time.Duration(h.ClientIdleTimeout),
		BackendIdle: time.Duration(h.BackendIdleTimeout),
		OnTx:        cnt.onTx,
		OnRx:        cnt.onRx,
	})
	cnt.backend, cnt.handler = nil, nil
	counterPool.Put(cnt)
	h.logAccess(netip.AddrPortFrom(client.IP, client.Port), b, start, res)
	return nil
}

// counter adds a session's bytes to its backend's and its handler's
// counters. It is pooled with its OnTx/OnRx functions made once:
// closures made per connection would cost two allocations.
type counter struct {
	backend, handler *backend.Stats
	onTx, onRx       func(int64)
}

var counterPool = sync.Pool{New: func() any {
	c := new(counter)
	c.onTx = func(n int64) { c.backend.AddTx(n); c.handler.AddTx(n) }
	c.onRx = func(n int64) { c.backend.AddRx(n); c.handler.AddRx(n) }
	return c
}}

// clientPool holds the per-connection election input, which escapes through
// the Balancer interface and would otherwise be allocated per connection.
var clientPool = sync.Pool{New: func() any { return new(balancers.Client) }}

// releaseClient clears c (Match belongs to the handler that used it last)
// and returns it to the pool.
func releaseClient(c *balancers.Client) {
	clear(c.Skip)
	*c = balancers.Client{Skip: c.Skip[:0]}
	clientPool.Put(c)
}

// prefixPool holds the buffers of bytes read before the backend was chosen.
var prefixPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// releasePrefix returns a buffer of prefixPool, if pb is not nil.
func releasePrefix(pb *[]byte) {
	if pb != nil {
		*pb = (*pb)[:0]
		prefixPool.Put(pb)
	}
}

// clientAddr is the client's address for access rules and hashing: the one
// caddy-l4 reports, which after its proxy_protocol handler is the address
// the PROXY header declared.
func clientAddr(a net.Addr) (netip.Addr, uint16) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), ap.Port()
	case *net.UDPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), ap.Port()
	case nil:
		return netip.Addr{}, 0
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, 0
	}
	return ap.Addr().Unmap(), ap.Port()
}

// connect elects a backend and dials it, electing again among the others on
// failure up to retries times. The returned backend has been Acquired.
func (h *Handler) connect(c *balancers.Client) (*backend.Backend, net.Conn, error) {
	st := h.state
	pool := *st.pool.Load()
	if h.sni != nil {
		h.sni.Prepare(c, pool)
	}
	failures := 0
	var lastErr error
	// each loop either dials or skips a backend, so it ends within len(pool)+retries+1 turns
	for range len(pool) + h.retries + 1 {
		b, err := h.balancer.Elect(c, pool)
		if err != nil {
			if lastErr != nil {
				return nil, nil, lastErr
			}
			return nil, nil, h.explain(err, c)
		}
		if !b.Acquire() {
			// filled up between election and now
			c.Skip = append(c.Skip, b)
			continue
		}
		conn, err := h.dialer.DialContext(context.Background(), "tcp", b.Address())
		if err == nil && h.BackendsTLS != nil {
			// a failed handshake is a failed dial: counted, retried elsewhere
			conn, err = h.BackendsTLS.handshake(conn, b)
		}
		if err == nil {
			st.health.DialSucceeded(b.Address())
			return b, conn, nil
		}
		b.Release()
		b.Stats.AddRefused()
		st.health.DialFailed(b.Address())
		if ce, n := st.refusals.check(h.logger, refusedBackendDial); ce != nil {
			ce.Write(zap.String("backend", b.Address()), zap.Error(err), zap.Int64("count", n))
		}
		lastErr = errors.New("dial failed on every tried backend: " + err.Error())
		failures++
		if failures > h.retries {
			break
		}
		c.Skip = append(c.Skip, b)
	}
	if lastErr == nil {
		lastErr = errors.New("no eligible backend")
	}
	return nil, nil, lastErr
}

// explain turns an election error into the reason a client is refused.
func (h *Handler) explain(err error, c *balancers.Client) error {
	switch {
	case errors.Is(err, balancers.ErrNoBackends):
		if h.state.discoveredCount() == 0 {
			return errors.New("no backends discovered")
		}
		return errors.New("no healthy backends")
	case errors.Is(err, balancers.ErrAllFull):
		return errors.New("all eligible backends are at max_connections")
	case errors.Is(err, balancers.ErrNoMatch):
		if c.SNI == "" {
			return errors.New("client sent no SNI and no backend serves clients without one")
		}
		return errors.New("no backend matches SNI " + c.SNI)
	}
	return err
}
