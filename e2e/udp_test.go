package e2e

// UDP through the between handler: the limits of gobetween's virtual sessions
// (max_requests 1 and 3, max_responses 2, idle timeouts, max_sessions) on
// Between's shared between+udp/ listener and on caddy-l4's stock udp/ one,
// with in-process UDP backends that record which proxy socket each datagram
// came from (a new virtual session is a new backend socket, so a new source
// port). Shared helpers of the other e2e/udp_*_test.go files live here too:
// the UDP backends, client helpers, metric sums and the caddy process's
// goroutine, fd and memory figures.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// udpKinds are the two kinds of UDP listen addresses: Between's shared
// socket and session table (between+udp/), and caddy-l4's stock packet
// server (udp/, a new SO_REUSEPORT socket per config).
var udpKinds = []struct{ name, prefix string }{
	{"between+udp", "between+udp/"},
	{"udp", "udp/"},
}

// freeUDPAddr is "127.0.0.1:PORT" with a UDP port that was free a moment ago.
func freeUDPAddr(t testing.TB) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// udpServer is a between server config on listen with round robin over
// backends and the given udp block (none when nil) and other handler fields.
func udpServer(listen string, udp map[string]any, fields map[string]any, backends ...string) map[string]any {
	s := staticServer(listen, backends...)
	s["balance"] = map[string]any{"policy": "roundrobin"}
	if udp != nil {
		s["udp"] = udp
	}
	for k, v := range fields {
		s[k] = v
	}
	return s
}

// udpRecv is one datagram a udpBackend received.
type udpRecv struct {
	from    netip.AddrPort // the proxy's socket it came from
	payload string
}

// udpBackend is an in-process UDP backend on 127.0.0.1. For every datagram
// it records the sender and the payload and answers `replies` datagrams
// "NAME PAYLOAD K" (K = 1..replies); with replies 0 it answers nothing.
type udpBackend struct {
	name    string
	addr    string
	replies int
	conn    *net.UDPConn

	mu  sync.Mutex
	got []udpRecv
}

func newUDPBackend(t testing.TB, name string, replies int) *udpBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &udpBackend{name: name, addr: c.LocalAddr().String(), replies: replies, conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := string(buf[:n])
			b.mu.Lock()
			b.got = append(b.got, udpRecv{from, p})
			b.mu.Unlock()
			for k := 1; k <= b.replies; k++ {
				c.WriteToUDPAddrPort([]byte(fmt.Sprintf("%s %s %d", name, p, k)), from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return b
}

// received returns what the backend got so far.
func (b *udpBackend) received() []udpRecv {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]udpRecv(nil), b.got...)
}

// udpEchoServer is a plain in-process UDP echo server on 127.0.0.1 for load:
// `readers` goroutines copy every datagram back to its sender.
func udpEchoServer(t testing.TB, readers int) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().String()
}

// dialUDP opens a connected client socket to addr.
func dialUDP(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// udpRead reads one datagram within timeout.
func udpRead(c *net.UDPConn, timeout time.Duration) (string, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// udpAsk sends msg and reads n replies (each within 2 s).
func udpAsk(c *net.UDPConn, msg string, n int) ([]string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return nil, err
	}
	var out []string
	for range n {
		r, err := udpRead(c, 2*time.Second)
		if err != nil {
			return out, fmt.Errorf("after %d of %d replies to %q: %w", len(out), n, msg, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// udpAskRetry is udpAsk until the first answer arrives: the first datagram
// may reach a listener that is still starting (deadline 5 s).
func udpAskRetry(t testing.TB, c *net.UDPConn, msg string) string {
	t.Helper()
	var got string
	waitFor(t, 5*time.Second, "an answer to "+msg, func() bool {
		r, err := udpAsk(c, msg, 1)
		if err != nil {
			return false
		}
		got = r[0]
		return true
	})
	// a reply to an earlier try may still come: drain it
	for {
		if _, err := udpRead(c, 100*time.Millisecond); err != nil {
			return got
		}
	}
}

// expectSilence asserts that nothing arrives on c within d (a bounded wait
// for something that must not happen).
func expectSilence(t testing.TB, c *net.UDPConn, d time.Duration, what string) {
	t.Helper()
	if r, err := udpRead(c, d); err == nil {
		t.Errorf("%s: got %q, want nothing", what, r)
	}
}

// metricSum adds the samples of the metric called name (as scrape keys them)
// whose labels contain every one of labels (e.g. `reason="max_sessions"`).
func metricSum(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(k, l)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// udpDrops returns the datagrams Between counted as dropped: by the handler
// named server (between_udp_dropped_packets_total) and by every between+udp
// listener (between_udp_listener_dropped_packets_total), each for the given
// reason or all reasons when reason is "".
func udpDrops(m map[string]float64, server, reason string) (handler, listener float64) {
	var r []string
	if reason != "" {
		r = []string{`reason="` + reason + `"`}
	}
	handler = metricSum(m, "between_udp_dropped_packets_total", append(r, `server="`+server+`"`)...)
	listener = metricSum(m, "between_udp_listener_dropped_packets_total", r...)
	return
}

// udpMetricLines returns scrape's between_udp_ samples, sorted, for logs.
func udpMetricLines(m map[string]float64) string {
	var l []string
	for k, v := range m {
		if strings.HasPrefix(k, "between_udp_") {
			l = append(l, fmt.Sprintf("%s %g", k, v))
		}
	}
	sort.Strings(l)
	return strings.Join(l, "\n")
}

// sessionsActive is between_udp_sessions_active of the handler named server.
func (c *instance) sessionsActive(t testing.TB, server string) float64 {
	return metricSum(c.scrape(t), "between_udp_sessions_active", `server="`+server+`"`)
}

// waitSessions waits until the handler's open virtual sessions are want.
func (c *instance) waitSessions(t testing.TB, server string, want float64, timeout time.Duration) {
	t.Helper()
	var got float64
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if got = c.sessionsActive(t, server); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("between_udp_sessions_active{server=%q} = %g after %s, want %g", server, got, timeout, want)
}

// procFigures are a process's open fds, goroutines and resident memory.
type procFigures struct {
	fds, goroutines int
	rssKiB          int64
}

func (p procFigures) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %.1f MiB RSS", p.fds, p.goroutines, float64(p.rssKiB)/1024)
}

// pid is the caddy process's id.
func (c *instance) pid() int { return c.cmd.Process.Pid }

// fds counts the caddy process's open file descriptors (/proc/PID/fd).
func (c *instance) fds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c.pid()))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// rssKiB is the caddy process's VmRSS in KiB.
func (c *instance) rssKiB(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// goroutineProfile returns caddy's goroutine profile in pprof's debug=1 text
// form (from the admin endpoint's /debug/pprof/) and its total.
func (c *instance) goroutineProfile(t testing.TB) (int, string) {
	t.Helper()
	resp, err := adminClient.Get("http://" + c.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /debug/pprof/goroutine: %d %s", resp.StatusCode, body)
	}
	first, _, _ := strings.Cut(string(body), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		t.Fatalf("goroutine profile starts with %q", first)
	}
	return n, string(body)
}

// figures samples fds, goroutines and RSS of the caddy process.
func (c *instance) figures(t testing.TB) procFigures {
	t.Helper()
	g, _ := c.goroutineProfile(t)
	return procFigures{fds: c.fds(t), goroutines: g, rssKiB: c.rssKiB(t)}
}

// Tolerances for "back to baseline": the admin request that measures is
// itself a connection (an fd and a few goroutines, maybe one more kept by
// a previous request that Caddy has not closed yet).
const (
	fdSlack        = 4
	goroutineSlack = 8
)

// waitBaseline polls until fds and goroutines are within the slack of base,
// and returns the last figures and whether they got there before timeout.
func (c *instance) waitBaseline(t testing.TB, base procFigures, timeout time.Duration) (procFigures, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := c.figures(t)
		if now.fds <= base.fds+fdSlack && now.goroutines <= base.goroutines+goroutineSlack {
			return now, true
		}
		if time.Now().After(deadline) {
			return now, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// topStacks summarizes a debug=1 goroutine profile: the n largest groups,
// each as its count and the first frames of its stack.
func topStacks(profile string, n int) string {
	type group struct {
		count int
		text  string
	}
	var groups []group
	if strings.HasPrefix(profile, "goroutine profile:") {
		_, profile, _ = strings.Cut(profile, "\n")
	}
	for _, block := range strings.Split(profile, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 {
			continue
		}
		head := strings.Fields(lines[0]) // "N @ 0x... 0x..."
		if len(head) < 2 || head[1] != "@" {
			continue
		}
		cnt, err := strconv.Atoi(head[0])
		if err != nil {
			continue
		}
		var frames []string
		for _, l := range lines[1:] {
			f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "#"))
			if len(f) >= 2 && !strings.HasPrefix(f[1], "runtime.") && !strings.HasPrefix(f[1], "internal/") {
				fr := f[1]
				if len(frames) == 0 && len(f) >= 3 { // where the group waits
					fr += " (" + f[2][strings.LastIndexByte(f[2], '/')+1:] + ")"
				}
				frames = append(frames, fr)
			}
			if len(frames) == 3 {
				break
			}
		}
		groups = append(groups, group{cnt, strings.Join(frames, " < ")})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].count > groups[j].count })
	var b strings.Builder
	for i, g := range groups {
		if i == n {
			break
		}
		fmt.Fprintf(&b, "\n  %5d  %s", g.count, g.text)
	}
	return b.String()
}

// startUDP starts caddy with one between server "name" (a layer4 server of
// that name whose one route is the handler).
func startUDP(t *testing.T, name string, srv map[string]any) *instance {
	t.Helper()
	return startCaddy(t, between(map[string]any{name: srv}))
}

// sourcePorts returns the distinct proxy source ports in recs, in order of
// first appearance, and how many datagrams came from each.
func sourcePorts(recs []udpRecv) ([]uint16, map[uint16]int) {
	var order []uint16
	count := map[uint16]int{}
	for _, r := range recs {
		p := r.from.Port()
		if count[p] == 0 {
			order = append(order, p)
		}
		count[p]++
	}
	return order, count
}

func TestUDPLimits(t *testing.T) {
	for _, kind := range udpKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Run("max_requests=1", func(t *testing.T) { testUDPFireAndForget(t, kind.prefix) })
			t.Run("max_requests=3", func(t *testing.T) { testUDPMaxRequests(t, kind.prefix) })
			t.Run("max_responses=2", func(t *testing.T) { testUDPMaxResponses(t, kind.prefix) })
			t.Run("idle", func(t *testing.T) { testUDPIdle(t, kind.prefix) })
			t.Run("max_sessions", func(t *testing.T) { testUDPMaxSessions(t, kind.prefix) })
		})
	}
}

// max_requests 1 is fire-and-forget: every datagram is elected on its own
// (round robin alternates), each backend sees one shared proxy socket, and
// replies are dropped.
func testUDPFireAndForget(t *testing.T, prefix string) {
	a, b := newUDPBackend(t, "a", 1), newUDPBackend(t, "b", 1)
	addr := freeUDPAddr(t)
	c := startUDP(t, "ff", udpServer(prefix+addr, map[string]any{"max_requests": 1}, nil, a.addr, b.addr))
	cl := dialUDP(t, addr)
	// the listener may still be coming up: wait until a first datagram arrives
	waitFor(t, 5*time.Second, "a first datagram at a backend", func() bool {
		cl.Write([]byte("probe"))
		time.Sleep(50 * time.Millisecond)
		return len(a.received())+len(b.received()) > 0
	})
	waitFor(t, 2*time.Second, "the probes to settle", func() bool {
		n := len(a.received()) + len(b.received())
		time.Sleep(100 * time.Millisecond)
		return n == len(a.received())+len(b.received())
	})
	a0, b0 := len(a.received()), len(b.received())
	const n = 10
	for i := range n {
		if _, err := cl.Write([]byte(fmt.Sprintf("ff-%d", i))); err != nil {
			t.Fatal(err)
		}
		// one at a time, so the order of election is the order of sending
		waitFor(t, 2*time.Second, fmt.Sprintf("datagram %d at a backend", i), func() bool {
			return len(a.received())+len(b.received()) == a0+b0+i+1
		})
	}
	ra, rb := a.received()[a0:], b.received()[b0:]
	if len(ra) != n/2 || len(rb) != n/2 {
		t.Errorf("fire-and-forget: a got %d, b got %d of %d datagrams; want round robin per datagram (5 and 5)", len(ra), len(rb), n)
	}
	for _, recs := range [][]udpRecv{a.received(), b.received()} {
		if ports, _ := sourcePorts(recs); len(ports) != 1 {
			t.Errorf("fire-and-forget: a backend saw %d proxy sockets %v, want one shared socket", len(ports), ports)
		}
	}
	expectSilence(t, cl, 300*time.Millisecond, "fire-and-forget relays no replies")
	m := c.scrape(t)
	if in := metricSum(m, "between_udp_packets_total", `server="ff"`, `direction="in"`); in < n {
		t.Errorf("between_udp_packets_total{direction=in} = %g, want >= %d\n%s", in, n, udpMetricLines(m))
	}
	if out := metricSum(m, "between_udp_packets_total", `server="ff"`, `direction="out"`); out != 0 {
		t.Errorf("between_udp_packets_total{direction=out} = %g, want 0 (replies dropped)", out)
	}
}

// max_requests 3: a virtual session takes 3 datagrams over one backend
// socket, the 4th elects again (round robin: a, b, a), every reply arrives.
func testUDPMaxRequests(t *testing.T, prefix string) {
	a, b := newUDPBackend(t, "a", 1), newUDPBackend(t, "b", 1)
	addr := freeUDPAddr(t)
	startUDP(t, "mr", udpServer(prefix+addr, map[string]any{"max_requests": 3}, map[string]any{"client_idle_timeout": "30s"}, a.addr, b.addr))
	warm := dialUDP(t, addr) // another client brings the listener up
	x := strings.Fields(udpAskRetry(t, warm, "warm"))[0]
	warm.Close()
	a0, b0 := len(a.received()), len(b.received())
	// round robin goes by address order: the warm-up took x, this client's
	// sessions go to the other one, x, the other one
	o := map[string]string{"a": "b", "b": "a"}[x]

	cl := dialUDP(t, addr)
	var answers []string
	for i := range 9 {
		r, err := udpAsk(cl, fmt.Sprintf("mr-%d", i), 1)
		if err != nil {
			t.Fatalf("max_requests 3: %v", err)
		}
		answers = append(answers, strings.Fields(r[0])[0])
	}
	want := strings.Repeat(o+" ", 3) + strings.Repeat(x+" ", 3) + strings.Repeat(o+" ", 2) + o
	if got := strings.Join(answers, " "); got != want {
		t.Errorf("max_requests 3: datagrams answered by %q, want %q (3 per session, round robin)", got, want)
	}
	pa, ca := sourcePorts(a.received()[a0:])
	pb, cb := sourcePorts(b.received()[b0:])
	if sessions := map[string]int{"a": len(pa), "b": len(pb)}; sessions[o] != 2 || sessions[x] != 1 {
		t.Errorf("max_requests 3: proxy sockets seen by a %v (%v), by b %v (%v); want 2 sessions at %s and 1 at %s", pa, ca, pb, cb, o, x)
	}
	for _, cnt := range []map[uint16]int{ca, cb} {
		for p, k := range cnt {
			if k != 3 {
				t.Errorf("max_requests 3: proxy socket %d carried %d datagrams, want 3", p, k)
			}
		}
	}
}

// max_responses 2: the backend answers 3 times per datagram; the session
// relays 2, ends, and the client's next datagram starts a new one on the
// other backend and is not lost.
func testUDPMaxResponses(t *testing.T, prefix string) {
	a, b := newUDPBackend(t, "a", 3), newUDPBackend(t, "b", 3)
	addr := freeUDPAddr(t)
	c := startUDP(t, "mresp", udpServer(prefix+addr, map[string]any{"max_responses": 2}, map[string]any{"client_idle_timeout": "30s"}, a.addr, b.addr))
	warm := dialUDP(t, addr)
	x := strings.Fields(udpAskRetry(t, warm, "warm"))[0] // its later replies are drained
	warm.Close()
	o := map[string]string{"a": "b", "b": "a"}[x]

	cl := dialUDP(t, addr)
	var from []string
	for i := range 4 {
		msg := fmt.Sprintf("q-%d", i)
		r, err := udpAsk(cl, msg, 2)
		if err != nil {
			t.Fatalf("max_responses 2: %v", err)
		}
		for k, line := range r {
			f := strings.Fields(line)
			if len(f) != 3 || f[1] != msg || f[2] != strconv.Itoa(k+1) {
				t.Fatalf("max_responses 2: reply %d to %s = %q", k+1, msg, line)
			}
		}
		from = append(from, strings.Fields(r[0])[0])
		// the third reply of the backend is not relayed
		expectSilence(t, cl, 200*time.Millisecond, "the third reply after max_responses 2")
	}
	if got, want := strings.Join(from, " "), strings.Join([]string{o, x, o, x}, " "); got != want {
		t.Errorf("max_responses 2: sessions went to %q, want %q (a new election per datagram, the warm-up took %s)", got, want, x)
	}
	c.waitSessions(t, "mresp", 0, 5*time.Second)
}

// Idle timeouts: a session that saw nothing for the smaller idle timeout
// ends (sessions back to 0) and the next datagram opens a new one.
func testUDPIdle(t *testing.T, prefix string) {
	for _, field := range []string{"client_idle_timeout", "backend_idle_timeout"} {
		t.Run(field, func(t *testing.T) {
			a := newUDPBackend(t, "a", 1)
			addr := freeUDPAddr(t)
			const idle = 700 * time.Millisecond
			c := startUDP(t, "idle", udpServer(prefix+addr, nil, map[string]any{field: idle.String()}, a.addr))
			cl := dialUDP(t, addr)
			udpAskRetry(t, cl, "first")
			// traffic inside the timeout keeps the session (one backend socket)
			for i := range 4 {
				time.Sleep(idle / 3)
				if _, err := udpAsk(cl, fmt.Sprintf("keep-%d", i), 1); err != nil {
					t.Fatal(err)
				}
			}
			ports, _ := sourcePorts(a.received())
			if len(ports) != 1 {
				t.Errorf("%s: traffic every %s made %d sessions, want 1", field, idle/3, len(ports))
			}
			if s := c.sessionsActive(t, "idle"); s != 1 {
				t.Errorf("%s: sessions active during traffic = %g, want 1", field, s)
			}
			ended := time.Now()
			c.waitSessions(t, "idle", 0, idle+5*time.Second)
			if d := time.Since(ended); d < idle/2 {
				t.Errorf("%s: the session ended %s after the last datagram, want about %s", field, d, idle)
			}
			if _, err := udpAsk(cl, "after idle", 1); err != nil {
				t.Fatalf("%s: the datagram after the idle end: %v", field, err)
			}
			if ports, _ := sourcePorts(a.received()); len(ports) != 2 {
				t.Errorf("%s: after the idle end the backend saw %d sessions, want 2", field, len(ports))
			}
		})
	}
}

// max_sessions 5: 5 clients hold sessions, 3 more are dropped and counted
// (reason max_sessions, by the handler or the between+udp listener), the 5
// still work.
func testUDPMaxSessions(t *testing.T, prefix string) {
	a := newUDPBackend(t, "a", 1)
	addr := freeUDPAddr(t)
	c := startUDP(t, "cap", udpServer(prefix+addr, map[string]any{"max_sessions": 5}, map[string]any{"client_idle_timeout": "30s"}, a.addr))
	var held []*net.UDPConn
	for i := range 5 {
		cl := dialUDP(t, addr)
		udpAskRetry(t, cl, fmt.Sprintf("held-%d", i))
		held = append(held, cl)
	}
	h0, l0 := udpDrops(c.scrape(t), "cap", "max_sessions")
	for i := range 3 {
		cl := dialUDP(t, addr)
		if _, err := cl.Write([]byte(fmt.Sprintf("over-%d", i))); err != nil {
			t.Fatal(err)
		}
		expectSilence(t, cl, 300*time.Millisecond, "a client over max_sessions")
	}
	var h, l float64
	waitFor(t, 3*time.Second, "3 drops counted with reason max_sessions", func() bool {
		h, l = udpDrops(c.scrape(t), "cap", "max_sessions")
		return h-h0+l-l0 >= 3
	})
	if h-h0+l-l0 != 3 {
		t.Errorf("drops with reason max_sessions: handler %g, listener %g; want 3 in all", h-h0, l-l0)
	}
	t.Logf("max_sessions drops: handler %g, listener %g", h-h0, l-l0)
	for i, cl := range held {
		if _, err := udpAsk(cl, fmt.Sprintf("still-%d", i), 1); err != nil {
			t.Errorf("held client %d after the overflow: %v", i, err)
		}
	}
}

// udpScanMetrics is scrape for tests that hold no *testing.T of the
// instance's test (a goroutine): it returns an error instead of failing.
func udpScanMetrics(admin string) (map[string]float64, error) {
	resp, err := adminClient.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "between_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d", resp.StatusCode)
	}
	return out, sc.Err()
}

// udpRoundRobin sends n datagrams, one at a time, on client and fails the
// test unless the replies alternate between backends; each reply starts
// with its backend's one-letter name.
func udpRoundRobin(t *testing.T, client *net.UDPConn, n int) {
	t.Helper()
	var got []string
	for i := range n {
		r, err := udpAsk(client, fmt.Sprint(i), 1)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r[0][:1])
	}
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Fatalf("round robin over datagrams answered from %v: not alternating", got)
		}
	}
}
