package balancers

import (
	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(LeastBandwidth))
}

// LeastBandwidth sends each connection to the eligible backend of the lowest
// priority group that currently moves the fewest bytes per second (received
// plus sent, averaged over the last two seconds at most); among equally loaded
// backends it picks at random. New backends and idle ones (rate 0) are
// therefore preferred until traffic shows up on them.
//
// Caddyfile: `balance leastbandwidth` (no options). JSON: `{"policy": "leastbandwidth"}`.
type LeastBandwidth struct {
	// rand is the random source; nil means math/rand/v2. Tests set it to a
	// seeded generator.
	rand func() uint64
}

// CaddyModule returns the Caddy module information.
func (*LeastBandwidth) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.leastbandwidth",
		New: func() caddy.Module { return new(LeastBandwidth) },
	}
}

// Elect implements Balancer. It looks at every member of the group: O(group size).
func (l *LeastBandwidth) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	return least(c, pool, l.rand, rateLoad)
}

func rateLoad(b *backend.Backend) uint64 { return b.Stats.RateSum() }

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance leastbandwidth`.
func (*LeastBandwidth) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*LeastBandwidth)(nil)
	_ caddyfile.Unmarshaler = (*LeastBandwidth)(nil)
)
