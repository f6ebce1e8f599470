package tcpproxy

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

var headerCases = []struct {
	name          string
	client, local string
	v1            string
	v2            string // hex after the signature
}{
	{
		name: "ipv4", client: "127.0.0.2:40000", local: "127.0.0.1:8080",
		v1: "PROXY TCP4 127.0.0.2 127.0.0.1 40000 8080\r\n",
		v2: "2111000c" + "7f000002" + "7f000001" + "9c40" + "1f90",
	},
	{
		name: "ipv6", client: "[2001:db8::1]:443", local: "[::1]:8443",
		v1: "PROXY TCP6 2001:db8::1 ::1 443 8443\r\n",
		v2: "21210024" + "20010db8000000000000000000000001" + "00000000000000000000000000000001" + "01bb" + "20fb",
	},
	{
		name: "ipv4-mapped both", client: "[::ffff:10.0.0.1]:1", local: "[::ffff:10.0.0.2]:2",
		v1: "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n",
		v2: "2111000c" + "0a000001" + "0a000002" + "0001" + "0002",
	},
	{
		name: "ipv4 client on ipv6 listener", client: "192.0.2.7:5000", local: "[2001:db8::2]:80",
		v1: "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 5000 80\r\n",
		v2: "21210024" + "00000000000000000000ffffc0000207" + "20010db8000000000000000000000002" + "1388" + "0050",
	},
	{
		name: "ipv6 client on ipv4 listener", client: "[::1]:5000", local: "127.0.0.1:80",
		v1: "PROXY TCP6 ::1 ::ffff:127.0.0.1 5000 80\r\n",
		v2: "21210024" + "00000000000000000000000000000001" + "00000000000000000000ffff7f000001" + "1388" + "0050",
	},
	{
		name: "zone dropped", client: "[fe80::1%eth0]:7", local: "[fe80::2%eth0]:8",
		v1: "PROXY TCP6 fe80::1 fe80::2 7 8\r\n",
		v2: "21210024" + "fe800000000000000000000000000001" + "fe800000000000000000000000000002" + "0007" + "0008",
	},
	{
		name: "unknown", client: "", local: "127.0.0.1:80",
		v1: "PROXY UNKNOWN\r\n",
		v2: "20000000",
	},
}

func parseAP(t testing.TB, s string) netip.AddrPort {
	if s == "" {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func TestAppendProxyHeader(t *testing.T) {
	for _, c := range headerCases {
		t.Run(c.name, func(t *testing.T) {
			client, local := parseAP(t, c.client), parseAP(t, c.local)
			if got := string(AppendProxyHeader([]byte("x"), 1, client, local)); got != "x"+c.v1 {
				t.Errorf("v1 = %q, want %q", got, "x"+c.v1)
			}
			want, err := hex.DecodeString(c.v2)
			if err != nil {
				t.Fatal(err)
			}
			want = append([]byte(v2Signature), want...)
			if got := AppendProxyHeader(nil, 2, client, local); !bytes.Equal(got, want) {
				t.Errorf("v2 = %x, want %x", got, want)
			}
		})
	}
}

// TestProxyHeaderRoundTrip reads each header back with go-proxyproto, the
// parser caddy-l4's proxy_protocol handler uses.
func TestProxyHeaderRoundTrip(t *testing.T) {
	for _, c := range headerCases {
		for _, v := range []int{1, 2} {
			client, local := parseAP(t, c.client), parseAP(t, c.local)
			roundTrip(t, v, client, local)
		}
	}
}

func roundTrip(t testing.TB, version int, client, local netip.AddrPort) {
	t.Helper()
	hdr := AppendProxyHeader(nil, version, client, local)
	if len(hdr) > MaxProxyHeader {
		t.Fatalf("header of %d bytes exceeds MaxProxyHeader", len(hdr))
	}
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(append(hdr, "payload"...))))
	if err != nil {
		t.Fatalf("v%d %v -> %v: go-proxyproto: %v (header %q)", version, client, local, err, hdr)
	}
	if int(h.Version) != version {
		t.Errorf("version %d, want %d", h.Version, version)
	}
	unmapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	}
	if !client.Addr().IsValid() || !local.Addr().IsValid() {
		if h.Command != proxyproto.LOCAL && h.TransportProtocol != proxyproto.UNSPEC {
			t.Errorf("unknown addresses: command %v, protocol %v", h.Command, h.TransportProtocol)
		}
		return
	}
	src, ok1 := h.SourceAddr.(*net.TCPAddr)
	dst, ok2 := h.DestinationAddr.(*net.TCPAddr)
	if !ok1 || !ok2 {
		t.Fatalf("addresses %T %T", h.SourceAddr, h.DestinationAddr)
	}
	if got := unmapped(src.AddrPort()); got != unmapped(client) {
		t.Errorf("v%d source %v, want %v", version, got, unmapped(client))
	}
	if got := unmapped(dst.AddrPort()); got != unmapped(local) {
		t.Errorf("v%d destination %v, want %v", version, got, unmapped(local))
	}
}

// FuzzProxyHeader checks that every address pair encodes to a header
// go-proxyproto reads back to the same addresses.
func FuzzProxyHeader(f *testing.F) {
	f.Add(uint8(1), []byte{127, 0, 0, 2}, uint16(40000), []byte{127, 0, 0, 1}, uint16(80))
	f.Add(uint8(2), []byte(net.IPv6loopback), uint16(1), []byte{10, 0, 0, 1}, uint16(65535))
	f.Add(uint8(2), []byte(net.ParseIP("192.0.2.1")), uint16(0), []byte(net.ParseIP("2001:db8::")), uint16(0))
	f.Fuzz(func(t *testing.T, v uint8, s []byte, sp uint16, d []byte, dp uint16) {
		src, ok1 := netip.AddrFromSlice(s)
		dst, ok2 := netip.AddrFromSlice(d)
		if !ok1 || !ok2 {
			return
		}
		roundTrip(t, int(v%2)+1, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
	})
}

func TestProxyHeaderZeroAlloc(t *testing.T) {
	buf := make([]byte, 0, MaxProxyHeader)
	long := netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535")
	for _, c := range headerCases {
		client, local := parseAP(t, c.client), parseAP(t, c.local)
		for _, v := range []int{1, 2} {
			if n := testing.AllocsPerRun(100, func() { buf = AppendProxyHeader(buf[:0], v, client, local) }); n != 0 {
				t.Errorf("%s v%d: %v allocations per header", c.name, v, n)
			}
		}
	}
	if n := len(AppendProxyHeader(nil, 1, long, long)); n > MaxProxyHeader {
		t.Errorf("longest v1 header is %d bytes, MaxProxyHeader %d", n, MaxProxyHeader)
	}
}

func BenchmarkAppendProxyHeader(b *testing.B) {
	buf := make([]byte, 0, MaxProxyHeader)
	client := netip.MustParseAddrPort("[2001:db8::1]:40000")
	local := netip.MustParseAddrPort("[2001:db8::2]:443")
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendProxyHeader(buf[:0], 1, client, local)
	}
}

func TestReadProxyHeader(t *testing.T) {
	for _, c := range headerCases {
		client, local := parseAP(t, c.client), parseAP(t, c.local)
		for _, v := range []int{1, 2} {
			hdr := AppendProxyHeader(nil, v, client, local)
			r := bytes.NewReader(append(hdr, "payload"...))
			var buf ProxyHeaderBuf
			src, dst, err := ReadProxyHeader(r, &buf)
			if err != nil {
				t.Errorf("%s v%d: %v", c.name, v, err)
				continue
			}
			rest := make([]byte, 16)
			if n, _ := r.Read(rest); string(rest[:n]) != "payload" {
				t.Errorf("%s v%d: read past the header: rest %q", c.name, v, rest[:n])
			}
			if c.client == "" {
				if src.IsValid() || dst.IsValid() {
					t.Errorf("%s v%d: addresses %v %v, want none", c.name, v, src, dst)
				}
				continue
			}
			um := func(ap netip.AddrPort) netip.AddrPort {
				return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
			}
			if um(src) != um(client) || um(dst) != um(local) {
				t.Errorf("%s v%d: %v -> %v, want %v -> %v", c.name, v, src, dst, client, local)
			}
		}
	}
	for _, bad := range []string{
		"GET / HTTP/1.1\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
		"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
		"PROXY TCP4 1.2.3.4\r\n",
		"PROXY " + strings.Repeat("x", 200),
		v2Signature + "\x31\x11\x00\x0c",
		v2Signature + "\x21\x11\x00\x04abcd",
		v2Signature + "\x21\x11\x00\x0c12",
	} {
		var buf ProxyHeaderBuf
		if src, dst, err := ReadProxyHeader(strings.NewReader(bad), &buf); err == nil {
			t.Errorf("%q: accepted as %v -> %v", bad, src, dst)
		}
	}
	// v2 TLVs are skipped
	hdr := AppendProxyHeader(nil, 2, netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"))
	hdr[15] += 7
	hdr = append(hdr, 0x04, 0, 4, 'n', 'o', 'o', 'p')
	r := strings.NewReader(string(hdr) + "x")
	var buf ProxyHeaderBuf
	if src, _, err := ReadProxyHeader(r, &buf); err != nil || src.String() != "10.0.0.1:1" || r.Len() != 1 {
		t.Errorf("v2 with TLV: %v, %v, %d bytes left", src, err, r.Len())
	}
}

// FuzzReadProxyHeader: no input panics or reads past what it accepts, and an
// accepted header re-encodes to one that reads back the same.
func FuzzReadProxyHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		var buf ProxyHeaderBuf
		r := bytes.NewReader(in)
		src, dst, err := ReadProxyHeader(r, &buf)
		if err != nil || !src.IsValid() {
			return
		}
		if src.Addr().Is4() != dst.Addr().Is4() {
			t.Fatalf("mixed families %v %v", src, dst)
		}
		again, dst2, err := ReadProxyHeader(bytes.NewReader(AppendProxyHeader(nil, 2, src, dst)), &buf)
		if err != nil || again != src || dst2 != dst {
			t.Fatalf("re-encoded %v -> %v reads as %v -> %v, %v", src, dst, again, dst2, err)
		}
	})
}

func TestReadProxyHeaderV2ZeroAlloc(t *testing.T) {
	hdr := AppendProxyHeader(nil, 2, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"))
	r := bytes.NewReader(hdr)
	var buf ProxyHeaderBuf
	if n := testing.AllocsPerRun(100, func() {
		r.Reset(hdr)
		if _, _, err := ReadProxyHeader(r, &buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per v2 header", n)
	}
}
