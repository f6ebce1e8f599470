// Package between is a Caddy plugin that makes Caddy a Layer 4 load balancer
// with gobetween's feature set: the `between` app (TCP servers with discovery,
// health checks and balancing policies), configured by JSON or the Caddyfile
// `between` global option. Importing this package registers every module:
//
//	xcaddy build --with github.com/caddy-between/between
package between

import (
	// every Between module registers itself in init
	_ "github.com/caddy-between/between/balancers"
	_ "github.com/caddy-between/between/caddyfile"
	_ "github.com/caddy-between/between/discovery"
	_ "github.com/caddy-between/between/healthchecks"
	_ "github.com/caddy-between/between/modules"
)
