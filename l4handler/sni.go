package l4handler

import (
	"fmt"
	"net"
	"time"

	"github.com/caddy-between/between/balancers"
	"github.com/caddy-between/between/tcpproxy"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// provisionSNI checks the sni settings and builds the handler's filter.
func (h *Handler) provisionSNI() error {
	if h.SNI == nil {
		return nil
	}
	if h.SNI.ReadTimeout < 0 {
		return fmt.Errorf("sni.read_timeout: must not be negative")
	}
	if h.SNI.ReadTimeout == 0 {
		h.SNI.ReadTimeout = caddy.Duration(2 * time.Second)
	}
	f, err := balancers.NewSNIFilter(h.SNI.HostnameMatchingStrategy, h.SNI.UnexpectedHostnameStrategy)
	if err != nil {
		return fmt.Errorf("sni: %w", err)
	}
	h.sni = f
	return nil
}

// peekSNI reads the ClientHello's server name within the read timeout and
// returns it with the bytes read, which must be replayed to the backend.
// Non-TLS clients and timeouts give no name.
func (h *Handler) peekSNI(conn net.Conn) (string, []byte) {
	sni, prefix, err := tcpproxy.PeekClientHello(conn, time.Duration(h.SNI.ReadTimeout))
	if err != nil {
		h.logger.Debug("reading ClientHello failed", zap.Stringer("client", conn.RemoteAddr()), zap.Error(err))
	}
	return sni, prefix
}
