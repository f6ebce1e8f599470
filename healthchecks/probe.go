package healthchecks

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Probe{})
}

// Probe connects to the backend, sends probe_send and checks the reply
// against probe_recv, like gobetween's probe check. It works for TCP, TLS and
// UDP services (Redis "PING", SMTP banners, DNS queries, ...).
type Probe struct {
	Common
	// Transport of the probe: "tcp" (default), "udp" or "tls". With "tls" the
	// probe completes a TLS handshake WITHOUT verifying the certificate
	// (backends are usually addressed by IP); the server name sent is the
	// backend's sni, else its host.
	Protocol string `json:"probe_protocol,omitempty"`
	// Bytes to send after connecting, written with Go string escapes
	// ("PING\r\n", "\x00\x01"). Empty: send nothing (tcp and tls only).
	// Required for udp.
	Send string `json:"probe_send,omitempty"`
	// The expected reply. With probe_strategy "starts_with" it is written with
	// Go string escapes like probe_send and the reply must begin with it; empty
	// means a successful connect (and send) is enough. With "regexp" it is an
	// RE2 regular expression (its own escapes, such as \x00, \r and \d, apply)
	// matched against the bytes read so far; required. Required for udp.
	Recv string `json:"probe_recv,omitempty"`
	// The most bytes to read with probe_strategy "regexp"; default 512, at
	// most 1048576. starts_with reads exactly as many bytes as probe_recv has.
	RecvLen int `json:"probe_recv_len,omitempty"`
	// How to compare the reply: "starts_with" (default) or "regexp".
	Strategy string `json:"probe_strategy,omitempty"`

	send, recv []byte
	re         *regexp.Regexp
	recvLen    int
}

// DefaultProbeRecvLen is probe_recv_len when it is not set.
const DefaultProbeRecvLen = 512

const maxProbeRecvLen = 1 << 20

// CaddyModule returns the Caddy module information.
func (Probe) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.healthchecks.probe",
		New: func() caddy.Module { return new(Probe) },
	}
}

// Provision decodes the strings and compiles the regular expression.
func (p *Probe) Provision(caddy.Context) error {
	var err error
	if p.send, err = Unescape(p.Send); err != nil {
		return fmt.Errorf("probe_send %q: %w", p.Send, err)
	}
	p.re, p.recv = nil, nil
	if p.Strategy == "regexp" {
		if p.re, err = regexp.Compile(p.Recv); err != nil {
			return fmt.Errorf("probe_recv %q: %w", p.Recv, err)
		}
	} else if p.recv, err = Unescape(p.Recv); err != nil {
		return fmt.Errorf("probe_recv %q: %w", p.Recv, err)
	}
	p.recvLen = p.RecvLen
	if p.recvLen == 0 {
		p.recvLen = DefaultProbeRecvLen
	}
	return nil
}

// Validate checks the settings.
func (p *Probe) Validate() error {
	switch p.Protocol {
	case "", "tcp", "tls", "udp":
	default:
		return fmt.Errorf("probe_protocol %q: want tcp, udp or tls", p.Protocol)
	}
	switch p.Strategy {
	case "", "starts_with", "regexp":
	default:
		return fmt.Errorf("probe_strategy %q: want starts_with or regexp", p.Strategy)
	}
	if p.RecvLen < 0 || p.RecvLen > maxProbeRecvLen {
		return fmt.Errorf("probe_recv_len %d: want 1-%d (0 = default %d)", p.RecvLen, maxProbeRecvLen, DefaultProbeRecvLen)
	}
	if p.Strategy == "regexp" && p.Recv == "" {
		return fmt.Errorf("probe_recv: required with probe_strategy regexp")
	}
	if p.Protocol == "udp" {
		if p.Send == "" {
			return fmt.Errorf("probe_send: required with probe_protocol udp")
		}
		if p.Recv == "" {
			return fmt.Errorf("probe_recv: required with probe_protocol udp")
		}
	}
	return p.ValidateCommon()
}

// Check connects, sends and compares the reply.
func (p *Probe) Check(ctx context.Context, b *backend.Backend) error {
	conn, err := p.dial(ctx, b)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// The deadline gives "i/o timeout" errors that say which step hung; a
	// cancellation without deadline still has to interrupt the I/O.
	stop := context.AfterFunc(ctx, func() {
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			conn.Close()
		}
	})
	defer stop()

	if len(p.send) > 0 {
		if _, err := conn.Write(p.send); err != nil {
			return fmt.Errorf("probe send: %w", err)
		}
	}
	udp := p.Protocol == "udp"
	if p.re != nil {
		return p.matchRegexp(conn, udp)
	}
	if len(p.recv) == 0 {
		return nil
	}
	var got []byte
	if udp {
		buf := make([]byte, 65535)
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("probe read: %w", err)
		}
		got = buf[:n]
	} else {
		buf := make([]byte, len(p.recv))
		n, err := io.ReadFull(conn, buf)
		got = buf[:n]
		if err != nil && !bytes.Equal(got, p.recv) {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return fmt.Errorf("probe read: connection closed after %q, want %q", got, p.recv)
			}
			return fmt.Errorf("probe read after %q: %w", got, err)
		}
	}
	if !bytes.HasPrefix(got, p.recv) {
		return fmt.Errorf("probe reply %q does not start with %q", clip(got, len(p.recv)+16), p.recv)
	}
	return nil
}

// matchRegexp reads up to recvLen bytes (one datagram for udp) and succeeds as
// soon as the bytes read so far match.
func (p *Probe) matchRegexp(conn net.Conn, udp bool) error {
	if udp {
		buf := make([]byte, 65535)
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("probe read: %w", err)
		}
		got := buf[:min(n, p.recvLen)]
		if !p.re.Match(got) {
			return fmt.Errorf("probe reply %q does not match %q", clip(got, 64), p.Recv)
		}
		return nil
	}
	buf := make([]byte, p.recvLen)
	n := 0
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		n += m
		if m > 0 && p.re.Match(buf[:n]) {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("probe reply %q (closed) does not match %q", clip(buf[:n], 64), p.Recv)
			}
			return fmt.Errorf("probe read after %q: %w", clip(buf[:n], 64), err)
		}
	}
	return fmt.Errorf("probe reply %q (probe_recv_len %d bytes) does not match %q", clip(buf[:n], 64), n, p.Recv)
}

func (p *Probe) dial(ctx context.Context, b *backend.Backend) (net.Conn, error) {
	switch p.Protocol {
	case "udp":
		var d net.Dialer
		return d.DialContext(ctx, "udp", b.Address())
	case "tls":
		name := b.SNI
		if name == "" {
			name = b.Host
		}
		d := tls.Dialer{Config: &tls.Config{
			ServerName:         name,
			InsecureSkipVerify: true, // documented: backends are addressed by IP
		}}
		return d.DialContext(ctx, "tcp", b.Address())
	default:
		var d net.Dialer
		return d.DialContext(ctx, "tcp", b.Address())
	}
}

// clip shortens b for error messages.
func clip(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// UnmarshalCaddyfile reads
//
//	healthcheck probe {
//		interval 2s
//		protocol tcp|udp|tls
//		send "PING\r\n"
//		recv "+PONG"
//		recv_len 512
//		strategy starts_with|regexp
//		... common subdirectives (timeout, fails, passes, initial_status, port)
//	}
//
// The probe_ prefix is dropped; the full JSON names are accepted too.
func (p *Probe) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return p.unmarshalBlock(d, func(name string) (bool, error) {
		switch name {
		case "protocol", "probe_protocol":
			return true, stringArg(d, &p.Protocol)
		case "send", "probe_send":
			return true, stringArg(d, &p.Send)
		case "recv", "probe_recv":
			return true, stringArg(d, &p.Recv)
		case "strategy", "probe_strategy":
			return true, stringArg(d, &p.Strategy)
		case "recv_len", "probe_recv_len":
			return true, intArg(d, &p.RecvLen)
		}
		return false, nil
	})
}

var (
	_ Configured            = (*Probe)(nil)
	_ caddy.Provisioner     = (*Probe)(nil)
	_ caddy.Validator       = (*Probe)(nil)
	_ caddyfile.Unmarshaler = (*Probe)(nil)
)
