// Package between is a Caddy plugin that extends caddy-l4 (Caddy's `layer4`
// app) into a Layer 4 load balancer with gobetween's feature set: the
// `between` layer4 handler (discovery, health checks, balancing policies,
// zero-copy proxying), the `between+tcp` network type whose sockets survive
// reloads, and the `/between/` admin endpoints. Importing this package
// registers every Between module and caddy-l4 with its standard modules:
//
//	xcaddy build --with github.com/caddy-between/between
package between

import (
	// caddy-l4: the layer4 app, its matchers and handlers
	_ "github.com/mholt/caddy-l4"

	// every Between module registers itself in init
	_ "github.com/caddy-between/between/balancers"
	_ "github.com/caddy-between/between/configload"
	_ "github.com/caddy-between/between/discovery"
	_ "github.com/caddy-between/between/gobetween"
	_ "github.com/caddy-between/between/healthchecks"
	_ "github.com/caddy-between/between/httpupstreams"
	_ "github.com/caddy-between/between/l4handler"
	_ "github.com/caddy-between/between/lbcmd"
	_ "github.com/caddy-between/between/listeners"
	_ "github.com/caddy-between/between/sharedstorage"
)
