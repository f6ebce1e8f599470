//go:build linux

package testpeers

import (
	"os"
	"slices"
	"strings"
	"syscall"
)

// The peers (dockerd, LXD, and the mounts they leave) are Linux's; the
// functions here have portable stand-ins in sys_other.go so that the tests
// that use this package compile everywhere.

// unmountUnder detaches every mount at or below dir, deepest first (dockerd
// and LXD leave bind mounts and netns mounts behind).
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

// machineArch is the kernel's name of the machine, as LXD images name it.
func machineArch() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "unknown"
	}
	var b []byte
	for _, c := range u.Machine {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// lxdProcAttr makes LXD stop its instances and exit (SIGPWR) should the
// test binary die.
func lxdProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGPWR}
}

// pause stops a process, resume continues it.
func pause(p *os.Process) error  { return p.Signal(syscall.SIGSTOP) }
func resume(p *os.Process) error { return p.Signal(syscall.SIGCONT) }
