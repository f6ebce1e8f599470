//go:build linux

package udpsession

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DialTransparent opens a UDP socket bound to from (the client's address)
// with IP_TRANSPARENT (IPV6_TRANSPARENT for IPv6), IP_FREEBIND
// (IPV6_FREEBIND) and SO_REUSEADDR, connected to to ("host:port").
//
// The backend then sees the client's address as the datagram's source. Its
// replies come back to the client's address, so the proxy host needs policy
// routing that delivers them locally (ip rule + "ip route add local
// 0.0.0.0/0 dev lo table N"); the socket then receives them. The process
// needs CAP_NET_ADMIN (see CheckTransparent). An IPv4-mapped IPv6 from is
// unmapped, and to is dialed in from's address family.
func DialTransparent(ctx context.Context, from netip.AddrPort, to string) (*net.UDPConn, error) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if !from.Addr().IsValid() {
		return nil, fmt.Errorf("transparent dial %s: invalid client address %s", to, from)
	}
	network := "udp4"
	if from.Addr().Is6() {
		network = "udp6"
	}
	var optErr error
	d := net.Dialer{
		LocalAddr: net.UDPAddrFromAddrPort(from),
		Control: func(_, _ string, rc syscall.RawConn) error {
			if err := rc.Control(func(fd uintptr) {
				optErr = setTransparent(int(fd), from)
			}); err != nil {
				return err
			}
			return optErr
		},
	}
	c, err := d.DialContext(ctx, network, to)
	if err != nil {
		if optErr != nil {
			// The option error already names the address and option.
			return nil, optErr
		}
		return nil, fmt.Errorf("transparent dial from %s to %s: %w", from, to, err)
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("transparent dial from %s to %s: unexpected %T", from, to, c)
	}
	return uc, nil
}

// sockopt is one socket option DialTransparent sets.
type sockopt struct {
	level, opt int
	name       string
}

var (
	optsV4 = []sockopt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"},
		{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"},
		{unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND"},
	}
	optsV6 = []sockopt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"},
		{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"},
		{unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND"},
	}
)

// setTransparent sets the options that let fd bind to from, an address
// that is not local to this host.
func setTransparent(fd int, from netip.AddrPort) error {
	opts := optsV4
	if from.Addr().Is6() {
		opts = optsV6
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, 1); err != nil {
			return sockoptError(o.name, from, err)
		}
	}
	return nil
}

// sockoptError names the option and address; a permission error says which
// capability is missing.
func sockoptError(name string, from netip.AddrPort, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("transparent socket for %s: setsockopt %s: %w (needs CAP_NET_ADMIN: run as root or `setcap cap_net_admin+ep` on the binary)",
			from, name, err)
	}
	return fmt.Errorf("transparent socket for %s: setsockopt %s: %w", from, name, err)
}

// CheckTransparent reports whether this process may open transparent
// sockets, which needs CAP_NET_ADMIN. It returns nil, or an error saying
// what is missing and how to fix it. It tries IP_TRANSPARENT on a throwaway
// socket, so it answers for the process's effective capabilities, including
// those of a user namespace.
func CheckTransparent() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	family := "IPv4"
	level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
	if err != nil {
		// An IPv6-only host still can run transparent mode for IPv6.
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("transparent mode check: open UDP socket: %w", os.NewSyscallError("socket", err))
		}
		family = "IPv6"
		level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("transparent mode needs CAP_NET_ADMIN, which this process lacks (setsockopt %s: %w): run Caddy as root or grant it with `setcap cap_net_admin+ep /path/to/caddy` (systemd: AmbientCapabilities=CAP_NET_ADMIN)",
				name, err)
		}
		return fmt.Errorf("transparent mode check: setsockopt %s on an %s socket: %w", name, family, err)
	}
	return nil
}
