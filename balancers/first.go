package balancers

import (
	"slices"
	"sync/atomic"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(First))
}

// First is ordered failover: every connection goes to the first eligible
// backend in the order discovery lists them (within the lowest priority group
// that has an eligible member), so one backend takes all traffic while it is
// healthy and under max_connections, and the next one in the list takes over
// otherwise. With `discovery static A B C`, A serves while it can, then B,
// then C.
//
// Caddyfile: `balance first` (no options). JSON: `{"policy": "first"}`.
type First struct {
	order atomic.Pointer[listOrder]
}

// listOrder is the pool of one snapshot in (priority, list position) order.
type listOrder struct {
	key **backend.Backend // &pool[0]: identifies the snapshot and keeps it alive
	n   int
	idx []int
}

// CaddyModule returns the Caddy module information.
func (*First) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.first",
		New: func() caddy.Module { return new(First) },
	}
}

// Elect implements Balancer. It costs O(number of ineligible backends before
// the chosen one); a new pool snapshot costs one sort, once.
func (f *First) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	if len(pool) == 0 {
		return nil, ErrNoBackends
	}
	for _, i := range f.sorted(pool).idx {
		b := pool[i]
		if (c.Match == nil || c.Match(c, b)) && available(c, b) {
			return b, nil
		}
	}
	_, _, _, err := group(c, pool)
	if err == nil {
		err = ErrAllFull // eligibility changed under us: treat as full
	}
	return nil, err
}

// sorted returns the list order of pool, computing it once per snapshot.
func (f *First) sorted(pool []*backend.Backend) *listOrder {
	if lo := f.order.Load(); lo != nil && lo.key == &pool[0] && lo.n == len(pool) {
		return lo
	}
	lo := &listOrder{key: &pool[0], n: len(pool), idx: make([]int, len(pool))}
	for i := range lo.idx {
		lo.idx[i] = i
	}
	slices.SortStableFunc(lo.idx, func(a, b int) int {
		pa, pb := pool[a], pool[b]
		if pa.Priority != pb.Priority {
			return pa.Priority - pb.Priority
		}
		return pa.Order - pb.Order
	})
	f.order.Store(lo)
	return lo
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance first`.
func (*First) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*First)(nil)
	_ caddyfile.Unmarshaler = (*First)(nil)
)
