// Command caddy is Caddy with its standard modules plus Between: the binary
// that `xcaddy build --with github.com/caddy-between/between` produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-between/between"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
