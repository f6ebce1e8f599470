package l4handler

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/tcpproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// refuseMany counts n concurrent refusals of kind r at second now, writing the
// lines the limiter lets through.
func refuseMany(l *refusalLog, logger *zap.Logger, r refusal, now int64, n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if ce, count := l.checkAt(logger, r, now); ce != nil {
				ce.Write(zap.Int64("count", count))
			}
		})
	}
	wg.Wait()
}

// counts returns the "count" field of every logged line.
func counts(t *testing.T, entries []observer.LoggedEntry) []int64 {
	t.Helper()
	var out []int64
	for _, e := range entries {
		c, ok := e.ContextMap()["count"].(int64)
		if !ok {
			t.Fatalf("line %q without a count: %v", e.Message, e.ContextMap())
		}
		out = append(out, c)
	}
	return out
}

func TestRefusalLogOneLinePerSecond(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	var l refusalLog
	// the first refusal ever writes at once; the other 999 of that second wait
	refuseMany(&l, logger, refusedAccess, 100, 1000)
	if got := counts(t, logs.TakeAll()); len(got) != 1 || got[0] < 1 {
		t.Fatalf("second 100: lines with counts %v, want one line", got)
	}
	// the next second's first refusal carries the suppressed ones and itself
	l2 := refusalLog{}
	refuseMany(&l2, logger, refusedAccess, 100, 1)
	logs.TakeAll()
	refuseMany(&l2, logger, refusedAccess, 100, 999)
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d lines for refusals in an already logged second", n)
	}
	refuseMany(&l2, logger, refusedAccess, 101, 500)
	got := counts(t, logs.TakeAll())
	if len(got) != 1 {
		t.Fatalf("second 101: lines with counts %v, want one line", got)
	}
	// the 999 suppressed plus at least the writer itself; the others of
	// second 101 may come before or after the swap
	if got[0] < 1000 || got[0] > 1499 {
		t.Fatalf("second 101: count %d, want 1000..1499", got[0])
	}
	// a flush a second later writes the rest: every refusal counted once
	l2.flush(logger, 102)
	rest := counts(t, logs.TakeAll())
	total := got[0]
	for _, c := range rest {
		total += c
	}
	if total != 1499 {
		t.Fatalf("counts %v then %v sum to %d, want 1499 (1 was logged at second 100)", got, rest, total)
	}
	// nothing pending: flush writes nothing
	l2.flush(logger, 103)
	if n := logs.Len(); n != 0 {
		t.Fatalf("flush with nothing pending wrote %d lines", n)
	}
}

func TestRefusalLogFlushRespectsTheSecond(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	var l refusalLog
	refuseMany(&l, logger, refusedMaxConns, 50, 1) // line, count 1
	refuseMany(&l, logger, refusedMaxConns, 50, 7) // suppressed
	l.flush(logger, 50)                            // same second: no line
	if got := counts(t, logs.TakeAll()); len(got) != 1 || got[0] != 1 {
		t.Fatalf("lines %v, want one with count 1", got)
	}
	l.flush(logger, 51)
	if got := counts(t, logs.TakeAll()); len(got) != 1 || got[0] != 7 {
		t.Fatalf("flush at the next second: lines %v, want one with count 7", got)
	}
	refuseMany(&l, logger, refusedMaxConns, 51, 3) // the flush took second 51
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d lines in the second a flush already wrote", n)
	}
	refuseMany(&l, logger, refusedMaxConns, 52, 1)
	if got := counts(t, logs.TakeAll()); len(got) != 1 || got[0] != 4 {
		t.Fatalf("second 52: lines %v, want one with count 4", got)
	}
}

func TestRefusalKinds(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	var l refusalLog
	now := int64(10)
	for _, tc := range []struct {
		err    string
		kind   refusal
		msg    string
		level  zapcore.Level
		reason string
	}{
		{"", refusedProxyHeader, "client refused: reading its PROXY header", zapcore.WarnLevel, ""},
		{"", refusedAccess, "client denied by access rules", zapcore.InfoLevel, ""},
		{"", refusedMaxConns, "client refused: handler at max_connections", zapcore.WarnLevel, ""},
		{"no backends discovered", refusedNoBackends, "client refused", zapcore.WarnLevel, "no backends discovered"},
		{"no healthy backends", refusedUnhealthy, "client refused", zapcore.WarnLevel, "no healthy backends"},
		{"all eligible backends are at max_connections", refusedBackendsFull, "client refused", zapcore.WarnLevel, "all eligible backends are at max_connections"},
		{"no backend matches SNI a.test", refusedNoSNI, "client refused", zapcore.WarnLevel, "no backend matches the client's SNI"},
		{"client sent no SNI and no backend serves clients without one", refusedNoSNI, "client refused", zapcore.WarnLevel, "no backend matches the client's SNI"},
		{"dial failed on every tried backend: connection refused", refusedDialFailed, "client refused", zapcore.WarnLevel, "dial failed on every tried backend"},
		{"no eligible backend", refusedOther, "client refused", zapcore.WarnLevel, "no eligible backend"},
	} {
		now += 2
		if tc.err != "" {
			if got := refusalKind(errors.New(tc.err)); got != tc.kind {
				t.Errorf("refusalKind(%q) = %d, want %d", tc.err, got, tc.kind)
			}
		}
		// each kind has its own budget: all of them write in the same second
		refuseMany(&l, logger, tc.kind, now, 1)
		e := logs.TakeAll()
		if len(e) != 1 || e[0].Message != tc.msg || e[0].Level != tc.level || e[0].ContextMap()["count"] != int64(1) {
			t.Fatalf("kind %d: lines %v, want one %q at %s with count 1", tc.kind, e, tc.msg, tc.level)
		}
		// two more in the same second: no line until the flush counts them
		refuseMany(&l, logger, tc.kind, now, 2)
		if e := logs.TakeAll(); len(e) != 0 {
			t.Fatalf("kind %d: a second line in the same second: %v", tc.kind, e)
		}
		l.flush(logger, now+1)
		e = logs.TakeAll()
		if len(e) != 1 || e[0].Message != tc.msg || e[0].ContextMap()["count"] != int64(2) {
			t.Fatalf("kind %d flush: lines %v, want one %q with count 2", tc.kind, e, tc.msg)
		}
		if r, _ := e[0].ContextMap()["reason"].(string); r != tc.reason {
			t.Errorf("kind %d flush: reason %q, want %q", tc.kind, r, tc.reason)
		}
	}
}

func TestRefusalLogDisabledLevel(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	logger := zap.New(core)
	var l refusalLog
	if ce, _ := l.checkAt(logger, refusedMaxConns, 1); ce != nil {
		t.Fatal("an entry at a disabled level")
	}
	if allocs := testing.AllocsPerRun(100, func() { l.check(logger, refusedAccess) }); allocs != 0 {
		t.Errorf("%v allocations per refusal", allocs)
	}
	if logs.Len() != 0 {
		t.Fatal("lines written at a disabled level")
	}
}

func TestAccessLine(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	h := &Handler{access: zap.New(core).With(zap.String("handler", "web")).Named(accessLoggerName)}
	b := &backend.Backend{Host: "10.0.0.1", Port: "8080"}
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	start := time.Now().Add(-1500 * time.Millisecond)
	for _, tc := range []struct {
		res    tcpproxy.Result
		reason string
		err    string
	}{
		{tcpproxy.Result{Tx: 10, Rx: 20, ClosedBy: "client"}, "client closed", ""},
		{tcpproxy.Result{Tx: 10, Rx: 20, ClosedBy: "backend"}, "backend closed", ""},
		{tcpproxy.Result{Tx: 10, Rx: 20}, "closed", ""},
		{tcpproxy.Result{Tx: 1, Idle: true}, "idle timeout", ""},
		{tcpproxy.Result{Rx: 3, Err: errors.New("connection reset by peer")}, "error", "connection reset by peer"},
	} {
		h.logAccess(client, b, start, tc.res)
		e := logs.TakeAll()
		if len(e) != 1 {
			t.Fatalf("%d lines, want 1", len(e))
		}
		m := e[0].ContextMap()
		if e[0].Message != "connection closed" || e[0].Level != zapcore.InfoLevel || e[0].LoggerName != "access" {
			t.Errorf("entry %q at %s on %q", e[0].Message, e[0].Level, e[0].LoggerName)
		}
		if m["client"] != "192.0.2.7:40000" || m["handler"] != "web" || m["backend"] != "10.0.0.1:8080" ||
			m["tx"] != tc.res.Tx || m["rx"] != tc.res.Rx || m["close_reason"] != tc.reason {
			t.Errorf("fields %v", m)
		}
		if d, _ := m["duration"].(time.Duration); d < 1500*time.Millisecond || d > time.Minute {
			t.Errorf("duration %v, want about 1.5s", m["duration"])
		}
		if got, _ := m["error"].(string); got != tc.err {
			t.Errorf("error %q, want %q", got, tc.err)
		}
	}
}

func TestAccessLineDisabledAllocatesNothing(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	h := &Handler{access: zap.New(core).Named(accessLoggerName)}
	b := &backend.Backend{Host: "10.0.0.1", Port: "8080"}
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	start := time.Now()
	res := tcpproxy.Result{Tx: 1, Rx: 2}
	if allocs := testing.AllocsPerRun(100, func() { h.logAccess(client, b, start, res) }); allocs != 0 {
		t.Errorf("%v allocations per connection with the access log off", allocs)
	}
	if logs.Len() != 0 {
		t.Fatal("access lines below the level")
	}
}
