package tcpproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// TLS record and handshake limits used by PeekClientHello.
const (
	recordHeaderLen = 5
	maxRecordLen    = 1 << 14 // largest TLSPlaintext fragment (RFC 8446 §5.1)
	// maxHelloLen is the largest ClientHello message PeekClientHello waits
	// for; a longer one is treated as carrying no server name.
	maxHelloLen = 1 << 14
	// maxPeek caps the bytes read while waiting for the ClientHello.
	maxPeek = maxHelloLen + 2*recordHeaderLen
)

// PeekClientHello reads the start of a connection until it holds a complete
// TLS ClientHello and returns the host name of its server_name extension
// together with every byte read, which the caller must send to the backend
// before anything else.
//
// The ClientHello may arrive in any number of TCP segments and TLS records.
// Reading stops early, with sni "" and a nil error, when the bytes cannot be
// a ClientHello (not TLS), when the hello has no (valid) server name, when it
// exceeds 16 KiB, when timeout passes, or when the client half-closes after
// sending something: all of these mean "no SNI". err is non-nil only for a
// read error such as a reset, or io.EOF when the client closed without
// sending anything.
//
// A timeout > 0 sets a read deadline on conn, which is cleared before
// returning. Protocols where the server speaks first wait the full timeout.
func PeekClientHello(conn net.Conn, timeout time.Duration) (sni string, prefix []byte, err error) {
	if timeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return "", nil, err
		}
		defer conn.SetReadDeadline(time.Time{})
	}
	var h helloParser
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(2*cap(buf), maxPeek))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch st := h.feed(buf); {
		case st == helloDone:
			return h.sni, buf, nil
		case st == helloInvalid, len(buf) >= maxPeek:
			return "", buf, nil
		}
		if rerr != nil {
			var ne net.Error
			switch {
			case errors.Is(rerr, os.ErrDeadlineExceeded), errors.As(rerr, &ne) && ne.Timeout():
				return "", buf, nil
			case errors.Is(rerr, io.EOF):
				if len(buf) == 0 {
					return "", nil, io.EOF
				}
				return "", buf, nil
			}
			return "", buf, rerr
		}
	}
}

// States of helloParser.feed.
const (
	helloMore    = iota // need more bytes
	helloDone           // complete ClientHello seen; sni holds its server name (maybe "")
	helloInvalid        // not a TLS ClientHello
)

// helloParser collects the handshake bytes of successive TLS records until the
// first handshake message is complete, then parses it. feed is given the
// whole buffer each time and picks up where it stopped, so a slow client costs
// linear time in total.
type helloParser struct {
	pos int    // start of the next unconsumed record in the buffer
	msg []byte // handshake bytes gathered from the records so far
	sni string
}

func (h *helloParser) feed(buf []byte) int {
	for {
		rec := buf[h.pos:]
		// Reject early, on the first bytes, so that non-TLS protocols do not
		// wait for more data.
		if len(rec) >= 1 && rec[0] != 0x16 { // handshake record
			return helloInvalid
		}
		if len(rec) >= 2 && rec[1] != 3 { // TLS major version
			return helloInvalid
		}
		if len(rec) < recordHeaderLen {
			return helloMore
		}
		n := int(rec[3])<<8 | int(rec[4])
		if rec[2] > 4 || n == 0 || n > maxRecordLen {
			return helloInvalid
		}
		if len(rec) < recordHeaderLen+n {
			// Judge the handshake header as soon as it shows, rather than
			// wait for a record that may never complete.
			if len(h.msg) == 0 && len(rec) > recordHeaderLen {
				if rec[recordHeaderLen] != 1 {
					return helloInvalid
				}
				if len(rec) >= recordHeaderLen+4 && helloLen(rec[recordHeaderLen:]) > maxHelloLen {
					return helloInvalid
				}
			}
			return helloMore
		}
		h.msg = append(h.msg, rec[recordHeaderLen:recordHeaderLen+n]...)
		h.pos += recordHeaderLen + n
		if len(h.msg) < 4 {
			continue
		}
		if h.msg[0] != 1 { // client_hello
			return helloInvalid
		}
		mlen := helloLen(h.msg)
		if mlen > maxHelloLen {
			return helloInvalid
		}
		if len(h.msg) < 4+mlen {
			continue
		}
		name, ok := parseClientHello(h.msg[4 : 4+mlen])
		if !ok {
			return helloInvalid
		}
		h.sni = name
		return helloDone
	}
}

// helloLen returns the length field of a handshake message header.
func helloLen(hdr []byte) int {
	return int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
}

// cursor reads big-endian fields from a byte string; any read past the end
// sets bad, so parsing code checks once at the end.
type cursor struct {
	b   []byte
	bad bool
}

func (c *cursor) bytes(n int) []byte {
	if c.bad || n > len(c.b) {
		c.bad = true
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8() int {
	v := c.bytes(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (c *cursor) u16() int {
	v := c.bytes(2)
	if v == nil {
		return 0
	}
	return int(v[0])<<8 | int(v[1])
}

// vec reads a vector with an n-byte length prefix (n = 1 or 2).
func (c *cursor) vec(n int) cursor {
	var l int
	if n == 1 {
		l = c.u8()
	} else {
		l = c.u16()
	}
	return cursor{b: c.bytes(l), bad: c.bad}
}

// parseClientHello returns the host name of the server_name extension of a
// ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3): "" when there is none or
// it is not a plausible host name; ok is false when the body is malformed.
func parseClientHello(body []byte) (sni string, ok bool) {
	c := cursor{b: body}
	c.bytes(2 + 32) // legacy_version, random
	if sid := c.vec(1); len(sid.b) > 32 {
		return "", false
	}
	if cs := c.vec(2); len(cs.b) < 2 || len(cs.b)%2 != 0 {
		return "", false
	}
	if cm := c.vec(1); len(cm.b) < 1 {
		return "", false
	}
	if c.bad {
		return "", false
	}
	if len(c.b) == 0 {
		return "", true // no extensions (TLS 1.0-1.2 may omit them)
	}
	exts := c.vec(2)
	if c.bad || len(c.b) != 0 {
		return "", false
	}
	for len(exts.b) > 0 {
		typ := exts.u16()
		data := exts.vec(2)
		if exts.bad || data.bad {
			return "", false
		}
		if typ != 0 { // server_name
			continue
		}
		list := data.vec(2)
		if data.bad || len(data.b) != 0 {
			return "", false
		}
		for len(list.b) > 0 {
			nameType := list.u8()
			name := list.vec(2)
			if list.bad || name.bad {
				return "", false
			}
			if nameType == 0 { // host_name
				if !validHostName(name.b) {
					return "", true
				}
				return string(name.b), true
			}
		}
		return "", true
	}
	return "", true
}

// validHostName accepts what can sensibly be matched against a backend's
// sni: 1-255 printable ASCII characters without spaces.
func validHostName(b []byte) bool {
	if len(b) == 0 || len(b) > 255 {
		return false
	}
	for _, ch := range b {
		if ch <= ' ' || ch >= 0x7f {
			return false
		}
	}
	return true
}
