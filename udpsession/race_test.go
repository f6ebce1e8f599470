//go:build race

package udpsession

// raceEnabled: the race detector allocates on its own, so the allocation
// checks skip themselves under -race. CI runs every ZeroAlloc test without it.
const raceEnabled = true
