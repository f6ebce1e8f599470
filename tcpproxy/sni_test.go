package tcpproxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// captureHello returns the bytes a real crypto/tls client sends first: its
// ClientHello record(s).
func captureHello(tb testing.TB, cfg *tls.Config) []byte {
	tb.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(c1, cfg).Handshake()
		c1.Close()
	}()
	var out []byte
	hdr := make([]byte, recordHeaderLen)
	var need, have int
	for need == 0 || have < need {
		if _, err := io.ReadFull(c2, hdr); err != nil {
			tb.Fatalf("reading ClientHello header: %v", err)
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(c2, body); err != nil {
			tb.Fatalf("reading ClientHello body: %v", err)
		}
		out = append(append(out, hdr...), body...)
		if need == 0 {
			need = 4 + (int(body[1])<<16 | int(body[2])<<8 | int(body[3]))
		}
		have += len(body)
	}
	c2.Close()
	<-done
	return out
}

// refragment re-splits the handshake bytes of hello into records of at most
// size bytes each.
func refragment(tb testing.TB, hello []byte, size int) []byte {
	tb.Helper()
	var msg []byte
	for rec := hello; len(rec) > 0; {
		n := int(rec[3])<<8 | int(rec[4])
		msg = append(msg, rec[recordHeaderLen:recordHeaderLen+n]...)
		rec = rec[recordHeaderLen+n:]
	}
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 0x16, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// feed writes data to a net.Pipe in writes of chunk bytes (0 = one write),
// then optionally closes it, and returns the other end.
func feed(tb testing.TB, data []byte, chunk int, closeAfter bool) net.Conn {
	tb.Helper()
	c1, c2 := net.Pipe()
	go func() {
		if chunk <= 0 {
			chunk = max(len(data), 1)
		}
		for len(data) > 0 {
			n := min(chunk, len(data))
			if _, err := c1.Write(data[:n]); err != nil {
				return
			}
			data = data[n:]
		}
		if closeAfter {
			c1.Close()
		}
	}()
	tb.Cleanup(func() { c1.Close(); c2.Close() })
	return c2
}

func TestPeekClientHelloRealClients(t *testing.T) {
	tests := []struct {
		name    string
		cfg     *tls.Config
		wantSNI string
	}{
		{"tls13", &tls.Config{ServerName: "db.internal", InsecureSkipVerify: true}, "db.internal"},
		{"tls12 only", &tls.Config{ServerName: "api.svc.test", MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}, "api.svc.test"},
		{"mixed case kept", &tls.Config{ServerName: "Mixed.Case.Test", InsecureSkipVerify: true}, "Mixed.Case.Test"},
		{"alpn and long name", &tls.Config{ServerName: strings.Repeat("a", 60) + ".b.test", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true}, strings.Repeat("a", 60) + ".b.test"},
		{"ip address: no sni", &tls.Config{ServerName: "127.0.0.1", InsecureSkipVerify: true}, ""},
		{"no server name", &tls.Config{InsecureSkipVerify: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hello := captureHello(t, tt.cfg)
			cases := []struct {
				name  string
				data  []byte
				chunk int
			}{
				{"one write", hello, 0},
				{"1-byte segments", hello, 1},
				{"7-byte segments", hello, 7},
				{"1-byte records", refragment(t, hello, 1), 0},
				{"100-byte records in 3-byte segments", refragment(t, hello, 100), 3},
				{"512-byte records", refragment(t, hello, 512), 0},
			}
			for _, tc := range cases {
				if len(tc.data) > maxPeek {
					continue // 1-byte records of a big hello exceed the cap; covered below
				}
				// trailing bytes (early data) must be returned too, never lost
				data := append(append([]byte(nil), tc.data...), "EARLY"...)
				conn := feed(t, data, tc.chunk, false)
				sni, prefix, err := PeekClientHello(conn, 2*time.Second)
				if err != nil {
					t.Fatalf("%s: err = %v", tc.name, err)
				}
				if sni != tt.wantSNI {
					t.Errorf("%s: sni = %q, want %q", tc.name, sni, tt.wantSNI)
				}
				if !bytes.HasPrefix(data, prefix) || len(prefix) < len(tc.data) {
					t.Errorf("%s: prefix is %d bytes, not the %d bytes of the hello (or a prefix of the stream)", tc.name, len(prefix), len(tc.data))
				}
			}
		})
	}
}

func TestPeekClientHelloReplayToRealServer(t *testing.T) {
	cert := selfSigned(t, "db.internal")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	clientErr := make(chan error, 1)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "db.internal", InsecureSkipVerify: true})
		if err != nil {
			clientErr <- err
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			clientErr <- err
			return
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			clientErr <- err
			return
		}
		if string(buf) != "pong" {
			clientErr <- errors.New("got " + string(buf))
			return
		}
		clientErr <- nil
	}()

	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sni, prefix, err := PeekClientHello(raw, 2*time.Second)
	if err != nil || sni != "db.internal" {
		t.Fatalf("PeekClientHello = %q, %v; want db.internal, nil", sni, err)
	}
	// The deadline must be cleared: the handshake below would otherwise run
	// into it after the sleep.
	srv := tls.Server(&replayConn{Conn: raw, r: io.MultiReader(bytes.NewReader(prefix), raw)}, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := srv.Handshake(); err != nil {
		t.Fatalf("server handshake over the replayed bytes: %v", err)
	}
	if got := srv.ConnectionState().ServerName; got != sni {
		t.Errorf("crypto/tls saw server name %q, PeekClientHello %q", got, sni)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if _, err := srv.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := <-clientErr; err != nil {
		t.Fatalf("client: %v", err)
	}
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func selfSigned(tb testing.TB, name string) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestPeekClientHelloNotTLS(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "db.internal", InsecureSkipVerify: true})
	badType := append([]byte(nil), hello...)
	badType[recordHeaderLen] = 2 // server_hello
	tooLong := append([]byte(nil), hello[:recordHeaderLen+4]...)
	tooLong[recordHeaderLen+1] = 1 // message length >= 64 KiB
	badVersion := append([]byte(nil), hello...)
	badVersion[2] = 9
	tests := []struct {
		name string
		data []byte
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: db.internal\r\n\r\n")},
		{"redis", []byte("*1\r\n$4\r\nPING\r\n")},
		{"one byte", []byte{0x00}},
		{"ssl3 record major", []byte{0x16, 0x02}},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}},
		{"alert record", []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}},
		{"not a client hello", badType},
		{"hello over the cap", tooLong},
		{"bad minor version", badVersion},
		{"zero-length record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}},
		{"record over 16 KiB", []byte{0x16, 0x03, 0x01, 0x40, 0x01}},
		{"change cipher spec inside hello", append(refragment(t, hello, 100)[:105], 0x14, 3, 3, 0, 1, 1)},
		{"garbage hello body", []byte{0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, chunk := range []int{0, 1} {
				conn := feed(t, tt.data, chunk, false)
				start := time.Now()
				sni, prefix, err := PeekClientHello(conn, 3*time.Second)
				if err != nil || sni != "" {
					t.Fatalf("chunk %d: = %q, %v; want \"\", nil", chunk, sni, err)
				}
				if len(prefix) == 0 || !bytes.HasPrefix(tt.data, prefix) {
					t.Errorf("chunk %d: prefix %q is not a non-empty prefix of the input", chunk, prefix)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("chunk %d: took %v: must not wait for the timeout", chunk, d)
				}
			}
		})
	}
}

func TestPeekClientHelloTimeout(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "db.internal", InsecureSkipVerify: true})
	tests := []struct {
		name string
		data []byte
	}{
		{"silent client", nil},
		{"partial header", hello[:3]},
		{"partial hello", hello[:len(hello)/2]},
		{"first of several records", refragment(t, hello, 64)[:69]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			go c1.Write(tt.data)
			start := time.Now()
			sni, prefix, err := PeekClientHello(c2, 100*time.Millisecond)
			if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
				t.Errorf("returned after %v, want about 100ms", d)
			}
			if err != nil || sni != "" || !bytes.Equal(prefix, tt.data) {
				t.Fatalf("= %q, %d bytes, %v; want \"\", the %d bytes sent, nil", sni, len(prefix), err, len(tt.data))
			}
			// the deadline is cleared: a later read waits for data, not for the past deadline
			go func() {
				time.Sleep(150 * time.Millisecond)
				c1.Write([]byte("x"))
			}()
			buf := make([]byte, 1)
			if _, err := c2.Read(buf); err != nil {
				t.Fatalf("read after PeekClientHello: %v (deadline not cleared?)", err)
			}
		})
	}
}

func TestPeekClientHelloCloseAndErrors(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "db.internal", InsecureSkipVerify: true})

	t.Run("closed at once", func(t *testing.T) {
		conn := feed(t, nil, 0, true)
		sni, prefix, err := PeekClientHello(conn, time.Second)
		if !errors.Is(err, io.EOF) || sni != "" || len(prefix) != 0 {
			t.Fatalf("= %q, %q, %v; want \"\", empty, io.EOF", sni, prefix, err)
		}
	})
	t.Run("closed mid-hello", func(t *testing.T) {
		conn := feed(t, hello[:20], 1, true)
		sni, prefix, err := PeekClientHello(conn, time.Second)
		if err != nil || sni != "" || !bytes.Equal(prefix, hello[:20]) {
			t.Fatalf("= %q, %d bytes, %v; want \"\", 20 bytes, nil", sni, len(prefix), err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		reset := errors.New("connection reset by peer")
		conn := &scriptConn{data: hello[:30], chunk: 10, err: reset}
		sni, prefix, err := PeekClientHello(conn, time.Second)
		if !errors.Is(err, reset) || sni != "" || !bytes.Equal(prefix, hello[:30]) {
			t.Fatalf("= %q, %d bytes, %v; want \"\", 30 bytes, the reset", sni, len(prefix), err)
		}
		if !conn.deadline.IsZero() {
			t.Errorf("read deadline left at %v", conn.deadline)
		}
	})
	t.Run("hello then error", func(t *testing.T) {
		conn := &scriptConn{data: hello, chunk: len(hello), err: errors.New("reset")}
		sni, _, err := PeekClientHello(conn, time.Second)
		if err != nil || sni != "db.internal" {
			t.Fatalf("= %q, %v; want db.internal, nil (the error shows on the next read)", sni, err)
		}
	})
	t.Run("endless records stop at the cap", func(t *testing.T) {
		// a hello announced as 16 KiB, sent in 1-byte records: more than maxPeek bytes
		body := make([]byte, maxHelloLen)
		msg := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
		var recs []byte
		for _, b := range msg {
			recs = append(recs, 0x16, 3, 1, 0, 1, b)
		}
		conn := &scriptConn{data: recs, chunk: 4096}
		sni, prefix, err := PeekClientHello(conn, time.Second)
		if err != nil || sni != "" || len(prefix) != maxPeek {
			t.Fatalf("= %q, %d bytes, %v; want \"\", %d bytes, nil", sni, len(prefix), err, maxPeek)
		}
	})
}

// scriptConn returns data in chunks of chunk bytes, then err (io.EOF if nil).
type scriptConn struct {
	net.Conn
	mu       sync.Mutex
	data     []byte
	chunk    int
	err      error
	deadline time.Time
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.data) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		return 0, io.EOF
	}
	n := copy(p, c.data[:min(c.chunk, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

func (c *scriptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// FuzzPeekClientHello checks that any input, cut into any segments, neither
// panics nor loses bytes, and that the server name does not depend on how the
// bytes were segmented.
func FuzzPeekClientHello(f *testing.F) {
	for _, cfg := range []*tls.Config{
		{ServerName: "db.internal", InsecureSkipVerify: true},
		{ServerName: "api.svc.test", MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true},
		{InsecureSkipVerify: true},
	} {
		h := captureHello(f, cfg)
		f.Add(h, uint8(0))
		f.Add(refragment(f, h, 50), uint8(3))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(1))
	f.Add([]byte{0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		whole := &scriptConn{data: data, chunk: len(data) + 1}
		sni1, prefix1, err1 := PeekClientHello(whole, time.Second)
		cut := &scriptConn{data: data, chunk: int(chunk)%17 + 1}
		sni2, prefix2, err2 := PeekClientHello(cut, time.Second)
		for _, r := range []struct {
			sni    string
			prefix []byte
			err    error
		}{{sni1, prefix1, err1}, {sni2, prefix2, err2}} {
			if !bytes.HasPrefix(data, r.prefix) {
				t.Fatalf("prefix %q is not a prefix of the input", r.prefix)
			}
			if len(r.prefix) > maxPeek {
				t.Fatalf("read %d bytes, cap is %d", len(r.prefix), maxPeek)
			}
			if r.err != nil && (!errors.Is(r.err, io.EOF) || len(data) != 0) {
				t.Fatalf("err = %v for %d bytes", r.err, len(data))
			}
			if r.sni != "" && !validHostName([]byte(r.sni)) {
				t.Fatalf("invalid server name %q", r.sni)
			}
		}
		if sni1 != sni2 {
			t.Fatalf("sni %q in one read, %q in %d-byte segments", sni1, sni2, int(chunk)%17+1)
		}
	})
}
