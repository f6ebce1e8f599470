package discovery

import (
	"context"
	"fmt"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Static{})
}

// Static is a fixed list of backends written in the config, one gobetween
// backend line each: "host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]".
type Static struct {
	Common
	// The backend lines.
	StaticList []string `json:"static_list,omitempty"`

	parsed []backend.Backend
}

// CaddyModule returns the Caddy module information.
func (Static) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.static",
		New: func() caddy.Module { return new(Static) },
	}
}

// Provision parses the list.
func (s *Static) Provision(caddy.Context) error {
	s.parsed = s.parsed[:0]
	seen := make(map[string]bool, len(s.StaticList))
	for i, line := range s.StaticList {
		b, err := backend.Parse(line)
		if err != nil {
			return fmt.Errorf("static_list[%d]: %w", i, err)
		}
		if seen[b.Address()] {
			return fmt.Errorf("static_list[%d]: backend %s listed twice", i, b.Address())
		}
		seen[b.Address()] = true
		s.parsed = append(s.parsed, b)
	}
	return nil
}

// Validate checks the settings.
func (s *Static) Validate() error {
	if len(s.StaticList) == 0 {
		return fmt.Errorf("static_list: at least one backend is required")
	}
	return s.ValidateCommon()
}

// Fetch returns the configured list.
func (s *Static) Fetch(context.Context) ([]backend.Backend, error) {
	out := make([]backend.Backend, len(s.parsed))
	copy(out, s.parsed)
	return out, nil
}

// UnmarshalCaddyfile reads
//
//	discovery static HOST:PORT [HOST:PORT ...]
//	discovery static {
//		list "HOST:PORT weight=2" ...
//		interval, timeout, failpolicy
//	}
//
// Backend attributes need quotes so the line stays one argument.
func (s *Static) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	s.StaticList = append(s.StaticList, d.RemainingArgs()...)
	// The nesting must be taken once: d.Nesting() grows inside the block,
	// and NextBlock with the inner level ends the loop after one line.
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "list", "static_list":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			s.StaticList = append(s.StaticList, args...)
		default:
			if err := s.UnmarshalCommon(d); err != nil {
				return err
			}
		}
	}
	// a bad line fails `caddy adapt` already, with its position
	for _, line := range s.StaticList {
		if _, err := backend.Parse(line); err != nil {
			return d.Errf("discovery static: %v", err)
		}
	}
	return nil
}

var (
	_ Configured            = (*Static)(nil)
	_ caddy.Provisioner     = (*Static)(nil)
	_ caddy.Validator       = (*Static)(nil)
	_ caddyfile.Unmarshaler = (*Static)(nil)
)
