// Package testpeers gives tests real peers: it starts dockerd, LXD, a consul
// agent and etcd on loopback with free ports and temporary directories,
// stops them by PID and cleans up after them. Every function that starts a
// peer takes a testing.TB and registers the peer's cleanup with t.Cleanup.
// A binary or a privilege that a peer needs and the machine lacks makes the
// test skip locally, and fail when CI=true (see Missing, the one place of
// that rule).
//
// Only tests (*_test.go files) import this package.
package testpeers

import (
	"debug/elf"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Missing ends the test for want of something on the machine: it skips the
// test, or fails it when the environment variable CI is "true".
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// staticBinary reports whether the ELF file at path needs no interpreter.
func staticBinary(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// ProcessGone reports whether the process pid has exited (a zombie that
// nobody reaped yet counts as gone).
func ProcessGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// "pid (comm) STATE ...": comm may contain spaces and parentheses
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
