//go:build race

package tcpproxy_test

// raceEnabled: the race detector allocates on its own (and sync.Pool drops
// items at random under it), so the allocation checks skip themselves under
// -race. CI runs every ZeroAlloc test without it.
const raceEnabled = true
