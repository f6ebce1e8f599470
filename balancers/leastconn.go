package balancers

import (
	"math/rand/v2"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(LeastConn))
}

// LeastConn sends each connection to the eligible backend of the lowest
// priority group that has the fewest open connections; among equally loaded
// backends it picks at random, so no backend is favoured by its place in the
// list. A connection counts as open from the moment it is handed to a backend.
//
// Caddyfile: `balance leastconn` (no options). JSON: `{"policy": "leastconn"}`.
type LeastConn struct {
	// rand is the random source; nil means math/rand/v2. Tests set it to a
	// seeded generator.
	rand func() uint64
}

// CaddyModule returns the Caddy module information.
func (*LeastConn) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.leastconn",
		New: func() caddy.Module { return new(LeastConn) },
	}
}

// Elect implements Balancer. It looks at every member of the group: O(group size).
func (l *LeastConn) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	return least(c, pool, l.rand, activeLoad)
}

func activeLoad(b *backend.Backend) uint64 { return uint64(max(b.Stats.Active(), 0)) }

// least returns an eligible member of the first usable priority group with
// the lowest load, choosing uniformly among ties (reservoir sampling).
func least(c *Client, pool []*backend.Backend, src func() uint64, load func(*backend.Backend) uint64) (*backend.Backend, error) {
	_, hi, first, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	if src == nil {
		src = rand.Uint64
	}
	r := rng{s: src()}
	var best *backend.Backend
	var bestLoad, ties uint64
	for _, b := range pool[first:hi] {
		if !Eligible(c, b) {
			continue
		}
		switch n := load(b); {
		case best == nil || n < bestLoad:
			best, bestLoad, ties = b, n, 1
		case n == bestLoad:
			ties++
			if r.below(ties) == 0 {
				best = b
			}
		}
	}
	if best == nil {
		// every member filled up since group looked
		return nil, ErrAllFull
	}
	return best, nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance leastconn`.
func (*LeastConn) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*LeastConn)(nil)
	_ caddyfile.Unmarshaler = (*LeastConn)(nil)
)
