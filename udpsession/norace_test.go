//go:build !race

package udpsession

const raceEnabled = false
