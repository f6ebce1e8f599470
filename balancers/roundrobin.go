package balancers

import (
	"sync/atomic"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(RoundRobin))
}

// RoundRobin hands connections to the eligible backends of the lowest priority
// group in turn, in the stable order of their addresses. The position is one
// atomic counter, so it is fair under concurrency and unaffected by unrelated
// pool changes.
type RoundRobin struct {
	next atomic.Uint64
}

// CaddyModule returns the Caddy module information.
func (*RoundRobin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.roundrobin",
		New: func() caddy.Module { return new(RoundRobin) },
	}
}

// Elect implements Balancer.
func (r *RoundRobin) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	lo, hi, err := Group(c, pool)
	if err != nil {
		return nil, err
	}
	group := pool[lo:hi]
	n := uint64(len(group))
	start := r.next.Add(1) - 1
	for i := uint64(0); i < n; i++ {
		b := group[(start+i)%n]
		if Eligible(c, b) {
			return b, nil
		}
	}
	return group[start%n], nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance roundrobin`.
func (*RoundRobin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*RoundRobin)(nil)
	_ caddyfile.Unmarshaler = (*RoundRobin)(nil)
)
