//go:build race

package balancers

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// regexp matching allocates now and then; the allocation check of the regexp
// strategy skips itself under -race. CI runs every ZeroAlloc test without it.
const raceEnabled = true
