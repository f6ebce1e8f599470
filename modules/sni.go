package modules

import (
	"fmt"

	"github.com/caddy-between/between/balancers"
	"github.com/caddyserver/caddy/v2"
	"net"
	"time"

	"github.com/caddy-between/between/tcpproxy"
	"go.uber.org/zap"
)

// provisionSNI checks the sni settings and builds the server's filter.
func (s *Server) provisionSNI() error {
	if s.SNI == nil {
		return nil
	}
	if s.SNI.ReadTimeout < 0 {
		return fmt.Errorf("sni.read_timeout: must not be negative")
	}
	if s.SNI.ReadTimeout == 0 {
		s.SNI.ReadTimeout = caddy.Duration(2 * time.Second)
	}
	f, err := balancers.NewSNIFilter(s.SNI.HostnameMatchingStrategy, s.SNI.UnexpectedHostnameStrategy)
	if err != nil {
		return fmt.Errorf("sni: %w", err)
	}
	s.sniFilter = f
	return nil
}

// peekSNI reads the ClientHello's server name within the read timeout and
// returns it with the bytes read, which must be replayed to the backend.
// Non-TLS clients and timeouts give no name.
func (s *Server) peekSNI(conn net.Conn) (string, []byte) {
	sni, prefix, err := tcpproxy.PeekClientHello(conn, time.Duration(s.SNI.ReadTimeout))
	if err != nil {
		s.logger.Debug("reading ClientHello failed", zap.Stringer("client", conn.RemoteAddr()), zap.Error(err))
	}
	return sni, prefix
}
