package balancers

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/caddy-between/between/backend"
)

// snapshotInfo holds facts about one pool snapshot that would otherwise cost
// a scan (or an allocation) per election. A snapshot never changes, so the
// facts stay true for as long as the same backing array is passed in.
type snapshotInfo struct {
	// key is &pool[0]: holding it keeps the array alive, so no other snapshot
	// can ever have the same address while this entry exists.
	key **backend.Backend
	n   int
	// limited is true when some backend has MaxConnections > 0, so that
	// eligibility must be checked member by member.
	limited bool
	// addrHash[i] is the hash of pool[i].Address() (rendezvous hashing);
	// nil unless the cache was asked for hashes.
	addrHash []uint64
	// cumWeight[i] is the sum of the weights of pool[:i] (len(pool)+1
	// entries), for a weighted draw by binary search.
	cumWeight []uint64
}

// snapshotCache remembers the snapshotInfo of the last pool a policy saw. A
// new snapshot costs one scan and one allocation; every election on the same
// snapshot afterwards is free.
type snapshotCache struct {
	p atomic.Pointer[snapshotInfo]
}

// allEligible reports whether every backend of pool is eligible for c without
// looking at them: no filter, nothing tried, no max_connections anywhere.
func (si *snapshotInfo) allEligible(c *Client) bool {
	return c.Match == nil && len(c.Skip) == 0 && !si.limited
}

// get returns the facts about pool (which must not be empty). hashes asks
// for addrHash; a cache must always be called with the same value.
func (sc *snapshotCache) get(pool []*backend.Backend, hashes bool) *snapshotInfo {
	if si := sc.p.Load(); si != nil && si.key == &pool[0] && si.n == len(pool) {
		return si
	}
	si := &snapshotInfo{key: &pool[0], n: len(pool), cumWeight: make([]uint64, len(pool)+1)}
	if hashes {
		si.addrHash = make([]uint64, len(pool))
	}
	for i, b := range pool {
		if b.MaxConnections > 0 {
			si.limited = true
		}
		if hashes {
			si.addrHash[i] = stringHash(b.Address())
		}
		si.cumWeight[i+1] = si.cumWeight[i] + uint64(max(b.Weight, 0))
	}
	sc.p.Store(si)
	return si
}

// FNV-1a, 64 bit.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// stringHash hashes s without allocating: FNV-1a, then a finalizer so that
// similar addresses get unrelated hashes.
func stringHash(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix64(h)
}

// clientHash hashes the client's IP (and port, when withPort) into a well
// mixed 64-bit value. An IPv4 address hashes the same whether it arrives as
// 1.2.3.4 or ::ffff:1.2.3.4. The result is stable across processes, so
// clients keep their backend over restarts.
func clientHash(ip netip.Addr, port uint16, withPort bool) uint64 {
	a := ip.Unmap().As16()
	h := mix64(binary.BigEndian.Uint64(a[:8]) ^ 0x9e3779b97f4a7c15)
	h = mix64(h ^ binary.BigEndian.Uint64(a[8:]))
	if withPort {
		h = mix64(h ^ uint64(port) ^ 0xd6e8feb86659fd93)
	}
	return h
}

// mix64 is the splitmix64 finalizer: a bijection with full avalanche.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// rng is a small splitmix64 generator on the stack, seeded once per election
// from the policy's random source, so a scan that breaks many ties costs one
// call to the shared source.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	return mix64(r.s)
}

// below returns a uniform number in [0, n) (n > 0) by Lemire's
// multiply-shift method on 32 bits; ties never number more than 2^32.
func (r *rng) below(n uint64) uint64 {
	if n <= 1 {
		return 0
	}
	return (r.next() >> 32) * n >> 32
}
