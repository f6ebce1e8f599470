package balancers

import (
	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(IPHash))
}

// IPHash sends each client IP address to the same backend: the hash of the
// address, modulo the number of eligible backends in the lowest priority group
// that has one, picks the backend (in address order). An IPv4 client hashes the
// same whether it connects over IPv4 or as an IPv4-mapped IPv6 address.
//
// Any change of the eligible set (a backend added, removed, unhealthy or at
// max_connections) re-maps most clients, as in gobetween. Use iphash1 when
// clients should stay put.
//
// Caddyfile: `balance iphash` (no options). JSON: `{"policy": "iphash"}`.
type IPHash struct {
	snap snapshotCache
}

// CaddyModule returns the Caddy module information.
func (*IPHash) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.iphash",
		New: func() caddy.Module { return new(IPHash) },
	}
}

// Elect implements Balancer. It costs O(1) when no backend has
// max_connections, the client has no SNI filter and nothing was tried yet
// (then every member is eligible); otherwise it counts the eligible members:
// O(group size).
func (h *IPHash) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	lo, hi, first, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	sum := clientHash(c.IP, 0, false)
	if h.snap.get(pool, false).allEligible(c) {
		return pool[lo+int(sum%uint64(hi-lo))], nil
	}
	g := pool[first:hi] // members before first are not eligible
	var count uint64
	for _, b := range g {
		if Eligible(c, b) {
			count++
		}
	}
	if count == 0 {
		return nil, ErrAllFull
	}
	if b := nth(c, g, sum%count); b != nil {
		return b, nil
	}
	return nil, ErrAllFull
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance iphash`.
func (*IPHash) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

var (
	_ Balancer              = (*IPHash)(nil)
	_ caddyfile.Unmarshaler = (*IPHash)(nil)
)
