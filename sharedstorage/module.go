package sharedstorage

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// pool holds the engine clients and the locks they hold, keyed by the
// module's settings, so that a config reload with unchanged storage
// settings keeps its connection and its locks.
var pool = caddy.NewUsagePool()

// durationOr returns d, or def when d is 0.
func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// parseDuration reads the one argument of the current Caddyfile option as a
// Caddy duration into dst.
func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if !d.Args(&s) || d.NextArg() {
		return d.ArgErr()
	}
	v, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s %q: %v", name, s, err)
	}
	*dst = caddy.Duration(v)
	return nil
}
