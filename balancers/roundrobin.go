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

// RoundRobin hands connections to the eligible backends of the lowest
// priority group in turn, in the stable order of their addresses.
//
// The turn is one shared position that only moves forward: each connection
// takes the next eligible backend at or after it and moves the position just
// past that backend. So with backends A, B, C where B is at max_connections,
// clients get A, C, A, C, ... (an exact cycle over the eligible ones, never C
// twice in a row), concurrent clients never get the same turn, and the cycle
// continues where it was when the backend list changes. A retry after a
// failed dial takes the next eligible backend without a turn of its own, so
// a dead backend gets its share of first tries, not every one.
//
// Caddyfile: `balance roundrobin` (no options). JSON: `{"policy": "roundrobin"}`.
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

// Elect implements Balancer. It costs O(1) when the backend at the position
// is eligible, else O(distance to the next eligible one).
func (r *RoundRobin) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	lo, hi, _, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	g := pool[lo:hi]
	n := uint64(len(g))
	if len(c.Skip) > 0 {
		// A retry after a failed dial does not take a turn: the turn went
		// to the backend that failed. Moving the position again would hand
		// the next client the failed backend first, every time.
		i := r.next.Load() % n
		for range n {
			if b := g[i]; Eligible(c, b) {
				return b, nil
			}
			if i++; i == n {
				i = 0
			}
		}
		return nil, ErrAllFull
	}
retry:
	for {
		p := r.next.Load()
		i := p % n
		for step := uint64(0); step < n; step++ {
			b := g[i]
			if Eligible(c, b) {
				if r.next.CompareAndSwap(p, p+step+1) {
					return b, nil
				}
				// another client took this turn: look again from the new position
				continue retry
			}
			if i++; i == n {
				i = 0
			}
		}
		// every member filled up since group looked
		return nil, ErrAllFull
	}
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance roundrobin`.
func (*RoundRobin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*RoundRobin)(nil)
	_ caddyfile.Unmarshaler = (*RoundRobin)(nil)
)
