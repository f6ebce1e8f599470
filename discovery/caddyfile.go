package discovery

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCommon parses one of the common subdirectives (interval, timeout,
// failpolicy) at the dispenser's current token, or reports it as unknown.
func (c *Common) UnmarshalCommon(d *caddyfile.Dispenser) error {
	switch name := d.Val(); name {
	case "interval":
		return DurationArg(d, &c.Interval)
	case "timeout":
		return DurationArg(d, &c.Timeout)
	case "failpolicy":
		if !d.Args(&c.FailPolicy) || d.NextArg() {
			return d.ArgErr()
		}
		return nil
	default:
		return d.Errf("unknown discovery subdirective %q", name)
	}
}

// DurationArg reads the one argument of the subdirective at the dispenser's
// current token into dst, in Caddy's duration syntax ("500ms", "2s", "1d").
// It is the Caddyfile duration parser of every Between module: discovery's
// and the health checks' interval and timeout.
func DurationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var v string
	if !d.Args(&v) || d.NextArg() {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s %q: %v", name, v, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}
