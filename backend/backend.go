// Package backend holds Between's model of one upstream server: its address,
// the gobetween attributes (weight, priority, max_connections, sni), the parser
// for gobetween backend lines, and live traffic statistics. It has no Caddy
// dependency so that other front ends can reuse it.
package backend

import (
	"net"
	"net/netip"
	"strconv"
)

// Backend is one upstream server. Its identity is Host:Port; two backends with
// the same identity are the same server even if their attributes differ.
type Backend struct {
	// Host is an IP address or a DNS name, without brackets for IPv6.
	Host string
	// Port is the numeric port as text.
	Port string
	// Weight is the share of traffic in the weight policy. Default 1; 0 means
	// "only when every other member of the priority group has weight 0".
	Weight int
	// Priority groups backends; the group with the lowest number that has an
	// eligible member serves. Default 1.
	Priority int
	// MaxConnections caps the backend's concurrent connections; 0 = unlimited.
	MaxConnections int
	// SNI is the TLS server name this backend serves, used by the sni filter.
	SNI string
	// Order is the backend's position in its discovery result (0 = first
	// listed), for policies that follow list order (first).
	Order int
	// Stats are the live counters of this backend. Nil for a Backend that was
	// only parsed; the server that uses it attaches shared Stats.
	Stats *Stats

	addr    string         // Address, cached by Freeze
	ap      netip.AddrPort // Host and Port when Host is an IP literal, cached by Freeze
	udpAddr *net.UDPAddr   // ap as a *net.UDPAddr, cached by Freeze
}

// Address returns the backend's identity, "host:port" (IPv6 hosts bracketed).
func (b *Backend) Address() string {
	if b.addr != "" {
		return b.addr
	}
	return net.JoinHostPort(b.Host, b.Port)
}

// Freeze caches the backend's address, so that Address does not allocate on
// the connection path, and, when Host is an IP literal, its parsed form for
// AddrPort and UDPAddr. Call it once the backend's Host and Port are final,
// before other goroutines read it.
func (b *Backend) Freeze() {
	b.addr = net.JoinHostPort(b.Host, b.Port)
	b.ap, b.udpAddr = netip.AddrPort{}, nil
	ip, err := netip.ParseAddr(b.Host)
	if err != nil {
		return // a name: dial it by Address, which resolves it
	}
	port, err := strconv.ParseUint(b.Port, 10, 16)
	if err != nil {
		return
	}
	b.ap = netip.AddrPortFrom(ip, uint16(port))
	b.udpAddr = net.UDPAddrFromAddrPort(b.ap)
}

// AddrPort returns the backend's address parsed, cached by Freeze; ok is
// false when Host is not an IP literal (a name to resolve) or the backend
// was not frozen.
func (b *Backend) AddrPort() (ap netip.AddrPort, ok bool) {
	return b.ap, b.ap.IsValid()
}

// UDPAddr returns the backend's address as a *net.UDPAddr, cached by Freeze,
// so that a UDP socket can be dialled without parsing or resolving
// (net.DialUDP); nil when Host is not an IP literal or the backend was not
// frozen. The value is shared: callers must not modify it.
func (b *Backend) UDPAddr() *net.UDPAddr {
	return b.udpAddr
}

// String returns the backend in gobetween line form, the inverse of Parse.
func (b *Backend) String() string {
	s := b.Address()
	if b.Weight != 1 {
		s += " weight=" + strconv.Itoa(b.Weight)
	}
	if b.Priority != 1 {
		s += " priority=" + strconv.Itoa(b.Priority)
	}
	if b.MaxConnections != 0 {
		s += " max_connections=" + strconv.Itoa(b.MaxConnections)
	}
	if b.SNI != "" {
		s += " sni=" + b.SNI
	}
	return s
}

// SameAttributes reports whether b and o have the same identity, attributes
// and list position (ignoring Stats).
func (b *Backend) SameAttributes(o *Backend) bool {
	return b.Host == o.Host && b.Port == o.Port && b.Weight == o.Weight &&
		b.Priority == o.Priority && b.MaxConnections == o.MaxConnections && b.SNI == o.SNI &&
		b.Order == o.Order
}

// Acquire counts a new connection to b, honouring MaxConnections atomically:
// it returns false (and changes nothing) when b is full. Every successful
// Acquire must be paired with Release.
func (b *Backend) Acquire() bool { return b.Stats.TryAddActive(int64(b.MaxConnections)) }

// Release ends a connection counted by Acquire.
func (b *Backend) Release() { b.Stats.AddActive(-1) }

// Full reports whether b is at its MaxConnections.
func (b *Backend) Full() bool {
	return b.MaxConnections > 0 && b.Stats.Active() >= int64(b.MaxConnections)
}
