package healthchecks

import (
	"strconv"

	"github.com/caddy-between/between/discovery"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCommon parses one of the common subdirectives (interval, timeout,
// fails, passes, initial_status, port) at the dispenser's current token, or
// reports it as unknown.
func (c *Common) UnmarshalCommon(d *caddyfile.Dispenser) error {
	switch name := d.Val(); name {
	case "interval":
		return discovery.DurationArg(d, &c.Interval)
	case "timeout":
		return discovery.DurationArg(d, &c.Timeout)
	case "fails":
		return intArg(d, &c.Fails)
	case "passes":
		return intArg(d, &c.Passes)
	case "port":
		return intArg(d, &c.Port)
	case "initial_status":
		return stringArg(d, &c.InitialStatus)
	default:
		return d.Errf("unknown healthcheck subdirective %q", name)
	}
}

// unmarshalBlock reads a checker's Caddyfile form, the dispenser positioned
// before the kind token: `healthcheck KIND { ... }`. Each subdirective goes
// to own first (nil: the kind has none of its own); what own does not know
// must be a common one.
func (c *Common) unmarshalBlock(d *caddyfile.Dispenser, own func(name string) (known bool, err error)) error {
	d.Next() // kind
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if own != nil {
			known, err := own(d.Val())
			if err != nil {
				return err
			}
			if known {
				continue
			}
		}
		if err := c.UnmarshalCommon(d); err != nil {
			return err
		}
	}
	return nil
}

// stringArg reads the one argument of the current subdirective into dst.
func stringArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.Args(dst) || d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// intArg reads the one integer argument of the current subdirective into dst.
func intArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.ArgErr()
	}
	n, err := parseInts(d, name, args)
	if err != nil {
		return err
	}
	*dst = n[0]
	return nil
}

// parseInts reads integer arguments of the subdirective name.
func parseInts(d *caddyfile.Dispenser, name string, args []string) ([]int, error) {
	out := make([]int, 0, len(args))
	for _, a := range args {
		n, err := strconv.Atoi(a)
		if err != nil {
			return nil, d.Errf("%s %q: want an integer", name, a)
		}
		out = append(out, n)
	}
	return out, nil
}
