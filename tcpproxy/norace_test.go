//go:build !race

package tcpproxy_test

const raceEnabled = false
