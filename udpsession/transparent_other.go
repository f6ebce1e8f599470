//go:build !linux

package udpsession

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// errTransparentOS is returned on systems without IP_TRANSPARENT.
var errTransparentOS = errors.New("transparent mode needs Linux (IP_TRANSPARENT); it is not available on this operating system")

// DialTransparent opens a UDP socket bound to from (the client's address)
// and connected to to. Transparent sockets need Linux; on this system it
// always returns an error.
func DialTransparent(_ context.Context, from netip.AddrPort, to string) (*net.UDPConn, error) {
	return nil, errTransparentOS
}

// CheckTransparent reports whether this process may open transparent
// sockets. Transparent mode needs Linux; on this system it always returns an
// error.
func CheckTransparent() error {
	return errTransparentOS
}
