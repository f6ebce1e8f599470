package l4handler

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAccessAllowed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		access  Access
		allowed map[string]bool // client IP -> expected
	}{
		{
			name:    "empty allows all",
			access:  Access{},
			allowed: map[string]bool{"1.2.3.4": true, "::1": true},
		},
		{
			name:    "default allow",
			access:  Access{Default: "allow", Rules: []string{"deny 10.0.0.0/8"}},
			allowed: map[string]bool{"10.9.9.9": false, "11.0.0.1": true, "::1": true},
		},
		{
			name:    "default deny",
			access:  Access{Default: "deny", Rules: []string{"allow 127.0.0.1"}},
			allowed: map[string]bool{"127.0.0.1": true, "127.0.0.2": false, "::1": false},
		},
		{
			name:   "first match wins",
			access: Access{Default: "deny", Rules: []string{"deny 10.1.2.3", "allow 10.0.0.0/8", "deny 10.1.0.0/16"}},
			allowed: map[string]bool{
				"10.1.2.3":   false, // the first rule
				"10.1.2.4":   true,  // the second, though the third also matches
				"10.200.0.1": true,
				"11.0.0.1":   false, // default
			},
		},
		{
			name:   "later rule does not override earlier",
			access: Access{Rules: []string{"allow 192.168.1.0/24", "deny 192.168.0.0/16"}},
			allowed: map[string]bool{
				"192.168.1.7": true,
				"192.168.2.7": false,
			},
		},
		{
			name:   "IPv4 CIDR",
			access: Access{Default: "deny", Rules: []string{"allow 172.16.0.0/12"}},
			allowed: map[string]bool{
				"172.16.0.1":     true,
				"172.31.255.255": true,
				"172.32.0.0":     false,
			},
		},
		{
			name:   "unmasked CIDR is masked",
			access: Access{Default: "deny", Rules: []string{"allow 10.1.2.3/24"}},
			allowed: map[string]bool{
				"10.1.2.200": true,
				"10.1.3.1":   false,
			},
		},
		{
			name:   "IPv6 CIDR and address",
			access: Access{Default: "deny", Rules: []string{"allow 2001:db8::/32", "allow ::1"}},
			allowed: map[string]bool{
				"2001:db8:1::5": true,
				"2001:db9::1":   false,
				"::1":           true,
				"::2":           false,
				"127.0.0.1":     false, // an IPv6 rule never matches an IPv4 client
			},
		},
		{
			name:   "IPv4-mapped rule equals the IPv4 address",
			access: Access{Default: "deny", Rules: []string{"allow ::ffff:1.2.3.4"}},
			allowed: map[string]bool{
				"1.2.3.4":        true,
				"::ffff:1.2.3.4": true,
				"1.2.3.5":        false,
			},
		},
		{
			name:   "IPv4-mapped network equals the IPv4 network",
			access: Access{Default: "allow", Rules: []string{"deny ::ffff:10.0.0.0/104"}},
			allowed: map[string]bool{
				"10.2.3.4": false,
				"11.2.3.4": true,
			},
		},
		{
			name:   "action is case-insensitive",
			access: Access{Default: "deny", Rules: []string{"ALLOW 1.2.3.4"}},
			allowed: map[string]bool{
				"1.2.3.4": true,
			},
		},
		{
			name:   "zone of the client does not bypass rules",
			access: Access{Default: "allow", Rules: []string{"deny fe80::/10"}},
			allowed: map[string]bool{
				"fe80::1":      false,
				"fe80::1%eth0": false,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.access
			if err := a.provision(); err != nil {
				t.Fatalf("provision: %v", err)
			}
			for ip, want := range tc.allowed {
				addr := netip.MustParseAddr(ip)
				if got := a.allowed(addr); got != want {
					t.Errorf("allowed(%s) = %v, want %v", ip, got, want)
				}
			}
		})
	}
}

func TestAccessProvisionIsRepeatable(t *testing.T) {
	a := Access{Rules: []string{"deny 10.0.0.1"}}
	for range 3 {
		if err := a.provision(); err != nil {
			t.Fatal(err)
		}
	}
	if len(a.rules) != 1 {
		t.Errorf("after three provisions %d rules, want 1", len(a.rules))
	}
}

func TestAccessErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		access Access
		want   []string
	}{
		{"bad default", Access{Default: "maybe"}, []string{"access.default", "maybe"}},
		{"bad action", Access{Rules: []string{"allow 1.1.1.1", "permit 10.0.0.1"}}, []string{"access.rules[1]", "permit"}},
		{"one word", Access{Rules: []string{"deny"}}, []string{"access.rules[0]", "deny"}},
		{"three words", Access{Rules: []string{"deny 1.2.3.4 5.6.7.8"}}, []string{"access.rules[0]"}},
		{"empty rule", Access{Rules: []string{""}}, []string{"access.rules[0]"}},
		{"bad IP", Access{Rules: []string{"allow 1.2.3.4", "allow ::1", "deny 300.1.1.1"}}, []string{"access.rules[2]", "300.1.1.1"}},
		{"bad CIDR", Access{Rules: []string{"deny 10.0.0.0/33"}}, []string{"access.rules[0]", "10.0.0.0/33"}},
		{"host name", Access{Rules: []string{"deny localhost"}}, []string{"access.rules[0]", "localhost"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.access
			err := a.provision()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func BenchmarkAccessAllowed(b *testing.B) {
	a := Access{Default: "deny", Rules: []string{"deny 10.0.0.0/8", "allow 192.168.0.0/16", "allow ::1"}}
	if err := a.provision(); err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParseAddr("192.168.7.7")
	b.ReportAllocs()
	for b.Loop() {
		if !a.allowed(ip) {
			b.Fatal("denied")
		}
	}
}
