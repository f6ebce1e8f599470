//go:build !race

package balancers

const raceEnabled = false
