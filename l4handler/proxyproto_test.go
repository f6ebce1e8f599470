package l4handler

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestParseProxyProtocol(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{in: "proxy_protocol 1", want: "1"},
		{in: "proxy_protocol 2", want: "2"},
		{in: "proxy_protocol {\n version 2\n}", want: "2"},
		{in: "proxy_protocol", err: `proxy_protocol.version: required`},
		{in: "proxy_protocol 3", err: `proxy_protocol.version "3": want "1" or "2"`},
		{in: "proxy_protocol 1 2", err: `want one argument`},
		{in: "proxy_protocol {\n versoin 2\n}", err: `unknown subdirective "versoin"`},
	} {
		d := caddyfile.NewTestDispenser(c.in)
		d.Next()
		p, err := parseProxyProtocol(d)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.err == "" && p.Version != c.want:
			t.Errorf("%q: version %q, want %q", c.in, p.Version, c.want)
		}
	}
}

// fakeConn has only the addresses withProxyHeader reads.
type fakeConn struct {
	net.Conn
	remote, local net.Addr
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c fakeConn) LocalAddr() net.Addr  { return c.local }

func TestWithProxyHeader(t *testing.T) {
	cx := fakeConn{
		remote: &net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 1234},
		local:  &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 80},
	}
	const hdr = "PROXY TCP4 127.0.0.2 127.0.0.1 1234 80\r\n"
	for _, prefix := range []string{"", "GET / HTTP/1.1\r\n", "\x16\x03\x01"} {
		buf := append(make([]byte, 0, 2048), prefix...)
		got, n := withProxyHeader(buf, 1, addrPort(cx.RemoteAddr()), addrPort(cx.LocalAddr()))
		if string(got) != hdr+prefix || n != len(hdr) {
			t.Errorf("prefix %q: got %q (header %d bytes), want %q (%d)", prefix, got, n, hdr+prefix, len(hdr))
		}
	}
}

func TestProxyHeaderZeroAlloc(t *testing.T) {
	cx := fakeConn{
		remote: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1234},
		local:  &net.TCPAddr{IP: net.ParseIP("2001:db8::2"), Port: 443},
	}
	buf := make([]byte, 0, 2048)
	var c net.Conn = &cx // as in Handle: a pointer, no conversion per call
	for _, v := range []int{1, 2} {
		n := testing.AllocsPerRun(100, func() {
			buf, _ = withProxyHeader(append(buf[:0], "matched"...), v, addrPort(c.RemoteAddr()), addrPort(c.LocalAddr()))
		})
		if n != 0 {
			t.Errorf("version %d: %v allocations per header", v, n)
		}
	}
}

func TestAcceptProxyProtocol(t *testing.T) {
	for _, c := range []struct {
		in, err string
		trusts  []string
		refuses []string
	}{
		{in: "accept_proxy_protocol {\n allow 10.0.0.0/8 192.0.2.1\n timeout 2s\n}", trusts: []string{"10.1.2.3", "192.0.2.1"}, refuses: []string{"192.0.2.2", "::1"}},
		{in: "accept_proxy_protocol {\n allow ::1 ::ffff:127.0.0.1\n}", trusts: []string{"::1", "127.0.0.1"}, refuses: []string{"127.0.0.2"}},
		{in: "accept_proxy_protocol", err: "accept_proxy_protocol.allow: required"},
		{in: "accept_proxy_protocol {\n allow nonsense\n}", err: `accept_proxy_protocol.allow "nonsense"`},
		{in: "accept_proxy_protocol {\n allow 10.0.0.1\n timeout -1s\n}", err: "timeout: must not be negative"},
		{in: "accept_proxy_protocol {\n allw 10.0.0.1\n}", err: `unknown subdirective "allw"`},
	} {
		d := caddyfile.NewTestDispenser(c.in)
		d.Next()
		a, err := parseAcceptProxyProtocol(d)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
			}
			continue
		}
		if err == nil {
			err = a.provision()
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		for _, ip := range c.trusts {
			if !a.trusts(netip.MustParseAddr(ip)) {
				t.Errorf("%q: does not trust %s", c.in, ip)
			}
		}
		for _, ip := range c.refuses {
			if a.trusts(netip.MustParseAddr(ip)) {
				t.Errorf("%q: trusts %s", c.in, ip)
			}
		}
	}
}
