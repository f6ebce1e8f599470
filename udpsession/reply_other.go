//go:build !linux

package udpsession

import "net"

// replyReader reads a virtual session's replies from its backend socket.
// This portable version reads with conn.Read into a pooled 64 KiB buffer,
// which it holds while it waits; the Linux one (reply_linux.go) holds a
// buffer only while it reads a datagram that is there.
type replyReader struct {
	conn *net.UDPConn
}

// newReplyReader prepares to read the replies on conn.
func newReplyReader(conn *net.UDPConn) (*replyReader, error) {
	return &replyReader{conn: conn}, nil
}

// next waits for the next reply and returns it in a pooled buffer (the
// caller puts it back in bufPool) and its length; or the read's error.
func (r *replyReader) next() (*[]byte, int, error) {
	bp := bufPool.Get().(*[]byte)
	n, err := r.conn.Read(*bp)
	if err != nil {
		bufPool.Put(bp)
		return nil, 0, err
	}
	return bp, n, nil
}
