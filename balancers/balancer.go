// Package balancers holds Between's load-balancing policies. Each policy is a
// Caddy module in the namespace between.balancers (inline key "policy") that
// implements Balancer. The election core (Client, Group, Eligible, SNIFilter)
// has no Caddy dependency beyond module registration.
package balancers

import (
	"errors"
	"net/netip"

	"github.com/caddy-between/between/backend"
)

// Balancer picks one backend for a client connection.
//
// pool is the server's current snapshot of discovered, healthy, not drained
// backends, sorted by (Priority, Address) and never modified: policies must not
// write to it, and may cache facts about a snapshot (keyed by its backing
// array) because a snapshot never changes. Elect must be safe for concurrent
// use and must not allocate on the common path. It honours priority groups,
// MaxConnections and the client's Match filter through Group and Eligible.
type Balancer interface {
	Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error)
}

// Client describes the connection being balanced.
type Client struct {
	// IP is the client's address (unmapped: ::ffff:1.2.3.4 is 1.2.3.4).
	IP netip.Addr
	// Port is the client's source port.
	Port uint16
	// SNI is the TLS server name the client asked for, if any.
	SNI string
	// Match, when set, restricts the backends this client may use (the server's
	// sni filter). It is set once per server, not per connection, and must not
	// allocate. SNIFilter.Prepare sets it when it is nil.
	Match func(c *Client, b *backend.Backend) bool
	// Skip lists backends already tried for this connection (retries).
	Skip []*backend.Backend

	// Per-connection decision of SNIFilter.Prepare, read by SNIFilter.Match.
	sniMode   uint8
	sniHit    string     // the sni value of a backend known to match SNI
	sniFilter *SNIFilter // the filter Prepare installed as Match
}

// Reasons Elect fails, so that the server can log why a client was refused.
var (
	// ErrNoBackends: the pool is empty (nothing discovered, or nothing healthy).
	ErrNoBackends = errors.New("no backends available")
	// ErrAllFull: backends match, but every one is at max_connections (or was already tried).
	ErrAllFull = errors.New("all matching backends are at max_connections")
	// ErrNoMatch: no backend matches the client's SNI.
	ErrNoMatch = errors.New("no backend matches the client's SNI")
)

// Eligible reports whether b may take c now: it matches c, has not been tried
// for c, and is under its MaxConnections.
func Eligible(c *Client, b *backend.Backend) bool {
	if c.Match != nil && !c.Match(c, b) {
		return false
	}
	return available(c, b)
}

// available is Eligible without the Match filter.
func available(c *Client, b *backend.Backend) bool {
	for _, s := range c.Skip {
		if s == b {
			return false
		}
	}
	return !b.Full()
}

// Group returns the bounds [lo, hi) of the first priority group of pool (which
// is sorted by priority) that has an eligible member for c. When none has, it
// returns the reason as ErrNoBackends, ErrNoMatch or ErrAllFull.
func Group(c *Client, pool []*backend.Backend) (lo, hi int, err error) {
	lo, hi, _, err = group(c, pool)
	return lo, hi, err
}

// group is Group that also returns the index of the group's first eligible
// member. It stops at that member, and finds the group's end by binary
// search, so it costs O(log n) when the first member is eligible.
func group(c *Client, pool []*backend.Backend) (lo, hi, first int, err error) {
	if len(pool) == 0 {
		return 0, 0, 0, ErrNoBackends
	}
	matched := false
	for lo < len(pool) {
		hi = groupEnd(pool, lo)
		for i := lo; i < hi; i++ {
			b := pool[i]
			if c.Match != nil && !c.Match(c, b) {
				continue
			}
			matched = true
			if available(c, b) {
				return lo, hi, i, nil
			}
		}
		lo = hi
	}
	if !matched {
		return 0, 0, 0, ErrNoMatch
	}
	return 0, 0, 0, ErrAllFull
}

// groupEnd returns the index just past the priority group that starts at lo.
func groupEnd(pool []*backend.Backend, lo int) int {
	prio := pool[lo].Priority
	i, j := lo+1, len(pool)
	for i < j {
		h := int(uint(i+j) >> 1)
		if pool[h].Priority <= prio {
			i = h + 1
		} else {
			j = h
		}
	}
	return i
}
