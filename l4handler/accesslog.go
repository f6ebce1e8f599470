package l4handler

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/tcpproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The access log: one line per served connection, at INFO, on the logger
// named "layer4.handlers.between.access" so that Caddy's logging config can
// exclude it or route it elsewhere.

// accessLoggerName is appended to the handler's logger name (which Caddy sets
// to the module ID, layer4.handlers.between).
const accessLoggerName = "access"

// logAccess writes the access line of a connection that reached backend b.
// It builds no field unless INFO is enabled on the access logger.
func (h *Handler) logAccess(client netip.AddrPort, b *backend.Backend, start time.Time, res tcpproxy.Result) {
	ce := h.access.Check(zapcore.InfoLevel, "connection closed")
	if ce == nil {
		return
	}
	ce.Write(zap.Stringer("client", client), zap.String("backend", b.Address()),
		zap.Duration("duration", time.Since(start)), zap.Int64("rx", res.Rx), zap.Int64("tx", res.Tx),
		zap.String("close_reason", closeReason(res)), zap.Error(res.Err))
}

// closeReason names why a proxied session ended: "client closed" or
// "backend closed" (whose end of stream came first), "idle timeout", "error".
func closeReason(res tcpproxy.Result) string {
	switch {
	case res.Err != nil:
		return "error"
	case res.Idle:
		return "idle timeout"
	case res.ClosedBy != "":
		return res.ClosedBy + " closed"
	}
	return "closed"
}

// refusal is a kind of refused client; each kind is rate-limited on its own.
type refusal uint8

const (
	refusedProxyHeader  refusal = iota // reading the PROXY header failed
	refusedAccess                      // denied by the access rules
	refusedMaxConns                    // the handler is at max_connections
	refusedNoBackends                  // discovery found no backend
	refusedUnhealthy                   // no healthy backend
	refusedBackendsFull                // every eligible backend is at max_connections
	refusedNoSNI                       // no backend for the client's server name (or its lack of one)
	refusedDialFailed                  // dialing every tried backend failed
	refusedOther                       // any other election error
	refusedMaxSessions                 // UDP: handler at udp.max_sessions
	refusedBackendSend                 // UDP: a backend socket could not be opened or written
	refusedBackendDial                 // TCP: one dial failed (the client may be served by a retry)
	numRefusals
)

// refusalKinds gives each refusal its message, level and (for the kinds
// logged as "client refused") the reason a flushed line carries.
var refusalKinds = [numRefusals]struct {
	msg, reason string
	level       zapcore.Level
}{
	refusedProxyHeader:  {"client refused: reading its PROXY header", "", zapcore.WarnLevel},
	refusedAccess:       {"client denied by access rules", "", zapcore.InfoLevel},
	refusedMaxConns:     {"client refused: handler at max_connections", "", zapcore.WarnLevel},
	refusedNoBackends:   {"client refused", "no backends discovered", zapcore.WarnLevel},
	refusedUnhealthy:    {"client refused", "no healthy backends", zapcore.WarnLevel},
	refusedBackendsFull: {"client refused", "all eligible backends are at max_connections", zapcore.WarnLevel},
	refusedNoSNI:        {"client refused", "no backend matches the client's SNI", zapcore.WarnLevel},
	refusedDialFailed:   {"client refused", "dial failed on every tried backend", zapcore.WarnLevel},
	refusedOther:        {"client refused", "no eligible backend", zapcore.WarnLevel},
	refusedMaxSessions:  {"client refused: handler at udp.max_sessions", "", zapcore.WarnLevel},
	refusedBackendSend:  {"backend send failed", "", zapcore.WarnLevel},
	refusedBackendDial:  {"backend dial failed", "", zapcore.WarnLevel},
}

// refusalKind classifies a reason connect returned.
func refusalKind(err error) refusal {
	s := err.Error()
	switch {
	case s == "no backends discovered":
		return refusedNoBackends
	case s == "no healthy backends":
		return refusedUnhealthy
	case strings.HasPrefix(s, "all eligible backends are at max_connections"):
		return refusedBackendsFull
	case strings.HasPrefix(s, "no backend matches SNI"), strings.HasPrefix(s, "client sent no SNI"):
		return refusedNoSNI
	case strings.HasPrefix(s, "dial failed"):
		return refusedDialFailed
	}
	return refusedOther
}

// refusalLog rate-limits the refusal lines of one handler: at most one line
// per kind per second, carrying in "count" the refusals of that kind since
// the previous line (the suppressed ones and its own). It takes no lock: per
// kind, the refusal that moves the kind's second forward (a CAS) writes the
// line with the count it swaps out. Refusals left uncounted when a flood stops
// are written by flush, which the state's sampling goroutine calls every
// second. The zero value is ready.
type refusalLog struct {
	kinds [numRefusals]refusalCounter
}

type refusalCounter struct {
	sec atomic.Int64 // unix second of the last line
	n   atomic.Int64 // refusals since the last line
}

// check counts one refusal of kind r and returns the entry to write (with
// the count for its "count" field) when this refusal is the kind's first in
// the current second and the level is enabled; else nil.
func (l *refusalLog) check(logger *zap.Logger, r refusal) (*zapcore.CheckedEntry, int64) {
	return l.checkAt(logger, r, time.Now().Unix())
}

func (l *refusalLog) checkAt(logger *zap.Logger, r refusal, now int64) (*zapcore.CheckedEntry, int64) {
	c := &l.kinds[r]
	c.n.Add(1)
	last := c.sec.Load()
	if now <= last || !c.sec.CompareAndSwap(last, now) {
		return nil, 0
	}
	n := c.n.Swap(0)
	k := &refusalKinds[r]
	return logger.Check(k.level, k.msg), n
}

// flush writes, for every kind with refusals not yet in a line and no line
// in the current second, a line with their count (and, for "client refused"
// kinds, the kind's generic reason).
func (l *refusalLog) flush(logger *zap.Logger, now int64) {
	for r := range numRefusals {
		c := &l.kinds[r]
		if c.n.Load() == 0 {
			continue
		}
		last := c.sec.Load()
		if now <= last || !c.sec.CompareAndSwap(last, now) {
			continue
		}
		n := c.n.Swap(0)
		if n == 0 {
			continue
		}
		k := &refusalKinds[r]
		if ce := logger.Check(k.level, k.msg); ce != nil {
			if k.reason != "" {
				ce.Write(zap.String("reason", k.reason), zap.Int64("count", n))
			} else {
				ce.Write(zap.Int64("count", n))
			}
		}
	}
}
