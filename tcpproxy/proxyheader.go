package tcpproxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// MaxProxyHeader is the longest header AppendProxyHeader writes (a version 1
// TCP6 line with two full-length addresses is 104 bytes; version 2 with two
// IPv6 addresses is 52). A buffer of this capacity never grows.
const MaxProxyHeader = 108

// v2Signature opens every PROXY protocol version 2 header.
const v2Signature = "\r\n\r\n\x00\r\nQUIT\n"

// AppendProxyHeader appends a PROXY protocol header (version 1 or 2) to b and
// returns the extended slice. client is the connection's source, local the
// address it reached (the listener's): they become the header's source and
// destination.
//
// IPv4-mapped IPv6 addresses are written as IPv4. Both addresses of a header
// are of one family, as both versions require: when both are IPv4 the header
// is TCP4 (AF_INET), otherwise TCP6 (AF_INET6) with an IPv4 address written
// IPv4-mapped (::ffff:a.b.c.d), which loses nothing. When either address is
// invalid (not an IP connection), the header says so: "PROXY UNKNOWN" in
// version 1, the LOCAL command in version 2; the receiver then uses the
// connection's own addresses.
//
// It allocates only when b lacks the capacity (MaxProxyHeader is enough).
// Any version other than 2 writes version 1.
func AppendProxyHeader(b []byte, version int, client, local netip.AddrPort) []byte {
	// zones (fe80::1%eth0) have no place in either encoding
	src, dst := client.Addr().Unmap().WithZone(""), local.Addr().Unmap().WithZone("")
	known := src.IsValid() && dst.IsValid()
	v4 := src.Is4() && dst.Is4()
	if known && !v4 {
		src, dst = as16(src), as16(dst)
	}
	if version == 2 {
		b = append(b, v2Signature...)
		if !known {
			// version 2, LOCAL command, AF_UNSPEC, no address block
			return append(b, 0x20, 0x00, 0, 0)
		}
		if v4 {
			// version 2 PROXY command, AF_INET STREAM, 12 address bytes
			b = append(b, 0x21, 0x11, 0, 12)
			s, d := src.As4(), dst.As4()
			b = append(append(b, s[:]...), d[:]...)
		} else {
			// version 2 PROXY command, AF_INET6 STREAM, 36 address bytes
			b = append(b, 0x21, 0x21, 0, 36)
			s, d := src.As16(), dst.As16()
			b = append(append(b, s[:]...), d[:]...)
		}
		b = binary.BigEndian.AppendUint16(b, client.Port())
		return binary.BigEndian.AppendUint16(b, local.Port())
	}
	if !known {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	if v4 {
		b = append(b, "PROXY TCP4 "...)
	} else {
		b = append(b, "PROXY TCP6 "...)
	}
	b = src.AppendTo(b)
	b = append(b, ' ')
	b = dst.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(client.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(local.Port()), 10)
	return append(b, '\r', '\n')
}

// as16 returns a as an IPv6 address, IPv4-mapped when it is IPv4.
func as16(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom16(a.As16())
	}
	return a
}

// ProxyHeaderBuf is the scratch space ReadProxyHeader needs.
type ProxyHeaderBuf [232]byte

// ErrNoProxyHeader is returned by ReadProxyHeader when the stream does not
// start with a PROXY protocol header.
var ErrNoProxyHeader = errors.New("no PROXY protocol header")

// ReadProxyHeader reads one PROXY protocol header (version 1 or 2) from r and
// returns the source and destination it declares. It never reads past the
// header, so r (a raw socket) can be handed on as it is. Valid is false for
// both addresses when the header declares none (v1 "UNKNOWN", v2 LOCAL, or a
// non-TCP family): the connection's own addresses then apply. Version 2 TLVs
// are skipped. It allocates only for the error of a malformed header or a
// version 1 address (parsing text).
func ReadProxyHeader(r io.Reader, buf *ProxyHeaderBuf) (src, dst netip.AddrPort, err error) {
	b := buf[:]
	// 15 bytes: the shortest header ("PROXY UNKNOWN\r\n")
	if _, err := io.ReadFull(r, b[:15]); err != nil {
		return src, dst, err
	}
	if string(b[:12]) == v2Signature {
		if _, err := io.ReadFull(r, b[15:16]); err != nil {
			return src, dst, err
		}
		return readV2(r, b)
	}
	if string(b[:6]) != "PROXY " {
		return src, dst, ErrNoProxyHeader
	}
	// version 1: the rest of the line, byte by byte so as not to read past
	// it (version 2 costs fewer reads)
	n := 15
	for b[n-1] != '\n' {
		if n == 107 {
			return src, dst, errors.New("PROXY v1 header: longer than 107 bytes")
		}
		if _, err := io.ReadFull(r, b[n:n+1]); err != nil {
			return src, dst, err
		}
		n++
	}
	return parseV1(b[:n])
}

func readV2(r io.Reader, b []byte) (src, dst netip.AddrPort, err error) {
	if b[12]>>4 != 2 || b[12]&0xf > 1 {
		return src, dst, fmt.Errorf("PROXY v2 header: version/command byte %#x", b[12])
	}
	local := b[12]&0xf == 0
	fam := b[13]
	rest := int(binary.BigEndian.Uint16(b[14:16]))
	var alen int
	switch fam {
	case 0x11:
		alen = 12
	case 0x21:
		alen = 36
	}
	if rest < alen {
		return src, dst, fmt.Errorf("PROXY v2 header: length %d too short for family %#x", rest, fam)
	}
	if _, err := io.ReadFull(r, b[:alen]); err != nil {
		return src, dst, err
	}
	if alen > 0 && !local {
		if alen == 12 {
			src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[0:4])), binary.BigEndian.Uint16(b[8:10]))
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[10:12]))
		} else {
			src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[0:16])), binary.BigEndian.Uint16(b[32:34]))
			dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[16:32])), binary.BigEndian.Uint16(b[34:36]))
		}
	}
	// skip TLVs and anything else the length covers
	for rest -= alen; rest > 0; {
		n := min(rest, len(b))
		if _, err := io.ReadFull(r, b[:n]); err != nil {
			return netip.AddrPort{}, netip.AddrPort{}, err
		}
		rest -= n
	}
	return src, dst, nil
}

func parseV1(line []byte) (src, dst netip.AddrPort, err error) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return src, dst, errors.New("PROXY v1 header: not terminated by CRLF")
	}
	f := bytes.Fields(line[6 : len(line)-2])
	if len(f) > 0 && string(f[0]) == "UNKNOWN" {
		return src, dst, nil
	}
	if len(f) != 5 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6") {
		return src, dst, fmt.Errorf("PROXY v1 header: malformed %q", line)
	}
	var addrs [2]netip.Addr
	var ports [2]uint16
	for i := range 2 {
		a, err := netip.ParseAddr(string(f[1+i]))
		if err != nil || a.Is4() != (string(f[0]) == "TCP4") || a.Zone() != "" {
			return src, dst, fmt.Errorf("PROXY v1 header: bad address %q", f[1+i])
		}
		p, err := strconv.ParseUint(string(f[3+i]), 10, 16)
		if err != nil || (len(f[3+i]) > 1 && f[3+i][0] == '0') {
			return src, dst, fmt.Errorf("PROXY v1 header: bad port %q", f[3+i])
		}
		addrs[i], ports[i] = a, uint16(p)
	}
	return netip.AddrPortFrom(addrs[0], ports[0]), netip.AddrPortFrom(addrs[1], ports[1]), nil
}
