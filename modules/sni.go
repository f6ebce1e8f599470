package modules

import (
	"errors"
	"net"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/balancers"
)

type sniFilter interface {
	Match(c *balancers.Client, b *backend.Backend) bool
}

func (s *Server) provisionSNI() error {
	if s.SNI == nil {
		return nil
	}
	return errors.New("sni: not available yet")
}

func (s *Server) peekSNI(conn net.Conn) (string, []byte) { return "", nil }
