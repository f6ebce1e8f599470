package modules

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/tcpproxy"
	"go.uber.org/zap"
)

// serveTCP handles one client connection from accept to close.
func (s *Server) serveTCP(conn net.Conn) {
	st := s.state
	client := balancers.Client{}
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		client.IP, client.Port = ap.Addr().Unmap(), ap.Port()
	}
	if !s.Access.allowed(client.IP) {
		st.stats.AddRefused()
		s.logger.Debug("client denied by access rules", zap.Stringer("client", conn.RemoteAddr()))
		conn.Close()
		return
	}
	if !s.admit() {
		st.stats.AddRefused()
		s.logger.Warn("client refused: server at max_connections", zap.Stringer("client", conn.RemoteAddr()), zap.Int("max_connections", s.MaxConnections))
		conn.Close()
		return
	}
	defer st.stats.AddActive(-1)
	if s.DrainTimeout > 0 {
		// only a drain_timeout ever closes connections from outside
		st.conns.Store(conn, struct{}{})
		defer st.conns.Delete(conn)
	}

	var prefix []byte
	if s.sniFilter != nil {
		client.SNI, prefix = s.peekSNI(conn)
	}

	st.awaitDiscovery()
	b, bconn, err := s.connect(&client)
	if err != nil {
		st.stats.AddRefused()
		s.logger.Warn("client refused", zap.Stringer("client", conn.RemoteAddr()), zap.String("sni", client.SNI), zap.String("reason", err.Error()))
		conn.Close()
		return
	}
	defer b.Release()
	st.stats.AddTotal()
	b.Stats.AddTotal()
	if len(prefix) > 0 {
		if _, err := bconn.Write(prefix); err != nil {
			conn.Close()
			bconn.Close()
			return
		}
		b.Stats.AddTx(int64(len(prefix)))
		st.stats.AddTx(int64(len(prefix)))
	}
	res := tcpproxy.Proxy(conn, bconn, tcpproxy.Options{
		ClientIdle:  time.Duration(s.ClientIdleTimeout),
		BackendIdle: time.Duration(s.BackendIdleTimeout),
		OnTx:        func(n int64) { b.Stats.AddTx(n); st.stats.AddTx(n) },
		OnRx:        func(n int64) { b.Stats.AddRx(n); st.stats.AddRx(n) },
	})
	if ce := s.logger.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.Stringer("client", conn.RemoteAddr()), zap.String("backend", b.Address()),
			zap.Int64("tx", res.Tx), zap.Int64("rx", res.Rx), zap.Bool("idle_timeout", res.Idle), zap.Error(res.Err))
	}
}

// admit counts the client as active, honouring the server's max_connections.
func (s *Server) admit() bool {
	return s.state.stats.TryAddActive(int64(s.MaxConnections))
}

// connect elects a backend and dials it, electing again among the others on
// failure up to retries times. The returned backend has been Acquired.
func (s *Server) connect(c *balancers.Client) (*backend.Backend, net.Conn, error) {
	st := s.state
	pool := *st.pool.Load()
	if s.sniFilter != nil {
		s.sniFilter.Prepare(c, pool)
	}
	failures := 0
	var lastErr error
	// each loop either dials or skips a backend, so it ends within len(pool)+retries+1 turns
	for range len(pool) + s.retries + 1 {
		b, err := s.balancer.Elect(c, pool)
		if err != nil {
			if lastErr != nil {
				return nil, nil, lastErr
			}
			return nil, nil, s.explain(err, c)
		}
		if !b.Acquire() {
			// filled up between election and now
			c.Skip = append(c.Skip, b)
			continue
		}
		conn, err := s.dial(b)
		if err == nil {
			st.health.DialSucceeded(b.Address())
			return b, conn, nil
		}
		b.Release()
		b.Stats.AddRefused()
		st.health.DialFailed(b.Address())
		s.logger.Warn("backend dial failed", zap.String("backend", b.Address()), zap.Error(err))
		lastErr = errors.New("dial failed on every tried backend: " + err.Error())
		failures++
		if failures > s.retries {
			break
		}
		c.Skip = append(c.Skip, b)
	}
	if lastErr == nil {
		lastErr = errors.New("no eligible backend")
	}
	return nil, nil, lastErr
}

func (s *Server) dial(b *backend.Backend) (net.Conn, error) {
	return s.dialer.DialContext(context.Background(), "tcp", b.Address())
}

// explain turns an election error into the reason a client is refused.
func (s *Server) explain(err error, c *balancers.Client) error {
	switch {
	case errors.Is(err, balancers.ErrNoBackends):
		if s.state.discoveredCount() == 0 {
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
