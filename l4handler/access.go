package l4handler

import (
	"fmt"
	"net/netip"
	"strings"
)

// Access restricts which client addresses a server accepts. Rules are checked
// in order; the first one whose address or network contains the client's IP
// decides. When none matches, Default decides.
type Access struct {
	// "allow" (the default) or "deny": what happens to a client no rule matches.
	Default string `json:"default,omitempty"`
	// Rules of the form "allow IP-or-CIDR" or "deny IP-or-CIDR", e.g.
	// "deny 10.0.0.0/8", "allow 10.1.2.3", "allow ::1".
	Rules []string `json:"rules,omitempty"`

	rules    []accessRule
	denyRest bool
}

type accessRule struct {
	allow  bool
	prefix netip.Prefix
}

// provision parses the rules.
func (a *Access) provision() error {
	switch a.Default {
	case "", "allow":
	case "deny":
		a.denyRest = true
	default:
		return fmt.Errorf("access.default %q: want allow or deny", a.Default)
	}
	a.rules = a.rules[:0]
	for i, r := range a.Rules {
		rule, err := parseAccessRule(r)
		if err != nil {
			return fmt.Errorf("access.rules[%d]: %w", i, err)
		}
		a.rules = append(a.rules, rule)
	}
	return nil
}

func parseAccessRule(s string) (accessRule, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return accessRule{}, fmt.Errorf("%q: want \"allow|deny IP-or-CIDR\"", s)
	}
	var r accessRule
	switch strings.ToLower(f[0]) {
	case "allow":
		r.allow = true
	case "deny":
	default:
		return accessRule{}, fmt.Errorf("%q: action %q: want allow or deny", s, f[0])
	}
	if strings.Contains(f[1], "/") {
		p, err := netip.ParsePrefix(f[1])
		if err != nil {
			return accessRule{}, fmt.Errorf("%q: bad network: %v", s, err)
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return accessRule{}, fmt.Errorf("%q: an IPv4-mapped network needs a prefix of at least /96", s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		r.prefix = p.Masked()
	} else {
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			return accessRule{}, fmt.Errorf("%q: bad IP address: %v", s, err)
		}
		ip = ip.Unmap().WithZone("")
		r.prefix = netip.PrefixFrom(ip, ip.BitLen())
	}
	return r, nil
}

// allowed reports whether ip may connect.
func (a *Access) allowed(ip netip.Addr) bool {
	// netip.Prefix.Contains never matches an address with a zone, and the
	// rules hold unmapped addresses: a link-local client (fe80::1%eth0) or a
	// mapped one must not slip past them.
	ip = ip.Unmap().WithZone("")
	for _, r := range a.rules {
		if r.prefix.Contains(ip) {
			return r.allow
		}
	}
	return !a.denyRest
}
