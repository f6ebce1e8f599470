//go:build linux

package udpsession

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// replyReader reads a virtual session's replies from its backend socket
// without holding a buffer while it waits: it waits for the socket to be
// readable (syscall.RawConn.Read, which honours the conn's read deadline
// and Close), and only then takes a pooled 64 KiB buffer for the read. An
// idle or parked virtual session holds its goroutine and socket, no buffer.
type replyReader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool // made once: no allocation per read

	// set by fn, read by next
	bp  *[]byte
	n   int
	err error
}

// newReplyReader prepares to read the replies on conn.
func newReplyReader(conn *net.UDPConn) (*replyReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &replyReader{rc: rc}
	r.fn = r.readable
	return r, nil
}

// readable is RawConn.Read's callback, called when the socket may be
// readable: it reads one datagram into a pooled buffer, or gives the
// buffer back at once and reports false to wait again when there was
// nothing to read after all (EAGAIN).
func (r *replyReader) readable(fd uintptr) bool {
	bp := bufPool.Get().(*[]byte)
	for {
		// The socket is non-blocking (Go's poller); read on a connected
		// UDP socket takes one datagram and reports a pending ICMP error
		// (ECONNREFUSED) like recv.
		n, err := unix.Read(int(fd), *bp)
		switch {
		case err == nil:
			r.bp, r.n, r.err = bp, n, nil
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			bufPool.Put(bp)
			return false
		default:
			bufPool.Put(bp)
			r.bp, r.n, r.err = nil, 0, &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("read", err)}
			return true
		}
	}
}

// next waits for the next reply and returns it in a pooled buffer (the
// caller puts it back in bufPool) and its length; or an error: a deadline
// error (isTimeout) when the read deadline passed, net.ErrClosed once the
// conn is closed, or the socket's error.
func (r *replyReader) next() (*[]byte, int, error) {
	if err := r.rc.Read(r.fn); err != nil {
		return nil, 0, err
	}
	bp, n, err := r.bp, r.n, r.err
	r.bp, r.err = nil, nil
	return bp, n, err
}
