package healthchecks

import (
	"context"
	"fmt"
	"net"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Ping{})
}

// Ping checks that a TCP connection to the backend (or to `port`) can be
// established; the connection is closed at once without sending anything.
// It cannot check UDP servers: use probe with probe_protocol "udp" there.
type Ping struct {
	Common
}

// CaddyModule returns the Caddy module information.
func (Ping) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.healthchecks.ping",
		New: func() caddy.Module { return new(Ping) },
	}
}

// Provision has nothing to prepare; it exists for symmetry with the other kinds.
func (p *Ping) Provision(caddy.Context) error { return nil }

// Validate checks the settings.
func (p *Ping) Validate() error { return p.ValidateCommon() }

// ValidateProtocol rejects UDP servers: a TCP connect says nothing about them.
func (p *Ping) ValidateProtocol(serverProtocol string) error {
	return CheckProtocol("ping", serverProtocol)
}

// Check connects to the backend.
func (p *Ping) Check(ctx context.Context, b *backend.Backend) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", b.Address())
	if err != nil {
		return err
	}
	if err := conn.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// UnmarshalCaddyfile reads
//
//	healthcheck ping {
//		interval 2s
//		timeout 1s
//		fails 3
//		passes 2
//		initial_status unhealthy
//		port 8080
//	}
func (p *Ping) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return p.unmarshalBlock(d, nil)
}

var (
	_ Configured            = (*Ping)(nil)
	_ ProtocolValidator     = (*Ping)(nil)
	_ caddy.Provisioner     = (*Ping)(nil)
	_ caddy.Validator       = (*Ping)(nil)
	_ caddyfile.Unmarshaler = (*Ping)(nil)
)
