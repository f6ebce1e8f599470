package balancers

import (
	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(First))
}

// First is ordered failover: every connection goes to the first eligible
// backend in list order (priority, then address), so one backend takes all
// traffic while it is healthy and under max_connections, and the next one
// takes over otherwise. Use priorities to put the backends in the order you
// want.
//
// Caddyfile: `balance first` (no options). JSON: `{"policy": "first"}`.
type First struct{}

// CaddyModule returns the Caddy module information.
func (*First) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.first",
		New: func() caddy.Module { return new(First) },
	}
}

// Elect implements Balancer. It costs O(number of ineligible backends before
// the chosen one), O(1) when the first backend is eligible.
func (*First) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	_, _, first, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	return pool[first], nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance first`.
func (*First) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*First)(nil)
	_ caddyfile.Unmarshaler = (*First)(nil)
)
