package healthchecks

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCommon parses one of the common subdirectives (interval, timeout,
// fails, passes, initial_status, port) at the dispenser's current token, or
// reports it as unknown.
func (c *Common) UnmarshalCommon(d *caddyfile.Dispenser) error {
	name := d.Val()
	var v string
	if !d.Args(&v) {
		return d.ArgErr()
	}
	switch name {
	case "interval", "timeout":
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return d.Errf("%s %q: %v", name, v, err)
		}
		if name == "interval" {
			c.Interval = caddy.Duration(dur)
		} else {
			c.Timeout = caddy.Duration(dur)
		}
	case "fails", "passes", "port":
		n, err := strconv.Atoi(v)
		if err != nil {
			return d.Errf("%s %q: want an integer", name, v)
		}
		switch name {
		case "fails":
			c.Fails = n
		case "passes":
			c.Passes = n
		default:
			c.Port = n
		}
	case "initial_status":
		c.InitialStatus = v
	default:
		return d.Errf("unknown healthcheck subdirective %q", name)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
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

// UnmarshalCaddyfile reads the server's passive health block:
//
//	passive_health {
//		max_fails 3
//		fail_duration 30s
//	}
//
// The dispenser is positioned before the passive_health token.
func (p *Passive) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // passive_health
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		var v string
		if !d.Args(&v) {
			return d.ArgErr()
		}
		switch name {
		case "max_fails":
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("max_fails %q: want an integer", v)
			}
			p.MaxFails = n
		case "fail_duration":
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("fail_duration %q: %v", v, err)
			}
			p.FailDuration = caddy.Duration(dur)
		default:
			return d.Errf("unknown passive_health subdirective %q", name)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
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

var _ caddyfile.Unmarshaler = (*Passive)(nil)
