//go:build race

package balancers

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// regexp matching allocates now and then; allocation checks skip it.
const raceEnabled = true
