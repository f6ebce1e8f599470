package balancers

import (
	"math/rand/v2"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Weight{})
}

// Weight is the default policy: RFC 2782 weighted random choice within the
// lowest-numbered priority group that has an eligible backend. A backend with
// weight 2 gets twice the connections of one with weight 1; weight 0 is chosen
// only when every eligible member of the group has weight 0 (then uniformly).
type Weight struct{}

// CaddyModule returns the Caddy module information.
func (Weight) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.balancers.weight",
		New: func() caddy.Module { return new(Weight) },
	}
}

// Elect implements Balancer.
func (Weight) Elect(c *Client, pool []*backend.Backend) (*backend.Backend, error) {
	lo, hi, err := Group(c, pool)
	if err != nil {
		return nil, err
	}
	return weighted(c, pool[lo:hi], rand.Uint64), nil
}

// weighted picks from group by weight, using rnd as the random source. group
// has at least one eligible member.
func weighted(c *Client, group []*backend.Backend, rnd func() uint64) *backend.Backend {
	var sum, count uint64
	for _, b := range group {
		if Eligible(c, b) {
			sum += uint64(b.Weight)
			count++
		}
	}
	if sum == 0 {
		// every eligible member has weight 0: pick uniformly among them
		n := rnd() % count
		for _, b := range group {
			if Eligible(c, b) {
				if n == 0 {
					return b
				}
				n--
			}
		}
	}
	n := rnd() % sum
	var last *backend.Backend
	for _, b := range group {
		if !Eligible(c, b) || b.Weight == 0 {
			continue
		}
		last = b
		if n < uint64(b.Weight) {
			return b
		}
		n -= uint64(b.Weight)
	}
	// a concurrent change of eligibility between the two passes: take the last seen
	if last != nil {
		return last
	}
	return group[0]
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens: `balance weight`.
func (*Weight) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d)
}

// noOptions consumes the policy name and rejects any argument or block.
func noOptions(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("balance %s takes no options", d.Val())
	}
	return nil
}

var (
	_ Balancer              = (*Weight)(nil)
	_ caddyfile.Unmarshaler = (*Weight)(nil)
)
