package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(SRV{})
}

// SRV discovers backends from the DNS SRV records of one name, asked of one
// DNS server. Every SRV record gives backends with the record's port,
// priority and weight, and the record's target (without the trailing dot) as
// their sni. Their hosts are the target's addresses: taken from the
// additional section of the SRV answer when the server put them there, else
// looked up with an A query, then (when there is no A record) an AAAA query,
// on the same server. IPv4 addresses win over IPv6 ones; a target with several
// addresses of that family gives one backend per address.
//
// DNS cannot push changes, so `interval` is what refreshes the list. Its
// default, as in gobetween, is "0": the list is fetched once and never again.
// Set it (for example "10s") to follow changes in DNS.
type SRV struct {
	Common
	// The DNS server to ask, "host:port" (for example "127.0.0.1:53";
	// an IPv6 address in brackets). Required.
	LookupServer string `json:"srv_lookup_server,omitempty"`
	// The name whose SRV records are the backends, for example
	// "_redis._tcp.example.com." (the trailing dot is optional). Required.
	LookupPattern string `json:"srv_lookup_pattern,omitempty"`
	// How to reach the DNS server: "udp" (the default) or "tcp". A truncated
	// UDP answer is asked again over TCP.
	DNSProtocol string `json:"srv_dns_protocol,omitempty"`

	name   string // LookupPattern as a fully qualified name
	logger *zap.Logger

	skips *skipLog
}

// skipLog remembers what the last fetch skipped.
type skipLog struct {
	mu   sync.Mutex
	last map[skipKey]string // why each was skipped
}

// skipKey names a skipped SRV record: by its target, or (port0) by its
// target and port 0.
type skipKey struct {
	target string
	port0  bool
}

// CaddyModule returns the Caddy module information.
func (SRV) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.srv",
		New: func() caddy.Module { return new(SRV) },
	}
}

// Provision sets the defaults.
func (s *SRV) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	s.skips = new(skipLog)
	if s.DNSProtocol == "" {
		s.DNSProtocol = "udp"
	}
	s.name = dns.Fqdn(s.LookupPattern)
	return nil
}

// Validate checks the settings.
func (s *SRV) Validate() error {
	if s.LookupServer == "" {
		return fmt.Errorf("srv_lookup_server: the DNS server (host:port) is required")
	}
	host, port, err := net.SplitHostPort(s.LookupServer)
	if err != nil || host == "" {
		return fmt.Errorf("srv_lookup_server %q: want host:port ([v6]:port for IPv6)", s.LookupServer)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("srv_lookup_server %q: port %q must be a number from 1 to 65535", s.LookupServer, port)
	}
	if s.LookupPattern == "" {
		return fmt.Errorf("srv_lookup_pattern: the SRV name (such as _redis._tcp.example.com.) is required")
	}
	if _, ok := dns.IsDomainName(s.LookupPattern); !ok || s.LookupPattern == "." {
		return fmt.Errorf("srv_lookup_pattern %q: not a valid DNS name", s.LookupPattern)
	}
	switch s.DNSProtocol {
	case "", "udp", "tcp":
	default:
		return fmt.Errorf("srv_dns_protocol %q: want udp or tcp", s.DNSProtocol)
	}
	return s.ValidateCommon()
}

// srvUDPSize is the EDNS0 buffer size offered to the server (gobetween's):
// answers up to it come over UDP, larger ones are truncated and asked again
// over TCP.
const srvUDPSize = 4096

// Fetch asks the server for the SRV records and the addresses of their
// targets. It fails when the server does not answer, answers with an error
// code (NXDOMAIN, SERVFAIL, ...) or has no SRV record, and when no target has
// an address; the Runner then keeps the last good list.
func (s *SRV) Fetch(ctx context.Context) ([]backend.Backend, error) {
	name := s.name
	if name == "" { // not provisioned (tests that build the struct directly)
		name = dns.Fqdn(s.LookupPattern)
	}
	resp, err := s.query(ctx, name, dns.TypeSRV)
	if err != nil {
		return nil, fmt.Errorf("srv: %w", err)
	}
	return s.backends(name, resp, func(target string) ([]netip.Addr, string, error) {
		return s.lookupAddrs(ctx, target)
	})
}

// backends turns resp, the answer to the SRV question for name, into
// backends. lookup finds the addresses of a target that the answer's
// additional section does not give (or why it has none).
func (s *SRV) backends(name string, resp *dns.Msg, lookup func(target string) ([]netip.Addr, string, error)) ([]backend.Backend, error) {
	if resp.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("srv: SRV %s at %s: server answered %s", name, s.LookupServer, rcodeName(resp.Rcode))
	}
	var records []*dns.SRV
	for _, rr := range resp.Answer {
		if r, ok := rr.(*dns.SRV); ok {
			records = append(records, r)
		}
	}
	if len(records) == 0 {
		return nil, fmt.Errorf("srv: SRV %s at %s: no SRV records", name, s.LookupServer)
	}
	// DNS servers may shuffle records; a stable order keeps a list that did
	// not change from looking changed (list order matters to the first policy).
	slices.SortFunc(records, func(a, b *dns.SRV) int {
		return cmp.Or(
			cmp.Compare(a.Priority, b.Priority),
			cmp.Compare(b.Weight, a.Weight),
			strings.Compare(dns.CanonicalName(a.Target), dns.CanonicalName(b.Target)),
			cmp.Compare(a.Port, b.Port),
		)
	})

	skipped := make(map[skipKey]string)
	extra := addressesOf(resp.Extra)
	resolved := make(map[string][]netip.Addr) // per target, for targets listed twice
	seen := make(map[string]bool, len(records))
	var out []backend.Backend
	unavailable := 0
	for _, r := range records {
		target := dns.CanonicalName(r.Target)
		if target == "." {
			// RFC 2782: the service is decidedly not available at this name.
			unavailable++
			continue
		}
		sni := strings.TrimSuffix(r.Target, ".")
		if r.Port == 0 {
			skipped[skipKey{sni, true}] = "port 0"
			continue
		}
		addrs, ok := resolved[target]
		if !ok {
			addrs = extra.of(target)
			if len(addrs) == 0 {
				var reason string
				var err error
				addrs, reason, err = lookup(target)
				if err != nil {
					return nil, fmt.Errorf("srv: address of target %s: %w", sni, err)
				}
				if len(addrs) == 0 {
					skipped[skipKey{target: sni}] = reason
				}
			}
			resolved[target] = addrs
		}
		for _, a := range addrs {
			b := backend.Backend{
				Host:     a.String(),
				Port:     strconv.Itoa(int(r.Port)),
				Weight:   int(r.Weight),
				Priority: int(r.Priority),
				SNI:      sni,
			}
			if seen[b.Address()] {
				// the first record (lowest priority, then highest weight) wins
				s.log().Debug("srv: address listed by more than one record; keeping the first",
					zap.String("pattern", name), zap.String("backend", b.Address()), zap.String("target", sni))
				continue
			}
			seen[b.Address()] = true
			out = append(out, b)
		}
	}
	s.reportSkipped(name, skipped)
	if len(out) == 0 {
		if unavailable == len(records) {
			// An explicit "not available" is an answer, not a failure.
			s.log().Debug("srv: the DNS says the service is not available (target \".\")", zap.String("pattern", name))
			return []backend.Backend{}, nil
		}
		return nil, fmt.Errorf("srv: SRV %s at %s: none of the %d records gives a usable backend (see the warnings about skipped targets)", name, s.LookupServer, len(records)-unavailable)
	}
	return out, nil
}

// reportSkipped logs the records this fetch skipped: a warning when a record
// is newly skipped (or for a new reason), so that a fetch every second does
// not repeat the same warning; the repeats go to the debug level.
func (s *SRV) reportSkipped(pattern string, skipped map[skipKey]string) {
	if s.skips == nil {
		s.skips = new(skipLog)
	}
	s.skips.mu.Lock()
	defer s.skips.mu.Unlock()
	for key, reason := range skipped {
		level := zap.WarnLevel
		if s.skips.last[key] == reason {
			level = zap.DebugLevel
		}
		if key.port0 {
			s.log().Log(level, "srv: skipping a record with port 0",
				zap.String("pattern", pattern), zap.String("target", key.target))
			continue
		}
		s.log().Log(level, "srv: skipping a target without an address",
			zap.String("pattern", pattern), zap.String("target", key.target), zap.String("reason", reason))
	}
	s.skips.last = skipped
}

func (s *SRV) log() *zap.Logger {
	if s.logger == nil {
		return zap.NewNop()
	}
	return s.logger
}

// lookupAddrs asks for the A records of target, then (when there are none)
// for its AAAA records. A DNS answer without addresses, whatever its code,
// gives no addresses and the reason; only a server that does not answer at all
// is an error.
func (s *SRV) lookupAddrs(ctx context.Context, target string) ([]netip.Addr, string, error) {
	var reasons []string
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := s.query(ctx, target, qtype)
		if err != nil {
			return nil, "", err
		}
		qname := dns.TypeToString[qtype]
		if resp.Rcode != dns.RcodeSuccess {
			reasons = append(reasons, qname+": "+rcodeName(resp.Rcode))
			continue
		}
		// The answer may hold a CNAME chain; every address in it is the target's.
		var addrs []netip.Addr
		for _, fam := range addressesOf(resp.Answer) {
			addrs = append(addrs, fam[0]...)
			addrs = append(addrs, fam[1]...)
		}
		if qtype == dns.TypeA {
			addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool { return !a.Is4() })
		} else {
			addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool { return a.Is4() })
		}
		if len(addrs) > 0 {
			return sortedUnique(addrs), "", nil
		}
		reasons = append(reasons, qname+": no records")
	}
	return nil, strings.Join(reasons, ", "), nil
}

// addrSet maps a canonical owner name to its IPv4 and IPv6 addresses.
type addrSet map[string]*[2][]netip.Addr

func addressesOf(rrs []dns.RR) addrSet {
	set := make(addrSet)
	add := func(name string, family int, ip net.IP) {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		a = a.Unmap()
		if family == 1 && a.Is4() {
			return // an IPv4-mapped AAAA is not an IPv6 address to dial
		}
		name = dns.CanonicalName(name)
		if set[name] == nil {
			set[name] = new([2][]netip.Addr)
		}
		set[name][family] = append(set[name][family], a)
	}
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *dns.A:
			add(r.Hdr.Name, 0, r.A)
		case *dns.AAAA:
			add(r.Hdr.Name, 1, r.AAAA)
		}
	}
	return set
}

// of returns the IPv4 addresses of name, else its IPv6 addresses.
func (set addrSet) of(name string) []netip.Addr {
	fam := set[name]
	if fam == nil {
		return nil
	}
	if len(fam[0]) > 0 {
		return sortedUnique(fam[0])
	}
	return sortedUnique(fam[1])
}

func sortedUnique(a []netip.Addr) []netip.Addr {
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Compact(a)
}

func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "rcode " + strconv.Itoa(rcode)
}

// query sends one question over the configured protocol and, when a UDP
// answer comes back truncated, asks again over TCP.
func (s *SRV) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(srvUDPSize, false)
	proto := s.DNSProtocol
	if proto == "" {
		proto = "udp"
	}
	resp, err := s.exchange(ctx, m, proto)
	if err == nil && resp.Truncated && proto == "udp" {
		proto = "tcp"
		resp, err = s.exchange(ctx, m, proto)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s at %s over %s: %w", dns.TypeToString[qtype], name, s.LookupServer, proto, err)
	}
	return resp, nil
}

// exchange sends m and reads its answer, bounded by ctx: its deadline (or
// DefaultTimeout when it has none) and its cancellation.
func (s *SRV) exchange(ctx context.Context, m *dns.Msg, proto string) (*dns.Msg, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	c := &dns.Client{Net: proto, Timeout: time.Until(deadline)}
	conn, err := c.DialContext(ctx, s.LookupServer)
	if err != nil {
		return nil, timeoutErr(ctx, err)
	}
	defer conn.Close()
	conn.UDPSize = srvUDPSize
	conn.SetDeadline(deadline)
	// A cancelled ctx ends a blocked read at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.WriteMsg(m); err != nil {
		return nil, timeoutErr(ctx, err)
	}
	for {
		resp, err := conn.ReadMsg()
		if err != nil {
			return nil, timeoutErr(ctx, err)
		}
		if resp.Id == m.Id {
			return resp, nil
		}
		if proto != "udp" {
			return nil, dns.ErrId
		}
		// over UDP, a late answer to an earlier query: keep reading
	}
}

// timeoutErr names the context's end when it caused err.
func timeoutErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		// the connection's deadline is the fetch's; ctx may not know yet
		return fmt.Errorf("no answer in time (%v): %w", err, context.DeadlineExceeded)
	}
	return err
}

// UnmarshalCaddyfile reads
//
//	discovery srv {
//		lookup_server   HOST:PORT
//		lookup_pattern  NAME
//		dns_protocol    udp|tcp
//		interval, timeout, failpolicy
//	}
//
// The gobetween names (srv_lookup_server, srv_lookup_pattern,
// srv_dns_protocol) are accepted too.
func (s *SRV) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *string
		switch d.Val() {
		case "lookup_server", "srv_lookup_server":
			dst = &s.LookupServer
		case "lookup_pattern", "srv_lookup_pattern":
			dst = &s.LookupPattern
		case "dns_protocol", "srv_dns_protocol":
			dst = &s.DNSProtocol
		default:
			if err := s.UnmarshalCommon(d); err != nil {
				return err
			}
			continue
		}
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
	}
	// wrong values fail `caddy adapt` already, with their position
	if err := s.Validate(); err != nil {
		return d.Errf("discovery srv: %v", err)
	}
	return nil
}

var (
	_ Configured            = (*SRV)(nil)
	_ caddy.Provisioner     = (*SRV)(nil)
	_ caddy.Validator       = (*SRV)(nil)
	_ caddyfile.Unmarshaler = (*SRV)(nil)
)
