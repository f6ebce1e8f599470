package l4handler

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/tcpproxy"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	proxyproto "github.com/pires/go-proxyproto"
)

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

// ProxyProtocol sends a PROXY protocol header to the backend before any
// client byte, so that the backend sees the real client address: the
// connection's source (after caddy-l4's proxy_protocol handler, the address
// the upstream balancer declared) and the address it reached on this server.
//
// Both addresses of a header are of one family: TCP4 (AF_INET) when both are
// IPv4 (IPv4-mapped IPv6 counts as IPv4), otherwise TCP6 (AF_INET6) with an
// IPv4 address written IPv4-mapped. The header is not counted in the
// handler's or the backend's tx bytes.
type ProxyProtocol struct {
	// "1" (text) or "2" (binary); required.
	Version string `json:"version,omitempty"`
}

// provision checks the version and returns it as a number.
func (p *ProxyProtocol) provision() (int, error) {
	switch p.Version {
	case "1":
		return 1, nil
	case "2":
		return 2, nil
	case "":
		return 0, fmt.Errorf(`proxy_protocol.version: required, "1" or "2"`)
	}
	return 0, fmt.Errorf(`proxy_protocol.version %q: want "1" or "2"`, p.Version)
}

// addrPort is a's IP address and port; the zero AddrPort when a is not an IP
// address (the header then says the addresses are unknown).
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// withProxyHeader puts the PROXY header in front of the bytes in prefix
// (those go to the backend first) and returns the result and the header's
// length. It allocates only when prefix lacks MaxProxyHeader spare bytes.
func withProxyHeader(prefix []byte, version int, client, local netip.AddrPort) ([]byte, int) {
	n := len(prefix)
	prefix = tcpproxy.AppendProxyHeader(prefix, version, client, local)
	if n > 0 {
		// rotate the header to the front
		slices.Reverse(prefix[:n])
		slices.Reverse(prefix[n:])
		slices.Reverse(prefix)
	}
	return prefix, len(prefix) - n
}

// parseProxyProtocol reads
//
//	proxy_protocol 1|2
//	proxy_protocol {
//		version 1|2
//	}
func parseProxyProtocol(d *caddyfile.Dispenser) (*ProxyProtocol, error) {
	p := new(ProxyProtocol)
	if d.NextArg() {
		p.Version = d.Val()
		if d.NextArg() {
			return nil, d.Errf("proxy_protocol: want one argument (the version), got %q too", d.Val())
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "version":
			if err := oneArg(d, &p.Version); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("proxy_protocol: unknown subdirective %q (want version)", d.Val())
		}
	}
	if _, err := p.provision(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return p, nil
}

// AcceptProxyProtocol makes `between` read a PROXY protocol header (version 1
// or 2) from clients in allow — the balancers in front — itself, instead of
// caddy-l4's proxy_protocol handler. The socket stays raw, so bulk transfers
// keep kernel splice (caddy-l4's handler wraps the connection and costs
// about 1.7-2x the CPU per GB). The declared source address then counts for
// access rules, iphash and an outgoing proxy_protocol header.
//
// A client in allow must send a header within timeout, or it is refused; a
// client outside allow is served with its own address and its bytes are not
// inspected. Matchers before `between` in the route see the header as the
// first bytes of the stream.
type AcceptProxyProtocol struct {
	// IP addresses or CIDR ranges of the balancers allowed to declare a
	// client address; required.
	Allow []string `json:"allow,omitempty"`
	// How long to wait for the header. Default 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	allow []netip.Prefix
}

// provision parses allow and sets the default timeout.
func (a *AcceptProxyProtocol) provision() error {
	if len(a.Allow) == 0 {
		return fmt.Errorf("accept_proxy_protocol.allow: required (the balancers that send PROXY headers)")
	}
	a.allow = a.allow[:0]
	for _, s := range a.Allow {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			ip, err2 := netip.ParseAddr(s)
			if err2 != nil {
				return fmt.Errorf("accept_proxy_protocol.allow %q: not an IP address or CIDR range", s)
			}
			p = netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())
		}
		a.allow = append(a.allow, p.Masked())
	}
	if a.Timeout < 0 {
		return fmt.Errorf("accept_proxy_protocol.timeout: must not be negative")
	}
	if a.Timeout == 0 {
		a.Timeout = caddy.Duration(5 * time.Second)
	}
	return nil
}

// trusts reports whether ip may declare a client address.
func (a *AcceptProxyProtocol) trusts(ip netip.Addr) bool {
	for _, p := range a.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// headerBufs holds ReadProxyHeader's scratch space, which escapes through
// the io.Reader interface.
var headerBufs = sync.Pool{New: func() any { return new(tcpproxy.ProxyHeaderBuf) }}

// read reads the header from cx (so bytes a matcher buffered come first)
// within the timeout.
func (a *AcceptProxyProtocol) read(cx net.Conn) (src, dst netip.AddrPort, err error) {
	if err := cx.SetReadDeadline(time.Now().Add(time.Duration(a.Timeout))); err != nil {
		return src, dst, err
	}
	buf := headerBufs.Get().(*tcpproxy.ProxyHeaderBuf)
	src, dst, err = tcpproxy.ReadProxyHeader(cx, buf)
	headerBufs.Put(buf)
	if err2 := cx.SetReadDeadline(time.Time{}); err == nil {
		err = err2
	}
	return src, dst, err
}

// parseAcceptProxyProtocol reads
//
//	accept_proxy_protocol {
//		allow IP-OR-CIDR...
//		timeout DURATION
//	}
func parseAcceptProxyProtocol(d *caddyfile.Dispenser) (*AcceptProxyProtocol, error) {
	a := new(AcceptProxyProtocol)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			a.Allow = append(a.Allow, args...)
		case "timeout":
			if err := discovery.DurationArg(d, &a.Timeout); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("accept_proxy_protocol: unknown subdirective %q (want allow or timeout)", d.Val())
		}
	}
	if err := (&AcceptProxyProtocol{Allow: a.Allow, Timeout: a.Timeout}).provision(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return a, nil
}
