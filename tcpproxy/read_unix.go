//go:build unix

package tcpproxy

import (
	"os"
	"syscall"
)

// rawReads tells whether reader can read sockets itself (sysRead).
const rawReads = true

// sysRead is one read(2) on the socket fd, retried on EINTR; again reports
// EAGAIN (no data yet).
func sysRead(fd uintptr, p []byte) (n int, again bool, err error) {
	for {
		n, err := syscall.Read(int(fd), p)
		switch err {
		case nil:
			return n, false, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, true, nil
		}
		return 0, false, os.NewSyscallError("read", err)
	}
}
