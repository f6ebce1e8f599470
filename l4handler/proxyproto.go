package l4handler

import proxyproto "github.com/pires/go-proxyproto"

func init() {
	// caddy-l4 v0.1.2's proxy_protocol handler computes its allow/fallback
	// policy but never hands it to go-proxyproto, so each connection gets
	// go-proxyproto's DefaultPolicy. Caddy v2.11.9 brings go-proxyproto
	// v0.15.0, whose default became REQUIRE: a client without a PROXY
	// header would get nothing at all, although caddy-l4 documents the
	// header as optional. USE restores the behaviour caddy-l4 was written
	// and tested against (v0.13.0). Only callers that set no policy of
	// their own are affected: Caddy's proxy_protocol listener wrapper sets
	// one on every connection.
	proxyproto.DefaultPolicy = proxyproto.USE
}
