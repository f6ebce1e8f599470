//go:build !linux

package testpeers

import (
	"errors"
	"os"
	"runtime"
	"syscall"
)

// Stand-ins for sys_linux.go: dockerd and LXD run on Linux only, so the
// tests that start them skip (or fail under CI) before these matter.

// unmountUnder has nothing to do: bind and netns mounts are Linux's.
func unmountUnder(string) {}

// machineArch is the machine's name in the kernel's words (uname -m).
func machineArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

func lxdProcAttr() *syscall.SysProcAttr { return nil }

func pause(*os.Process) error  { return errors.New("pausing a process: Linux only") }
func resume(*os.Process) error { return errors.New("resuming a process: Linux only") }
