package balancers

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/caddy-between/between/backend"
)

// benchPool returns n backends in one priority group, sorted as the server
// sorts them. With limits, every backend has a (never reached)
// max_connections, which forces the member-by-member eligibility checks.
func benchPool(n int, limits bool) []*backend.Backend {
	pool := make([]*backend.Backend, n)
	for i := range pool {
		b := &backend.Backend{
			Host:     netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(),
			Port:     "6379",
			Weight:   1 + i%3,
			Priority: 1,
			Stats:    &backend.Stats{},
		}
		if limits {
			b.MaxConnections = 1 << 30
		}
		pool[i] = b
	}
	sortPool(pool)
	return pool
}

// BenchmarkElect measures one election per policy and pool size; every case
// must report 0 allocs/op.
func BenchmarkElect(b *testing.B) { benchElect(b, false) }

// BenchmarkElectLimited is BenchmarkElect with max_connections on every
// backend, so that no policy can take the all-eligible shortcut.
func BenchmarkElectLimited(b *testing.B) { benchElect(b, true) }

func benchElect(b *testing.B, limited bool) {
	for _, p := range policies() {
		if p.name == "iphash1 use_port" {
			continue
		}
		for _, n := range []int{3, 100, 10000} {
			b.Run(fmt.Sprintf("%s/%d", p.name, n), func(b *testing.B) {
				pool := benchPool(n, limited)
				c := &Client{IP: netip.MustParseAddr("203.0.113.9"), Port: 4242}
				p.bal.Elect(c, pool) // a new snapshot is analysed once, outside the measurement
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					c.IP = netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)})
					if _, err := p.bal.Elect(c, pool); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSNI measures Prepare plus Elect (roundrobin) for an expected client
// among 100 backends with 10 distinct sni values.
func BenchmarkSNI(b *testing.B) {
	for _, strategy := range []string{"exact", "regexp"} {
		b.Run(strategy, func(b *testing.B) {
			pool := benchPool(100, false)
			for i, be := range pool {
				be.SNI = fmt.Sprintf("svc%d.internal", i%10)
				if strategy == "regexp" {
					be.SNI = fmt.Sprintf(`^svc%d\.internal$`, i%10)
				}
			}
			f, err := NewSNIFilter(strategy, "default")
			if err != nil {
				b.Fatal(err)
			}
			rr := new(RoundRobin)
			c := &Client{IP: netip.MustParseAddr("203.0.113.9"), Port: 4242, SNI: "SVC7.internal"}
			b.ReportAllocs()
			for b.Loop() {
				f.Prepare(c, pool)
				if _, err := rr.Elect(c, pool); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
