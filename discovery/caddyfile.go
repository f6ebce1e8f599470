package discovery

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCommon parses one of the common subdirectives (interval, timeout,
// failpolicy) at the dispenser's current token, or reports it as unknown.
func (c *Common) UnmarshalCommon(d *caddyfile.Dispenser) error {
	name := d.Val()
	switch name {
	case "interval", "timeout":
		var v string
		if !d.Args(&v) {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return d.Errf("%s %q: %v", name, v, err)
		}
		if name == "interval" {
			c.Interval = caddy.Duration(dur)
		} else {
			c.Timeout = caddy.Duration(dur)
		}
	case "failpolicy":
		if !d.Args(&c.FailPolicy) {
			return d.ArgErr()
		}
	default:
		return d.Errf("unknown discovery subdirective %q", name)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}
