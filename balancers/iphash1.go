package balancers

import (
	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(IPHash1))
}

// IPHash1 keeps each client on its backend with rendezvous (highest random
// weight) hashing: every eligible backend of the lowest priority group that has
// one gets a score from the hash of the client's IP address and the backend's
// host:port, and the highest score wins.
//
// Unlike iphash, a change of the backend set moves only the clients that must
// move: when one backend of ten is removed (or becomes unhealthy, or is at
// max_connections), exactly its clients spread over the other nine, and they
// come back when it returns; all other clients stay where they are. An IPv4
// client hashes the same whether it connects over IPv4 or as an IPv4-mapped
// IPv6 address. Hashes are stable across restarts.
//
// Caddyfile:
//
//	balance iphash1 [{
//		use_port
//	}]
//
// JSON: `{"policy": "iphash1", "use_port": true}`.
type IPHash1 struct {
	// Hash the client's source port together with its IP address, so that
	// the connections of one client spread over the backends (each
	// ip:port still maps to the same backend). Default false.
	UsePort bool `json:"use_port,omitempty"`

	snap snapshotCache
}

// CaddyModule returns the Caddy module information.
func (*IPHash1) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.iphash1",
		New: func() caddy.Module { return new(IPHash1) },
	}
}

// Elect implements Balancer. It scores every member of the group: O(group
// size), a few nanoseconds per member (backend hashes are cached per pool
// snapshot).
func (h *IPHash1) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	_, hi, first, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	key := clientHash(c.IP, c.Port, h.UsePort)
	hashes := h.snap.get(pool, true).addrHash
	var best *backend.Backend
	var bestScore uint64
	for i := first; i < hi; i++ {
		score := mix64(key ^ hashes[i])
		// ties (never seen in practice) go to the first in address order
		if best != nil && score <= bestScore {
			continue
		}
		if b := pool[i]; Eligible(c, b) {
			best, bestScore = b, score
		}
	}
	if best == nil {
		// every member filled up since group looked
		return nil, ErrAllFull
	}
	return best, nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
// `balance iphash1 [{ use_port }]`.
func (h *IPHash1) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "use_port":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.UsePort = true
		default:
			return d.Errf("balance iphash1: unknown option %q (want use_port)", d.Val())
		}
	}
	return nil
}

var (
	_ Balancer              = (*IPHash1)(nil)
	_ caddyfile.Unmarshaler = (*IPHash1)(nil)
)
