package e2e

// Hostile input: 10 000 half-open connections, garbage and oversized
// ClientHellos, non-TLS bytes to a TLS-terminating route, maximum-size
// datagrams, a UDP flood from 20 000 source addresses and abusive admin API
// requests. Each time other clients keep being served and memory stays
// bounded.

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestHostile(t *testing.T) {
	t.Run("slowloris", testHostileSlowloris)
	t.Run("bad ClientHello", testHostileClientHello)
	t.Run("non-TLS to tls handler", testHostileNonTLS)
	t.Run("65507-byte datagrams", testHostileBigDatagrams)
	t.Run("spoofed UDP flood", testHostileUDPFlood)
	t.Run("admin API abuse", testHostileAdmin)
}

// Memory bounds (RSS growth over the figure before the abuse). Measured on
// the 2-core CI machine: slowloris +146..156 MiB (10 000 connections, 2 000
// of them proxied), flood +27..36 MiB, Between's admin endpoints
// (they read at most 1 MiB of a body) a few MiB, Caddy's POST /load +390
// MiB for a 50 MB body (Caddy reads the whole body into a pooled buffer and
// decodes it twice; no limit).
const (
	slowlorisRSSBoundMiB = 300
	floodRSSBoundMiB     = 100
	adminRSSBoundMiB     = 64
	loadRSSBoundMiB      = 768
)

// clientHello returns the first TLS record Go's client sends for
// serverName: a complete ClientHello.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// askWith connects to addr, sends payload and returns the first line.
func askWith(addr string, payload []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return "", err
	}
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return string(line), err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
}

// raiseNofile lifts the test process's soft fd limit to at least want (up to
// the hard limit) and fails when the hard limit is lower.
func raiseNofile(t *testing.T, want uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= want {
		return
	}
	if rl.Max < want {
		t.Fatalf("RLIMIT_NOFILE hard limit %d < %d needed", rl.Max, want)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
}

// legitLoad asks each of checks every 20ms until stop and returns how many
// asks were made, the failures and the slowest answer.
func legitLoad(checks []func() error, stop <-chan struct{}) <-chan legitResult {
	out := make(chan legitResult, 1)
	go func() {
		var r legitResult
		for {
			select {
			case <-stop:
				out <- r
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, check := range checks {
				start := time.Now()
				err := check()
				r.asks++
				r.slowest = max(r.slowest, time.Since(start))
				if err != nil {
					r.failed = append(r.failed, err.Error())
				}
			}
		}
	}()
	return out
}

type legitResult struct {
	asks    int
	failed  []string
	slowest time.Duration
}

func (r legitResult) check(t *testing.T, during string) {
	t.Helper()
	if len(r.failed) > 0 {
		t.Errorf("during %s: %d of %d legitimate requests failed, first: %s", during, len(r.failed), r.asks, r.failed[0])
	}
	if r.asks == 0 {
		t.Errorf("during %s: no legitimate request was made", during)
	}
}

// 10 000 half-open connections: 5 000 that send nothing to a handler with
// client_idle_timeout 2s and max_connections 2000, 5 000 that send the
// first 20 bytes of a ClientHello to an SNI route with read_timeout 2s.
func testHostileSlowloris(t *testing.T) {
	const (
		perRoute = 5000
		maxConns = 2000
	)
	raiseNofile(t, 2*perRoute+maxConns+1000)
	echo := echoBackend(t)
	sniBE := nameBackend(t, "sni-a")
	ok := nameBackend(t, "ok")
	plain, sniAddr, okAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	c := startCaddy(t, between(map[string]any{
		"slow": map[string]any{
			"listen": []string{shared(plain)}, "discovery": map[string]any{"kind": "static", "static_list": []string{echo.addr}},
			"client_idle_timeout": "2s", "max_connections": maxConns,
		},
		"slowsni": map[string]any{
			"listen": []string{shared(sniAddr)}, "discovery": map[string]any{"kind": "static", "static_list": []string{sniBE.addr + " sni=a.test"}},
			"sni": map[string]any{"read_timeout": "2s", "unexpected_hostname_strategy": "reject"},
		},
		"ok": staticServer(shared(okAddr), ok.addr),
	}))
	hello := clientHello(t, "a.test")
	checks := []func() error{
		func() error {
			s, err := ask(okAddr)
			if err == nil && s != "ok" {
				err = fmt.Errorf("other handler answered %q", s)
			}
			return err
		},
		func() error {
			s, err := askWith(sniAddr, hello)
			if err == nil && s != "sni-a" {
				err = fmt.Errorf("SNI route answered %q", s)
			}
			return err
		},
	}
	for _, check := range checks {
		if err := check(); err != nil {
			t.Fatalf("before the flood: %v", err)
		}
	}
	base := c.figures(t)

	stop := make(chan struct{})
	legit := legitLoad(checks, stop)
	rssStop := make(chan struct{})
	rss := rssSampler(c.pid(), 100*time.Millisecond, rssStop)
	conns := make([]net.Conn, 0, 2*perRoute)
	var mu sync.Mutex
	var dialFail atomic.Int64
	var firstDialErr atomic.Value
	var wg sync.WaitGroup
	next := atomic.Int64{}
	start := time.Now()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= 2*perRoute {
					return
				}
				target, partial := plain, []byte(nil)
				if i%2 == 1 {
					target, partial = sniAddr, hello[:20]
				}
				nc, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					dialFail.Add(1)
					firstDialErr.CompareAndSwap(nil, err)
					continue
				}
				if partial != nil {
					nc.Write(partial)
				}
				mu.Lock()
				conns = append(conns, nc)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	opened := time.Since(start)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	peakFds := c.fds(t)
	// the timeouts are 2s: every half-open connection is closed by caddy
	// well within 20s (caddy's fds back to the baseline)
	after, back := c.waitBaseline(t, base, 20*time.Second)
	reaped := time.Since(start)
	close(stop)
	lr := <-legit
	close(rssStop)
	samples := <-rss
	peak := slices.Max(samples)
	// client side: every connection is closed (a read returns at once)
	stillOpen := func(wait time.Duration) []net.Conn {
		var open []net.Conn
		for _, nc := range conns {
			nc.SetReadDeadline(time.Now().Add(wait))
			if _, err := io.Copy(io.Discard, nc); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					open = append(open, nc)
				}
			}
		}
		return open
	}
	total := len(conns)
	openConns := stillOpen(time.Millisecond)
	if len(openConns) > 0 { // a FIN may still be on its way: look again, longer
		conns = openConns
		openConns = stillOpen(time.Second)
	}
	open := len(openConns)
	var openDesc []string
	for _, nc := range openConns {
		openDesc = append(openDesc, nc.LocalAddr().String()+"->"+nc.RemoteAddr().String())
	}
	refused := cmpGetStats(t, c, "slow").RefusedConnections
	t.Logf("slowloris: %d half-open connections opened in %s (%d dials failed), caddy fds peak %d; reaped to %s in %s, %d still open at the client; "+
		"refused by max_connections %d; RSS base %.1f MiB, peak %.1f MiB (+%.1f); legitimate requests %d, failed %d, slowest %s",
		total, opened.Round(time.Millisecond), dialFail.Load(), peakFds, after, reaped.Round(time.Millisecond), open,
		refused, float64(base.rssKiB)/1024, float64(peak)/1024, float64(peak-base.rssKiB)/1024, lr.asks, len(lr.failed), lr.slowest.Round(time.Millisecond))
	if err, _ := firstDialErr.Load().(error); err != nil {
		t.Errorf("%d of %d dials failed, first: %v", dialFail.Load(), 2*perRoute, err)
	}
	lr.check(t, "the slowloris")
	if !back {
		_, prof := c.goroutineProfile(t)
		t.Errorf("half-open connections not reaped within 20s: %s, baseline %s; goroutines:%s", after, base, topStacks(prof, 6))
	}
	if open > 0 {
		t.Errorf("%d connections still open at the client after caddy reaped: %v\ncaddy's fds:%s", open, openDesc, fdReport(c.pid()))
	}
	// how many are over the cap depends on how fast they open (the first
	// ones idle out after 2s), but with 5 000 in a few seconds some are
	if refused == 0 {
		t.Errorf("refused_connections of the handler with max_connections %d = 0 after %d connections", maxConns, perRoute)
	}
	if peak-base.rssKiB > slowlorisRSSBoundMiB<<10 {
		t.Errorf("RSS grew by %.1f MiB during the slowloris, bound %d MiB", float64(peak-base.rssKiB)/1024, slowlorisRSSBoundMiB)
	}
	// the capped handler serves again
	if _, err := echoOnce(plain, []byte("after\n")); err != nil {
		t.Errorf("the capped handler after the flood: %v", err)
	}
}

// hostilePayloads are what a broken or malicious client sends where a
// ClientHello is expected.
func hostilePayloads(t *testing.T) map[string][]byte {
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	garbage[0] = 'G' // not a TLS handshake record
	// a record header claiming 20 KiB (TLS allows 16 KiB), then 20 KiB
	tooLong := append([]byte{0x16, 0x03, 0x01, 0x50, 0x00}, make([]byte, 20480)...)
	rand.Read(tooLong[5:])
	// a well-formed record of 16 KiB whose handshake claims 16 MiB, and a
	// second record of garbage: 20 KiB of garbled ClientHello
	garbled := []byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff}
	garbled = append(garbled, make([]byte, 0x4000-4)...)
	rand.Read(garbled[9:])
	garbled = append(garbled, 0x16, 0x03, 0x01, 0x10, 0x00)
	tail := make([]byte, 0x1000)
	rand.Read(tail)
	garbled = append(garbled, tail...)
	return map[string][]byte{
		"garbage":                          garbage,
		"20 KiB record":                    tooLong,
		"garbled 20 KiB CH":                garbled,
		"HTTP request":                     []byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
		"truncated ClientHello then close": clientHello(t, "a.test")[:40],
	}
}

// sendExpectClosed sends payload (then half-closes when closeWrite) and
// waits for the server to close without sending a byte of the backend's;
// it returns how long that took.
func sendExpectClosed(t *testing.T, addr string, payload []byte, closeWrite bool, forbidden string) time.Duration {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	c.Write(payload) // the server may close before it has read it all
	if closeWrite {
		c.(*net.TCPConn).CloseWrite()
	}
	got, err := io.ReadAll(c)
	d := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connection still open %s after the payload", d.Round(time.Millisecond))
	}
	if forbidden != "" && strings.Contains(string(got), forbidden) {
		t.Errorf("the backend answered (%q) a hostile payload", got)
	}
	return d
}

// Garbage and oversized or garbled ClientHellos to an SNI route (Between's
// own peek, strategy reject) and to a route of caddy-l4's tls matcher: each
// is closed, caddy does not crash, the legitimate client is served.
func testHostileClientHello(t *testing.T) {
	peekBE, matchBE := nameBackend(t, "peeked"), nameBackend(t, "matched")
	peek, match := freeAddr(t), freeAddr(t)
	l4 := betweenServers(map[string]any{"peek": map[string]any{
		"listen":    []string{shared(peek)},
		"discovery": map[string]any{"kind": "static", "static_list": []string{peekBE.addr + " sni=a.test"}},
		"sni":       map[string]any{"read_timeout": "1s", "unexpected_hostname_strategy": "reject"},
	}})
	l4["match"] = map[string]any{
		"listen": []string{shared(match)},
		"routes": []any{map[string]any{
			"match":  []any{map[string]any{"tls": map[string]any{"sni": []string{"a.test"}}}},
			"handle": []any{cmpHandler("matched", nil, matchBE.addr)},
		}},
	}
	c := startCaddy(t, layer4(l4))
	hello := clientHello(t, "a.test")
	for _, r := range []struct{ addr, name string }{{peek, "peeked"}, {match, "matched"}} {
		if s, err := askWith(r.addr, hello); err != nil || s != r.name {
			t.Fatalf("a real ClientHello to %s: %q, %v", r.name, s, err)
		}
	}
	p0, m0 := peekBE.count(), matchBE.count()
	var times []string
	for name, payload := range hostilePayloads(t) {
		for _, r := range []struct{ addr, route, backend string }{{peek, "between sni peek", "peeked"}, {match, "caddy-l4 tls matcher", "matched"}} {
			d := sendExpectClosed(t, r.addr, payload, strings.Contains(name, "close"), r.backend)
			times = append(times, fmt.Sprintf("%s/%s %s", r.route, name, d.Round(time.Millisecond)))
		}
	}
	slices.Sort(times)
	t.Logf("bad ClientHellos closed after: %s", strings.Join(times, "; "))
	if p, m := peekBE.count()-p0, matchBE.count()-m0; p != 0 || m != 0 {
		t.Errorf("hostile ClientHellos reached the backends: %d at the SNI-peek backend, %d at the tls-matcher backend", p, m)
	}
	for _, r := range []struct{ addr, name string }{{peek, "peeked"}, {match, "matched"}} {
		if s, err := askWith(r.addr, hello); err != nil || s != r.name {
			t.Errorf("a real ClientHello to %s after the garbage: %q, %v", r.name, s, err)
		}
	}
	if strings.Contains(c.logs(), "panic") {
		t.Errorf("caddy logged a panic")
	}
}

// Non-TLS bytes to a route whose first handler is caddy-l4's tls handler:
// closed, nothing reaches the backend.
func testHostileNonTLS(t *testing.T) {
	cert := cmpNewCert(t, "secure.test")
	certFile, keyFile := cert.files(t)
	be := echoBackend(t)
	addr := freeAddr(t)
	startCaddy(t, cmpApps(shared(addr), []map[string]any{{
		"handle": []any{map[string]any{"handler": "tls"}, cmpHandler("term", nil, be.addr)},
	}}, map[string]any{
		"tls": map[string]any{"certificates": map[string]any{
			"load_files": []any{map[string]any{"certificate": certFile, "key": keyFile}},
		}},
	}))
	// served over TLS
	waitFor(t, 10*time.Second, "a TLS client to be served", func() bool {
		s, err := echoOverTLS(addr, "secure.test", cert.pool)
		return err == nil && s != ""
	})
	var times []string
	for name, payload := range map[string][]byte{
		"HTTP request": []byte("GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n"),
		"SSH banner":   []byte("SSH-2.0-OpenSSH_9.6\r\n"),
		"random 4 KiB": func() []byte { b := make([]byte, 4096); rand.Read(b); b[0] = 0; return b }(),
	} {
		d := sendExpectClosed(t, addr, payload, false, string(payload[:min(len(payload), 8)]))
		times = append(times, fmt.Sprintf("%s %s", name, d.Round(time.Millisecond)))
	}
	slices.Sort(times)
	t.Logf("non-TLS bytes to the tls handler closed after: %s", strings.Join(times, "; "))
	if n := be.count(); n != 1 {
		t.Errorf("the backend got %d connections, want 1 (only the TLS client's)", n)
	}
	if s, err := echoOverTLS(addr, "secure.test", cert.pool); err != nil || s == "" {
		t.Errorf("a TLS client after the garbage: %q, %v", s, err)
	}
}

// 65 507-byte datagrams (the IPv4 maximum) through between+udp to an echo
// backend come back intact.
func testHostileBigDatagrams(t *testing.T) {
	be := udpEchoServer(t, 1)
	addr := freeUDPAddr(t)
	startUDP(t, "big", udpServer("between+udp/"+addr, nil, map[string]any{"client_idle_timeout": "5s"}, be))
	cl := dialUDP(t, addr)
	cl.SetReadBuffer(1 << 20)
	udpAskRetry(t, cl, "warm")
	buf := make([]byte, 70000)
	for i := range 10 {
		msg := make([]byte, 65507)
		rand.Read(msg)
		if _, err := cl.Write(msg); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := cl.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d of 65507 bytes: no echo: %v", i, err)
		}
		if n != len(msg) || string(buf[:n]) != string(msg) {
			t.Fatalf("datagram %d: echo of %d bytes, sent 65507 (first difference at %d)", i, n, firstDiff(buf[:min(n, len(msg))], msg[:min(n, len(msg))]))
		}
	}
	t.Logf("10 datagrams of 65507 bytes echoed intact through between+udp")
}

// A UDP flood from 20 000 source addresses (127.x.y.z: all of 127/8 is
// local on Linux) against max_sessions 1000: the drops are counted, a
// client that holds a session keeps getting answers, memory stays bounded,
// and the sessions expire afterwards.
func testHostileUDPFlood(t *testing.T) {
	const (
		sources     = 20000
		maxSessions = 1000
	)
	be := udpEchoServer(t, 2)
	addr := freeUDPAddr(t)
	lb := mustAddrPort(t, addr)
	c := startUDP(t, "flood", udpServer("between+udp/"+addr, map[string]any{"max_sessions": maxSessions}, map[string]any{"client_idle_timeout": "3s"}, be))
	cl := dialUDP(t, addr)
	udpAskRetry(t, cl, "warm")
	base := c.figures(t)
	kernel0, _ := udpSocketDrops(portOf(addr))
	m0 := c.scrape(t)
	h0, l0 := udpDrops(m0, "flood", "max_sessions")
	sessions0 := metricSum(m0, "between_server_connections_total", `server="flood"`)

	stop := make(chan struct{})
	// the legitimate client retransmits once after a second without an
	// answer, as DNS clients do; both lost fails
	var retried atomic.Int64
	legit := legitLoad([]func() error{func() error {
		if _, err := cl.Write([]byte("legit")); err != nil {
			return err
		}
		if _, err := udpRead(cl, time.Second); err == nil {
			return nil
		}
		retried.Add(1)
		_, err := udpAsk(cl, "legit again", 1)
		return err
	}}, stop)
	rssStop := make(chan struct{})
	rss := rssSampler(c.pid(), 100*time.Millisecond, rssStop)
	var wg sync.WaitGroup
	var sent, bindFail atomic.Int64
	next := atomic.Int64{}
	start := time.Now()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			payload := []byte("spoofed")
			for next.Add(1) <= sources {
				src := net.IPv4(127, byte(100+r.IntN(100)), byte(r.IntN(256)), byte(1+r.IntN(254)))
				pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: src})
				if err != nil {
					bindFail.Add(1)
					continue
				}
				if _, err := pc.WriteToUDPAddrPort(payload, lb); err == nil {
					sent.Add(1)
				}
				pc.Close()
				if sent.Load()%4 == 0 { // paced near what the listener reads, not far past it
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	flooded := time.Since(start)
	// the counters settle once the listener has read every queued datagram
	var h, l float64
	for settle := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ph, pl := h, l
		h, l = udpDrops(c.scrape(t), "flood", "max_sessions")
		if (h == ph && l == pl && h+l > 0) || time.Now().After(settle) {
			break
		}
	}
	m := c.scrape(t)
	active := metricSum(m, "between_udp_sessions_active", `server="flood"`)
	// sessions idle out after 3s during the flood and make room for new
	// ones: every datagram is either a new session or a drop
	accepted := metricSum(m, "between_server_connections_total", `server="flood"`) - sessions0
	close(stop)
	lr := <-legit
	close(rssStop)
	peak := slices.Max(<-rss)
	kernel1, _ := udpSocketDrops(portOf(addr))
	dropped := h - h0 + l - l0
	t.Logf("spoofed UDP flood: %d datagrams from distinct sources in %s (%d binds failed) against max_sessions %d: "+
		"dropped for max_sessions %g (handler %g, listener %g), sessions accepted %g, kernel socket drops %d, sessions active after %g; "+
		"RSS base %.1f MiB, peak %.1f MiB (+%.1f); legitimate client %d asks, %d retransmitted, %d failed, slowest %s",
		sent.Load(), flooded.Round(time.Millisecond), bindFail.Load(), maxSessions, dropped, h-h0, l-l0, accepted, kernel1-kernel0, active,
		float64(base.rssKiB)/1024, float64(peak)/1024, float64(peak-base.rssKiB)/1024, lr.asks, retried.Load(), len(lr.failed), lr.slowest.Round(time.Millisecond))
	lr.check(t, "the flood")
	if len(lr.failed) > 0 {
		t.Logf("UDP metrics after the flood:\n%s", udpMetricLines(m))
	}
	if want := float64(sent.Load()) - float64(kernel1-kernel0); dropped+accepted < want*0.99 || dropped+accepted > want {
		t.Errorf("dropped for max_sessions %g + sessions accepted %g, want %g (sent %d - kernel drops %d)", dropped, accepted, want, sent.Load(), kernel1-kernel0)
	}
	if dropped < float64(sent.Load())/2 {
		t.Errorf("only %g of %d datagrams from new sources dropped for max_sessions %d", dropped, sent.Load(), maxSessions)
	}
	if active > maxSessions {
		t.Errorf("sessions active %g > max_sessions %d", active, maxSessions)
	}
	if peak-base.rssKiB > floodRSSBoundMiB<<10 {
		t.Errorf("RSS grew by %.1f MiB during the flood, bound %d MiB", float64(peak-base.rssKiB)/1024, floodRSSBoundMiB)
	}
	// the spoofed sessions idle out; a new client is served again
	c.waitSessions(t, "flood", 0, 15*time.Second)
	if _, err := udpAsk(dialUDP(t, addr), "new client", 1); err != nil {
		t.Errorf("a new client after the flood: %v", err)
	}
	if after, ok := c.waitBaseline(t, base, 15*time.Second); !ok {
		t.Errorf("after the flood: %s, baseline %s", after, base)
	}
}

// Malformed JSON, a 50 MB body and deeply nested JSON to Between's admin
// endpoints and to Caddy's /load: 4xx with {"error": ...}, the running
// config unchanged and still serving, memory bounded.
func testHostileAdmin(t *testing.T) {
	be := nameBackend(t, "adm")
	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"adm": staticServer(shared(addr), be.addr)}))
	getConfig := func() string {
		resp, err := adminClient.Get("http://" + c.admin + "/config/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	cfg0 := getConfig()
	base := c.figures(t)

	huge := "{\"listen\":[\"" + strings.Repeat("a", 50<<20) + "\"]}"
	deep := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	deepArr := strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20)
	bodies := []struct{ name, body string }{
		{"malformed", `{"listen": ["between+tcp/127.0.0.1:1"], "discovery": {`},
		{"not an object", `[1,2,3]`},
		{"50 MB", huge},
		{"nested objects 100000 deep", deep},
		{"nested arrays 1M deep", deepArr},
	}
	var shapes []string
	// one phase for Between's endpoints, one for Caddy's /load, each with
	// its own memory figure
	phase := func(targets ...[2]string) int64 {
		rssStop := make(chan struct{})
		rss := rssSampler(c.pid(), 50*time.Millisecond, rssStop)
		for _, target := range targets {
			for _, b := range bodies {
				req, err := http.NewRequest(target[0], "http://"+c.admin+target[1], strings.NewReader(b.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/json")
				start := time.Now()
				resp, err := adminClient.Do(req)
				if err != nil {
					// a server that answers 4xx and closes before it read a
					// body over its limit (4 KiB for .../state, 1 MiB for
					// /between/servers) may reset the client's write: that
					// rejects it too
					if len(b.body) > 4<<10 && (isReset(err) || errors.Is(err, syscall.EPIPE)) {
						shapes = append(shapes, fmt.Sprintf("%s %s %s: connection reset while sending", target[0], target[1], b.name))
						continue
					}
					t.Errorf("%s %s (%s): %v", target[0], target[1], b.name, err)
					continue
				}
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
				resp.Body.Close()
				var e struct {
					Error string `json:"error"`
				}
				jerr := json.Unmarshal(body, &e)
				if resp.StatusCode < 400 || resp.StatusCode >= 500 || jerr != nil || e.Error == "" {
					t.Errorf("%s %s (%s): %d %.200s; want 4xx with {\"error\": ...}", target[0], target[1], b.name, resp.StatusCode, body)
				}
				// Between's endpoints name a body over their limit as such
				if strings.HasPrefix(target[1], "/between/") && len(b.body) > 1<<20 && resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Errorf("%s %s (%s): %d %.200s; want 413", target[0], target[1], b.name, resp.StatusCode, body)
				}
				shapes = append(shapes, fmt.Sprintf("%s %s %s: %d in %s", target[0], target[1], b.name, resp.StatusCode, time.Since(start).Round(time.Millisecond)))
				if s, err := ask(addr); err != nil || s != "adm" {
					t.Fatalf("after %s %s (%s): the running config answers %q, %v", target[0], target[1], b.name, s, err)
				}
			}
		}
		close(rssStop)
		return slices.Max(<-rss)
	}
	peakBetween := phase(
		[2]string{"POST", "/between/servers/x"},
		[2]string{"PUT", "/between/servers/adm"},
		[2]string{"PUT", "/between/servers/adm/backends/" + be.addr + "/state"},
	)
	peakLoad := phase([2]string{"POST", "/load"})
	if cfg := getConfig(); cfg != cfg0 {
		t.Errorf("the running config changed:\nbefore %s\nafter  %s", cfg0, cfg)
	}
	t.Logf("admin API abuse: RSS base %.1f MiB, peak %.1f MiB (+%.1f) on Between's endpoints, %.1f MiB (+%.1f) on Caddy's /load; %s",
		float64(base.rssKiB)/1024, float64(peakBetween)/1024, float64(peakBetween-base.rssKiB)/1024,
		float64(peakLoad)/1024, float64(peakLoad-base.rssKiB)/1024, strings.Join(shapes, "; "))
	if peakBetween-base.rssKiB > adminRSSBoundMiB<<10 {
		t.Errorf("RSS grew by %.1f MiB on Between's admin endpoints, bound %d MiB (they read at most 1 MiB)", float64(peakBetween-base.rssKiB)/1024, adminRSSBoundMiB)
	}
	if peakLoad-base.rssKiB > loadRSSBoundMiB<<10 {
		t.Errorf("RSS grew by %.1f MiB on POST /load, bound %d MiB", float64(peakLoad-base.rssKiB)/1024, loadRSSBoundMiB)
	}
}
