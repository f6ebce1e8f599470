package balancers

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// mkPool parses gobetween backend lines, attaches Stats and list positions,
// and sorts the pool as the server does: by (Priority, Address).
func mkPool(tb testing.TB, lines ...string) []*backend.Backend {
	tb.Helper()
	pool := make([]*backend.Backend, 0, len(lines))
	for i, l := range lines {
		b, err := backend.Parse(l)
		if err != nil {
			tb.Fatal(err)
		}
		b.Stats = &backend.Stats{}
		b.Order = i
		pool = append(pool, &b)
	}
	sortPool(pool)
	return pool
}

func sortPool(pool []*backend.Backend) {
	slices.SortFunc(pool, func(a, b *backend.Backend) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Address(), b.Address()))
	})
}

// fill makes b full (its MaxConnections must be > 0) and returns the undo.
func fill(tb testing.TB, b *backend.Backend) func() {
	tb.Helper()
	n := 0
	for b.Acquire() {
		n++
	}
	if !b.Full() {
		tb.Fatalf("%s is not full", b.Address())
	}
	return func() {
		for range n {
			b.Release()
		}
	}
}

func seeded(seed uint64) func() uint64 { return rand.New(rand.NewPCG(seed, seed^0x5eed)).Uint64 }

// policies returns a fresh instance of every policy, with fixed seeds.
func policies() []struct {
	name string
	bal  Balancer
} {
	return []struct {
		name string
		bal  Balancer
	}{
		{"weight", &Weight{rand: seeded(1)}},
		{"roundrobin", new(RoundRobin)},
		{"iphash", new(IPHash)},
		{"iphash1", new(IPHash1)},
		{"iphash1 use_port", &IPHash1{UsePort: true}},
		{"leastconn", &LeastConn{rand: seeded(2)}},
		{"leastbandwidth", &LeastBandwidth{rand: seeded(3)}},
		{"first", new(First)},
	}
}

func client(ip string, port uint16) *Client {
	return &Client{IP: netip.MustParseAddr(ip).Unmap(), Port: port}
}

// clientN returns the i-th of many distinct client addresses.
func clientN(i int) *Client {
	return &Client{IP: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Port: uint16(40000 + i%20000)}
}

func count(tb testing.TB, bal Balancer, pool []*backend.Backend, n int, c func(i int) *Client) map[string]int {
	tb.Helper()
	got := map[string]int{}
	for i := range n {
		b, err := bal.Elect(c(i), pool)
		if err != nil {
			tb.Fatalf("election %d: %v", i, err)
		}
		got[b.Address()]++
	}
	return got
}

func TestWeightShares(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  map[string]float64 // share of elections
	}{
		{"1:3", []string{"10.0.0.1:80 weight=1", "10.0.0.2:80 weight=3"},
			map[string]float64{"10.0.0.1:80": 0.25, "10.0.0.2:80": 0.75}},
		{"1:1:2", []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80 weight=2"},
			map[string]float64{"10.0.0.1:80": 0.25, "10.0.0.2:80": 0.25, "10.0.0.3:80": 0.5}},
		{"zero weight never picked while the group sum is > 0", []string{"10.0.0.1:80 weight=0", "10.0.0.2:80 weight=1", "10.0.0.3:80 weight=0"},
			map[string]float64{"10.0.0.2:80": 1}},
		{"all zero: uniform", []string{"10.0.0.1:80 weight=0", "10.0.0.2:80 weight=0"},
			map[string]float64{"10.0.0.1:80": 0.5, "10.0.0.2:80": 0.5}},
		{"zero weights at both ends", []string{"10.0.0.1:80 weight=0", "10.0.0.2:80 weight=1", "10.0.0.3:80 weight=0", "10.0.0.4:80 weight=1", "10.0.0.5:80 weight=0"},
			map[string]float64{"10.0.0.2:80": 0.5, "10.0.0.4:80": 0.5}},
		{"other priority group ignored", []string{"10.0.0.1:80 weight=1", "10.0.0.2:80 weight=3", "10.0.0.3:80 weight=100 priority=2"},
			map[string]float64{"10.0.0.1:80": 0.25, "10.0.0.2:80": 0.75}},
	}
	const n = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := mkPool(t, tt.lines...)
			// The binary search over cumulative weights (everything eligible)
			// and the scan (a filter present) must agree.
			for _, path := range []string{"binary search", "scan"} {
				mkClient := clientN
				if path == "scan" {
					mkClient = func(i int) *Client {
						c := clientN(i)
						c.Match = func(*Client, *backend.Backend) bool { return true }
						return c
					}
				}
				got := count(t, &Weight{rand: seeded(42)}, pool, n, mkClient)
				for addr, c := range got {
					if _, ok := tt.want[addr]; !ok {
						t.Errorf("%s: %s picked %d times, want never", path, addr, c)
					}
				}
				for addr, share := range tt.want {
					if s := float64(got[addr]) / n; s < share-0.02 || s > share+0.02 {
						t.Errorf("%s: %s got %.2f%% of %d elections, want %.0f%% ± 2%%", path, addr, 100*s, n, 100*share)
					}
				}
			}
		})
	}
}

func TestWeightZeroWhenOthersFull(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80 weight=0", "10.0.0.2:80 weight=5 max_connections=1")
	defer fill(t, pool[1])()
	// the only eligible member has weight 0: it must serve rather than refuse
	got := count(t, &Weight{rand: seeded(1)}, pool, 100, clientN)
	if got["10.0.0.1:80"] != 100 {
		t.Fatalf("got %v, want all on 10.0.0.1:80", got)
	}
}

func TestPriorityGroupsAndFullBackends(t *testing.T) {
	lines := []string{
		"10.0.1.1:80 priority=1 max_connections=1",
		"10.0.1.2:80 priority=1 max_connections=1",
		"10.0.2.1:80 priority=2",
		"10.0.2.2:80 priority=2 weight=0",
		"10.0.3.1:80 priority=3",
	}
	tests := []struct {
		name  string
		full  []int // indexes (in sorted pool) to fill
		skip  []int
		allow []string // the backends elections may return
	}{
		{"lowest priority number preferred", nil, nil, []string{"10.0.1.1:80", "10.0.1.2:80"}},
		{"full member skipped", []int{0}, nil, []string{"10.0.1.2:80"}},
		{"group full: next group", []int{0, 1}, nil, []string{"10.0.2.1:80", "10.0.2.2:80"}},
		{"tried members skipped", nil, []int{0, 1}, []string{"10.0.2.1:80", "10.0.2.2:80"}},
		{"full and tried: third group", []int{0, 1}, []int{2, 3}, []string{"10.0.3.1:80"}},
	}
	for _, p := range policies() {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				pool := mkPool(t, lines...)
				for _, i := range tt.full {
					defer fill(t, pool[i])()
				}
				for i := range 200 {
					c := clientN(i)
					for _, j := range tt.skip {
						c.Skip = append(c.Skip, pool[j])
					}
					b, err := p.bal.Elect(c, pool)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Contains(tt.allow, b.Address()) {
						t.Fatalf("elected %s, want one of %v", b.Address(), tt.allow)
					}
					if tt.name == "group full: next group" && p.name == "weight" && b.Address() == "10.0.2.2:80" {
						t.Fatalf("weight elected the weight-0 backend while its group has weight > 0")
					}
				}
			})
		}
	}
}

func TestElectErrors(t *testing.T) {
	never := func(*Client, *backend.Backend) bool { return false }
	tests := []struct {
		name  string
		lines []string
		setup func(pool []*backend.Backend, c *Client) func()
		want  error
	}{
		{"empty pool", nil, nil, ErrNoBackends},
		{"all full", []string{"10.0.0.1:80 max_connections=1", "10.0.0.2:80 max_connections=2 priority=2"},
			func(pool []*backend.Backend, _ *Client) func() {
				u1, u2 := fill(t, pool[0]), fill(t, pool[1])
				return func() { u1(); u2() }
			}, ErrAllFull},
		{"all tried", []string{"10.0.0.1:80", "10.0.0.2:80"},
			func(pool []*backend.Backend, c *Client) func() { c.Skip = pool; return func() {} }, ErrAllFull},
		{"nothing matches", []string{"10.0.0.1:80", "10.0.0.2:80"},
			func(_ []*backend.Backend, c *Client) func() { c.Match = never; return func() {} }, ErrNoMatch},
		{"matching ones full", []string{"10.0.0.1:80 max_connections=1 sni=a.test", "10.0.0.2:80 sni=b.test"},
			func(pool []*backend.Backend, c *Client) func() {
				c.SNI = "a.test"
				f, _ := NewSNIFilter("exact", "any")
				f.Prepare(c, pool)
				return fill(t, pool[0])
			}, ErrAllFull},
	}
	for _, p := range policies() {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				pool := mkPool(t, tt.lines...)
				c := client("192.0.2.7", 5000)
				if tt.setup != nil {
					defer tt.setup(pool, c)()
				}
				b, err := p.bal.Elect(c, pool)
				if !errors.Is(err, tt.want) || b != nil {
					t.Fatalf("Elect = %v, %v; want nil, %v", b, err, tt.want)
				}
			})
		}
	}
}

func TestRoundRobinExactCycle(t *testing.T) {
	pool := mkPool(t, "10.0.0.3:80", "10.0.0.1:80 max_connections=1", "10.0.0.2:80", "10.0.0.9:80 priority=2")
	rr := new(RoundRobin)
	seq := func(n int) []string {
		var s []string
		for range n {
			b, err := rr.Elect(&Client{}, pool)
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, b.Address())
		}
		return s
	}
	a, b, c := "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	if got, want := seq(7), []string{a, b, c, a, b, c, a}; !slices.Equal(got, want) {
		t.Fatalf("cycle %v, want %v", got, want)
	}
	undo := fill(t, pool[0])
	// a is full: an exact cycle over b, c (never the same one twice in a row)
	if got, want := seq(6), []string{b, c, b, c, b, c}; !slices.Equal(got, want) {
		t.Fatalf("with %s full: %v, want %v", a, got, want)
	}
	undo()
	if got, want := seq(3), []string{a, b, c}; !slices.Equal(got, want) {
		t.Fatalf("after %s freed: %v, want %v", a, got, want)
	}
	// a new snapshot of the same backends (discovery refresh) continues the cycle
	pool2 := slices.Clone(pool)
	if got, want := seq(1), []string{a}; !slices.Equal(got, want) {
		t.Fatal(got, want)
	}
	pool = pool2
	if got, want := seq(2), []string{b, c}; !slices.Equal(got, want) {
		t.Fatalf("after a pool refresh: %v, want %v", got, want)
	}
}

func TestRoundRobinFairUnderConcurrency(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	rr := new(RoundRobin)
	const workers, per = 8, 3000
	var mu sync.Mutex
	got := map[*backend.Backend]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			local := map[*backend.Backend]int{}
			for range per {
				b, err := rr.Elect(&Client{}, pool)
				if err != nil {
					t.Error(err)
					return
				}
				local[b]++
			}
			mu.Lock()
			for b, n := range local {
				got[b] += n
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, b := range pool {
		if got[b] != workers*per/3 {
			t.Errorf("%s got %d, want exactly %d", b.Address(), got[b], workers*per/3)
		}
	}
}

func TestIPHash(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80 max_connections=5")
	h := new(IPHash)
	elect := func(c *Client) *backend.Backend {
		t.Helper()
		b, err := h.Elect(c, pool)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The server unmaps, but the hash must not depend on it.
	v4 := elect(&Client{IP: netip.MustParseAddr("1.2.3.4"), Port: 1})
	mapped := elect(&Client{IP: netip.MustParseAddr("::ffff:1.2.3.4"), Port: 2})
	if v4 != mapped {
		t.Fatalf("1.2.3.4 -> %s but ::ffff:1.2.3.4 -> %s", v4.Address(), mapped.Address())
	}
	// stable, port-independent, and spread evenly
	spread := map[*backend.Backend]int{}
	for i := range 4000 {
		c := clientN(i)
		b := elect(c)
		c.Port++
		if again := elect(c); again != b {
			t.Fatalf("client %v moved from %s to %s", c.IP, b.Address(), again.Address())
		}
		// the counting path (a Match filter present) agrees with the O(1) path
		c.Match = func(*Client, *backend.Backend) bool { return true }
		if slow := elect(c); slow != b {
			t.Fatalf("client %v: %s with a filter, %s without", c.IP, slow.Address(), b.Address())
		}
		spread[b]++
	}
	for _, b := range pool {
		if spread[b] < 850 || spread[b] > 1150 {
			t.Errorf("%s got %d of 4000 clients, want about 1000", b.Address(), spread[b])
		}
	}
	// modulo the eligible set: with one member full, clients spread over the other three
	defer fill(t, pool[3])()
	spread = map[*backend.Backend]int{}
	for i := range 3000 {
		spread[elect(clientN(i))]++
	}
	if spread[pool[3]] != 0 {
		t.Fatalf("full backend elected %d times", spread[pool[3]])
	}
	for _, b := range pool[:3] {
		if spread[b] < 850 || spread[b] > 1150 {
			t.Errorf("%s got %d of 3000 clients, want about 1000", b.Address(), spread[b])
		}
	}
}

func TestIPHash1MovesOnlyTheRemovedBackendsClients(t *testing.T) {
	var lines []string
	for i := range 10 {
		lines = append(lines, fmt.Sprintf("10.0.0.%d:6379", i+1))
	}
	full := mkPool(t, lines...)
	for _, usePort := range []bool{false, true} {
		t.Run(fmt.Sprintf("use_port=%v", usePort), func(t *testing.T) {
			h := &IPHash1{UsePort: usePort}
			const clients = 10000
			assign := func(pool []*backend.Backend) []*backend.Backend {
				out := make([]*backend.Backend, clients)
				for i := range clients {
					b, err := h.Elect(clientN(i), pool)
					if err != nil {
						t.Fatal(err)
					}
					out[i] = b
				}
				return out
			}
			before := assign(full)
			per := map[*backend.Backend]int{}
			for _, b := range before {
				per[b]++
			}
			for _, b := range full {
				if per[b] < 800 || per[b] > 1200 {
					t.Errorf("%s has %d of %d clients, want about 1000", b.Address(), per[b], clients)
				}
			}
			for _, gone := range []int{0, 4, 9} {
				removed := slices.Delete(slices.Clone(full), gone, gone+1)
				after := assign(removed)
				moved, others := 0, 0
				for i := range clients {
					switch {
					case before[i] == full[gone]:
						moved++
						if after[i] == full[gone] {
							t.Fatalf("client %d still on the removed backend", i)
						}
					case after[i] != before[i]:
						others++
					}
				}
				if others != 0 {
					t.Errorf("removing %s moved %d clients of other backends, want 0", full[gone].Address(), others)
				}
				if moved != per[full[gone]] {
					t.Errorf("moved %d, want %d", moved, per[full[gone]])
				}
				// the removed backend's clients spread over the rest, not onto one
				spread := map[*backend.Backend]int{}
				for i := range clients {
					if before[i] == full[gone] {
						spread[after[i]]++
					}
				}
				if len(spread) < 7 {
					t.Errorf("the %d moved clients went to only %d backends", moved, len(spread))
				}
				// back again: everyone returns
				restored := mkPool(t, lines...)
				for i, b := range restored {
					*b = *full[i] // same identities, a new snapshot
				}
				back := assign(restored)
				for i := range clients {
					if back[i].Address() != before[i].Address() {
						t.Fatalf("client %d: %s before, %s after the backend came back", i, before[i].Address(), back[i].Address())
					}
				}
			}
		})
	}
}

func TestIPHash1ClientKey(t *testing.T) {
	var lines []string
	for i := range 10 {
		lines = append(lines, fmt.Sprintf("10.0.0.%d:80", i+1))
	}
	pool := mkPool(t, lines...)
	elect := func(h *IPHash1, c *Client) *backend.Backend {
		b, err := h.Elect(c, pool)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, usePort := range []bool{false, true} {
		h := &IPHash1{UsePort: usePort}
		if a, b := elect(h, client("1.2.3.4", 99)), elect(h, &Client{IP: netip.MustParseAddr("::ffff:1.2.3.4"), Port: 99}); a != b {
			t.Errorf("use_port=%v: 1.2.3.4 -> %s, ::ffff:1.2.3.4 -> %s", usePort, a.Address(), b.Address())
		}
	}
	plain, withPort := new(IPHash1), &IPHash1{UsePort: true}
	seenPlain, seenPort := map[*backend.Backend]bool{}, map[*backend.Backend]bool{}
	for port := range uint16(200) {
		c := client("198.51.100.20", 30000+port)
		seenPlain[elect(plain, c)] = true
		seenPort[elect(withPort, c)] = true
		if elect(withPort, c) != elect(withPort, client("198.51.100.20", 30000+port)) {
			t.Fatal("use_port: the same ip:port moved")
		}
	}
	if len(seenPlain) != 1 {
		t.Errorf("without use_port one IP went to %d backends, want 1", len(seenPlain))
	}
	if len(seenPort) < 9 {
		t.Errorf("with use_port 200 ports of one IP went to %d backends, want about 10", len(seenPort))
	}
}

func TestIPHash1FullBackendLendsItsClientsOnly(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80", "10.0.0.2:80 max_connections=1", "10.0.0.3:80", "10.0.0.4:80")
	h := new(IPHash1)
	before := make([]*backend.Backend, 2000)
	for i := range before {
		before[i], _ = h.Elect(clientN(i), pool)
	}
	undo := fill(t, pool[1])
	for i := range before {
		b, _ := h.Elect(clientN(i), pool)
		if before[i] != pool[1] && b != before[i] {
			t.Fatalf("client %d moved from %s to %s though only %s is full", i, before[i].Address(), b.Address(), pool[1].Address())
		}
		if b == pool[1] {
			t.Fatal("full backend elected")
		}
	}
	undo()
	for i := range before {
		if b, _ := h.Elect(clientN(i), pool); b != before[i] {
			t.Fatalf("client %d did not return", i)
		}
	}
}

func TestLeastConnConcurrent(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
	lc := &LeastConn{}
	const clients = 200
	start := make(chan struct{})
	release := make(chan struct{})
	var elected sync.WaitGroup
	var wg sync.WaitGroup
	for i := range clients {
		elected.Add(1)
		wg.Go(func() {
			<-start
			b, err := lc.Elect(clientN(i), pool)
			if err != nil || !b.Acquire() {
				t.Error("election failed", err)
				elected.Done()
				return
			}
			elected.Done()
			<-release // hold the connection
			b.Release()
		})
	}
	close(start)
	elected.Wait()
	for _, b := range pool {
		if n := b.Stats.Active(); n < 45 || n > 55 {
			t.Errorf("%s holds %d connections, want 50 ± 5", b.Address(), n)
		}
	}
	close(release)
	wg.Wait()
}

func TestLeastConnPicksFewestAndBreaksTiesEvenly(t *testing.T) {
	pool := mkPool(t, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
	hold := func(b *backend.Backend, n int) {
		for range n {
			b.Acquire()
		}
		t.Cleanup(func() {
			for range n {
				b.Release()
			}
		})
	}
	hold(pool[0], 3)
	hold(pool[1], 1)
	hold(pool[2], 1)
	hold(pool[3], 2)
	got := count(t, &LeastConn{rand: seeded(7)}, pool, 8000, clientN)
	if got[pool[0].Address()]+got[pool[3].Address()] != 0 {
		t.Fatalf("busier backends elected: %v", got)
	}
	// the two tied backends share evenly whatever their place in the list
	for _, b := range pool[1:3] {
		if n := got[b.Address()]; n < 3800 || n > 4200 {
			t.Errorf("%s elected %d of 8000 times, want about 4000", b.Address(), n)
		}
	}
}

// setRate gives b a rate of about bps bytes per second via the real sampler.
func setRate(b *backend.Backend, t0 time.Time, bps int64) {
	b.Stats.Sample(t0)
	b.Stats.AddRx(bps / 2)
	b.Stats.AddTx(bps - bps/2)
	b.Stats.Sample(t0.Add(time.Second))
}

func TestLeastBandwidth(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name  string
		rates []int64
		lines []string
		want  []int // indexes that may be elected, evenly
	}{
		{"lowest rate wins", []int64{5000, 100, 7000}, nil, []int{1}},
		{"idle new backend wins", []int64{5000, 0, 100}, nil, []int{1}},
		{"ties are random", []int64{300, 300, 900}, nil, []int{0, 1}},
		{"full lowest skipped", []int64{100, 50, 900},
			[]string{"10.0.0.1:80", "10.0.0.2:80 max_connections=1", "10.0.0.3:80"}, []int{0}},
		{"priority beats rate", []int64{9000, 10, 0},
			[]string{"10.0.0.1:80", "10.0.0.2:80 priority=2", "10.0.0.3:80 priority=2"}, []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := tt.lines
			if lines == nil {
				lines = []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
			}
			pool := mkPool(t, lines...)
			for i, r := range tt.rates {
				setRate(pool[i], t0, r)
				if got := pool[i].Stats.RateSum(); uint64(r) != got {
					t.Fatalf("rate of %s = %d, want %d", pool[i].Address(), got, r)
				}
				if pool[i].MaxConnections > 0 {
					defer fill(t, pool[i])()
				}
			}
			got := count(t, &LeastBandwidth{rand: seeded(9)}, pool, 4000, clientN)
			total := 0
			for _, i := range tt.want {
				n := got[pool[i].Address()]
				total += n
				if share := 4000 / len(tt.want); n < share*9/10 || n > share*11/10 {
					t.Errorf("%s elected %d times, want about %d", pool[i].Address(), n, share)
				}
			}
			if total != 4000 {
				t.Errorf("elections went elsewhere: %v", got)
			}
		})
	}
}

func TestFirst(t *testing.T) {
	// list order, not address order: .3 is listed before .2
	pool := mkPool(t, "10.0.0.3:80 max_connections=1", "10.0.0.1:80 priority=2", "10.0.0.2:80", "10.0.0.9:80 priority=0")
	f := new(First)
	elect := func() string {
		b, err := f.Elect(&Client{}, pool)
		if err != nil {
			t.Fatal(err)
		}
		return b.Address()
	}
	// priority 0 first, then list order
	if got := elect(); got != "10.0.0.9:80" {
		t.Fatalf("first = %s, want 10.0.0.9:80", got)
	}
	pool = slices.DeleteFunc(slices.Clone(pool), func(b *backend.Backend) bool { return b.Priority == 0 })
	for range 3 {
		if got := elect(); got != "10.0.0.3:80" {
			t.Fatalf("first = %s, want 10.0.0.3:80, the first listed (every time)", got)
		}
	}
	var first, second *backend.Backend
	for _, b := range pool {
		switch b.Address() {
		case "10.0.0.3:80":
			first = b
		case "10.0.0.2:80":
			second = b
		}
	}
	undo := fill(t, first)
	if got := elect(); got != "10.0.0.2:80" {
		t.Fatalf("with the first full: %s, want 10.0.0.2:80", got)
	}
	undo()
	if got := elect(); got != "10.0.0.3:80" {
		t.Fatalf("after it freed up: %s, want 10.0.0.3:80", got)
	}
	// the priority 2 backend serves only when the priority 1 group is all full
	undo = fill(t, first)
	defer undo()
	c := &Client{Skip: []*backend.Backend{second}} // already tried
	if b, err := f.Elect(c, pool); err != nil || b.Address() != "10.0.0.1:80" {
		t.Fatalf("failover to the next priority group: %v, %v", b, err)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	type unm interface {
		caddyfile.Unmarshaler
		Balancer
	}
	tests := []struct {
		input   string
		mod     unm
		wantErr bool
		check   func(unm) bool
	}{
		{"weight", new(Weight), false, nil},
		{"roundrobin", new(RoundRobin), false, nil},
		{"iphash", new(IPHash), false, nil},
		{"leastconn", new(LeastConn), false, nil},
		{"leastbandwidth", new(LeastBandwidth), false, nil},
		{"first", new(First), false, nil},
		{"iphash1", new(IPHash1), false, func(m unm) bool { return !m.(*IPHash1).UsePort }},
		{"iphash1 {\n\tuse_port\n}", new(IPHash1), false, func(m unm) bool { return m.(*IPHash1).UsePort }},
		{"iphash1 {\n\tuse_port yes\n}", new(IPHash1), true, nil},
		{"iphash1 {\n\tuse_ports\n}", new(IPHash1), true, nil},
		{"iphash1 extra", new(IPHash1), true, nil},
		{"weight 3", new(Weight), true, nil},
		{"first {\n\tuse_port\n}", new(First), true, nil},
		{"leastconn {\n}", new(LeastConn), false, nil},
	}
	for _, tt := range tests {
		err := tt.mod.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err = %v, want error %v", tt.input, err, tt.wantErr)
		}
		if err == nil && tt.check != nil && !tt.check(tt.mod) {
			t.Errorf("%q: wrong result %+v", tt.input, tt.mod)
		}
	}
}

func TestElectZeroAlloc(t *testing.T) {
	for _, n := range []int{3, 100} {
		pool := benchPool(n, true)
		for _, p := range policies() {
			c := client("203.0.113.9", 4242)
			p.bal.Elect(c, pool) // warm snapshot caches
			if a := testing.AllocsPerRun(200, func() {
				if _, err := p.bal.Elect(c, pool); err != nil {
					t.Fatal(err)
				}
			}); a != 0 {
				t.Errorf("%s/%d: %v allocations per Elect", p.name, n, a)
			}
		}
	}
}

func TestDrawCumulativeMatchesScan(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		n := 1 + r.IntN(12)
		group := make([]*backend.Backend, n)
		cum := make([]uint64, n+1)
		for i := range group {
			group[i] = &backend.Backend{Weight: r.IntN(4), Stats: &backend.Stats{}}
			cum[i+1] = cum[i] + uint64(group[i].Weight)
		}
		sum := cum[n]
		for v := range max(sum, uint64(n)) {
			fixed := func() uint64 { return v }
			got := group[drawCumulative(cum, 0, n, fixed)]
			want := weighted(&Client{}, group, fixed)
			if got != want {
				t.Fatalf("weights %v, draw %d: binary search picked a different backend than the scan", cum, v)
			}
		}
	}
}

// TestConcurrentElections runs every policy from many goroutines over pools
// that change underneath (new snapshots), for the race detector.
func TestConcurrentElections(t *testing.T) {
	pools := [][]*backend.Backend{
		mkPool(t, "10.0.0.1:80", "10.0.0.2:80 weight=2", "10.0.0.3:80 priority=2"),
		mkPool(t, "10.0.0.1:80 max_connections=3", "10.0.0.2:80", "10.0.0.4:80"),
	}
	for _, p := range policies() {
		// the seeded sources are not safe for concurrent use: use the default
		switch p.bal.(type) {
		case *Weight:
			p.bal = new(Weight)
		case *LeastConn:
			p.bal = new(LeastConn)
		case *LeastBandwidth:
			p.bal = new(LeastBandwidth)
		}
		t.Run(p.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := range 500 {
						pool := pools[(i/50+w)%2]
						b, err := p.bal.Elect(clientN(i), pool)
						if err != nil {
							t.Error(err)
							return
						}
						if b.Acquire() {
							b.Release()
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// TestRoundRobinRetryTakesNoTurn: a client retrying after a failed dial
// (Skip set) gets the next eligible backend without moving the shared turn,
// so with a dead backend in the pool every other client still starts on the
// live one: the dead backend gets its share of first tries, not all of them.
func TestRoundRobinRetryTakesNoTurn(t *testing.T) {
	for _, size := range []int{2, 3} {
		lines := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}[:size]
		pool := mkPool(t, lines...)
		dead := pool[0]
		rr := new(RoundRobin)
		firstTries := 0
		const clients = 30
		for range clients {
			c := &Client{}
			b, err := rr.Elect(c, pool)
			if err != nil {
				t.Fatal(err)
			}
			if b == dead { // its dial fails: retry among the others
				firstTries++
				c.Skip = append(c.Skip, b)
				if b, err = rr.Elect(c, pool); err != nil || b == dead {
					t.Fatalf("retry elected %v, %v", b, err)
				}
			}
		}
		if want := clients / size; firstTries != want {
			t.Fatalf("%d backends: the dead one got %d first tries of %d clients, want %d", size, firstTries, clients, want)
		}
	}
}
