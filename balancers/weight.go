package balancers

import (
	"math/rand/v2"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(new(Weight))
}

// Weight is the default policy: a weighted random choice (RFC 2782) among the
// eligible backends of the lowest-numbered priority group that has one.
//
// A backend with weight 2 gets on average twice the connections of one with
// weight 1 (weights 1 and 3 share 25% / 75%). A backend with weight 0 gets
// connections only when every eligible member of its group has weight 0; then
// they share uniformly. Backends at max_connections, or not matching the
// client's SNI, are left out of the draw.
//
// Caddyfile: `balance weight` (no options). JSON: `{"policy": "weight"}`.
type Weight struct {
	// rand is the random source; nil means math/rand/v2. Tests set it to a
	// seeded generator.
	rand func() uint64

	snap snapshotCache
}

// CaddyModule returns the Caddy module information.
func (*Weight) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.weight",
		New: func() caddy.Module { return new(Weight) },
	}
}

// Elect implements Balancer. When every member is eligible (no
// max_connections, no SNI filter, first try) it draws by binary search over
// the cumulative weights of the pool snapshot: O(log n). Otherwise it scans
// the group twice: O(group size).
func (w *Weight) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	lo, hi, first, err := group(c, pool)
	if err != nil {
		return nil, err
	}
	rnd := w.rand
	if rnd == nil {
		rnd = rand.Uint64
	}
	if si := w.snap.get(pool, false); si.allEligible(c) {
		return pool[drawCumulative(si.cumWeight, lo, hi, rnd)], nil
	}
	if b := weighted(c, pool[first:hi], rnd); b != nil {
		return b, nil
	}
	// every member filled up since group looked
	return nil, ErrAllFull
}

// drawCumulative picks an index in [lo, hi) with probability proportional to
// its weight, given cum[i] = sum of the weights before i; uniformly when the
// group's weights are all 0. A weight-0 member is never picked otherwise,
// because it adds nothing to the running sum.
func drawCumulative(cum []uint64, lo, hi int, rnd func() uint64) int {
	sum := cum[hi] - cum[lo]
	if sum == 0 {
		return lo + int(rnd()%uint64(hi-lo))
	}
	target := cum[lo] + rnd()%sum
	// first i in [lo, hi) with cum[i+1] > target
	i, j := lo, hi-1
	for i < j {
		h := int(uint(i+j) >> 1)
		if cum[h+1] > target {
			j = h
		} else {
			i = h + 1
		}
	}
	return i
}

// weighted picks from group by weight, using rnd as the random source. It
// returns nil when no member of group is eligible.
func weighted(c *Client, group []*backend.Backend, rnd func() uint64) *backend.Backend {
	var sum, count uint64
	for _, b := range group {
		if Eligible(c, b) {
			sum += uint64(max(b.Weight, 0))
			count++
		}
	}
	if count == 0 {
		return nil
	}
	if sum == 0 {
		// every eligible member has weight 0: pick uniformly among them
		return nth(c, group, rnd()%count)
	}
	n := rnd() % sum
	var last *backend.Backend
	for _, b := range group {
		if b.Weight <= 0 || !Eligible(c, b) {
			continue
		}
		last = b
		if n < uint64(b.Weight) {
			return b
		}
		n -= uint64(b.Weight)
	}
	// eligibility changed between the two passes: take the last one seen
	return last
}

// nth returns the k-th (from 0) eligible member of group, or the last eligible
// one when fewer remain (eligibility may change concurrently), or nil.
func nth(c *Client, group []*backend.Backend, k uint64) *backend.Backend {
	var last *backend.Backend
	for _, b := range group {
		if Eligible(c, b) {
			if k == 0 {
				return b
			}
			k--
			last = b
		}
	}
	return last
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance weight`.
func (*Weight) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

// noOptions consumes the policy name and rejects any argument or block.
func noOptions(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	name := d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("balance %s takes no options", name)
	}
	return nil
}

var (
	_ Balancer              = (*Weight)(nil)
	_ caddyfile.Unmarshaler = (*Weight)(nil)
)
