package e2e

// Memory per idle UDP session: a real caddy on a between+udp listener with
// client_idle_timeout 60s and no udp limit, so that sessions stay open (with
// max_responses a between+udp session with nothing in flight ends a second
// after its last datagram, and there would be nothing idle to measure); many
// distinct clients (each its own address in 127.0.0.0/8) send one datagram,
// get the reply, then go quiet, so every session sits idle with its virtual
// session's socket open and its reply reader waiting. The RSS growth of the caddy process divided by the sessions is the
// cost of one idle session, Between's and caddy-l4's together (a heap and a
// goroutine profile tell them apart).
//
// TestUDPMemoryPerSession (CI) runs 5 000 sessions and bounds the growth.
// TestUDPMemoryLong (BETWEEN_LONG=1) runs 100 000 (BETWEEN_UDP_SESSIONS;
// fewer when the open file limit cannot be raised that far, as caddy needs
// a socket per session) and the same against nginx's stream proxy
// (proxy_responses 1, proxy_timeout 60s) for comparison, and logs the
// profiles' top entries.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// maxIdleUDPSessionRSS and maxIdleUDPSessionHeap bound the growth per idle
// session in TestUDPMemoryPerSession of the RSS and of the Go heap in use.
// Measured on Linux/amd64 (Go 1.26, 5 000 and 18 000 sessions): RSS about
// 18 KiB, of which the stacks of two goroutines (caddy-l4's and the parked
// reply reader's) are 12.5 KiB, heap in use 8-10 KiB. While a client
// session and every parked virtual session each held a 64 KiB buffer the
// heap in use grew 138 KiB per session (RSS only 25 KiB: most of those
// buffers' pages were never written, until reuse dirtied them).
const (
	maxIdleUDPSessionRSS  = 32 << 10
	maxIdleUDPSessionHeap = 24 << 10
)

func TestUDPMemoryPerSession(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	r := measureCaddyUDPMemory(t, 5000, false)
	if r.perSession > maxIdleUDPSessionRSS {
		t.Errorf("RSS grew %d bytes per idle UDP session, want at most %d", r.perSession, maxIdleUDPSessionRSS)
	}
	if r.heapPerSession > maxIdleUDPSessionHeap {
		t.Errorf("the Go heap in use grew %d bytes per idle UDP session, want at most %d", r.heapPerSession, maxIdleUDPSessionHeap)
	}
}

func TestUDPMemoryLong(t *testing.T) {
	if os.Getenv("BETWEEN_LONG") != "1" {
		t.Skip("BETWEEN_LONG=1 runs it (100 000 UDP sessions: a minute, a few GB at worst)")
	}
	n := 100000
	if s := os.Getenv("BETWEEN_UDP_SESSIONS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	// Caddy holds a socket per session (the parked one): raise the file
	// limit (caddy inherits it) if we may, else measure as many sessions
	// as the limit allows.
	want := uint64(n + 5000)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			n = int(lim.Max) - 2000
			t.Logf("cannot raise the open file limit from %d to %d (needs CAP_SYS_RESOURCE): %v; measuring %d sessions", lim.Max, want, err, n)
		}
	}
	c := measureCaddyUDPMemory(t, n, true)
	ng := measureNginxUDPMemory(t, n)
	t.Logf("per idle UDP session, %d sessions: between %d bytes RSS (%d goroutines per session), nginx %d bytes RSS",
		n, c.perSession, c.goroutines/int64(n), ng)
}

// udpMemResult is what measureCaddyUDPMemory found.
type udpMemResult struct {
	perSession     int64 // RSS growth per session, bytes
	heapPerSession int64 // Go heap in use growth per session, bytes
	goroutines     int64 // goroutine count growth
}

// measureCaddyUDPMemory starts caddy with a between+udp listener, opens n
// idle sessions and returns the RSS growth per session.
func measureCaddyUDPMemory(t *testing.T, n int, profiles bool) udpMemResult {
	backend := udpEchoServer(t, 2)
	listen := freeUDPAddr(t)
	srv := udpServer("between+udp/"+listen, map[string]any{"max_sessions": 2*n + 1000},
		map[string]any{"client_idle_timeout": "60s"}, backend)
	c := startCaddyAt(t, "INFO", between(map[string]any{"mem": srv}))
	pid := c.cmd.Process.Pid
	if lim := procLimit(pid, "Max open files"); lim > 0 && lim < n+1000 {
		t.Fatalf("caddy may open %d files, needs more than %d", lim, n)
	}

	// Warm up: code paths, pools, the listener's first allocations.
	if got := openUDPSessions(t, listen, 1<<20, 500); got < 450 {
		t.Fatalf("warm-up: %d of 500 sessions replied", got)
	}
	time.Sleep(500 * time.Millisecond)
	rss0, g0, m0 := procRSS(t, pid), goroutineCount(t, c.admin), goMemStats(t, c.admin)
	start := time.Now()
	got := openUDPSessions(t, listen, 2<<20, n)
	took := time.Since(start)
	if got < n*99/100 {
		t.Fatalf("%d of %d sessions got their reply", got, n)
	}
	time.Sleep(time.Second) // replies written, readers waiting
	rss1, g1, m1 := procRSS(t, pid), goroutineCount(t, c.admin), goMemStats(t, c.admin)
	r := udpMemResult{perSession: (rss1 - rss0) / int64(n), heapPerSession: (m1.heapInuse - m0.heapInuse) / int64(n), goroutines: g1 - g0}
	if g1-g0 < int64(n)*3/2 {
		// caddy-l4's handler and the reply reader: two per open session
		t.Fatalf("goroutines %d -> %d for %d sessions: the sessions are not all open, nothing idle was measured", g0, g1, n)
	}
	t.Logf("caddy: %d sessions (%d replied) in %s; RSS %d -> %d MiB: %d bytes per session; goroutines %d -> %d (%.2f per session)",
		n, got, took.Round(time.Millisecond), rss0>>20, rss1>>20, r.perSession, g0, g1, float64(g1-g0)/float64(n))
	t.Logf("caddy per session: heap in use +%d bytes, goroutine stacks +%d bytes (Go's own counters, no forced collection)",
		r.heapPerSession, (m1.stackInuse-m0.stackInuse)/int64(n))
	if profiles {
		logHeapProfile(t, c.admin)
	}
	return r
}

// openUDPSessions opens n UDP sessions on the proxy at addr, in batches:
// each from a client socket of its own on a distinct address in
// 127.0.0.0/8 (127.10.0.0 + first + i), which sends one datagram, waits
// for the reply and closes. It returns how many got their reply.
func openUDPSessions(t *testing.T, addr string, first, n int) int {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 256
	replied := 0
	buf := make([]byte, 2048)
	conns := make([]*net.UDPConn, 0, batch)
	for i := 0; i < n; i += batch {
		conns = conns[:0]
		for j := i; j < min(n, i+batch); j++ {
			k := first + j
			src := &net.UDPAddr{IP: net.IPv4(127, byte(10+k>>16), byte(k>>8), byte(k))}
			uc, err := net.ListenUDP("udp", src)
			if err != nil {
				t.Fatalf("client socket %d on %s: %v", j, src, err)
			}
			conns = append(conns, uc)
			uc.WriteToUDP([]byte("q"), dst)
		}
		deadline := time.Now().Add(3 * time.Second)
		for attempt := 0; attempt < 2; attempt++ {
			left := conns[:0]
			for _, uc := range conns {
				uc.SetReadDeadline(deadline)
				if _, _, err := uc.ReadFromUDP(buf); err == nil {
					replied++
					uc.Close()
					continue
				}
				left = append(left, uc)
			}
			conns = left
			// The ones that got nothing send again once (the same
			// session if the first datagram started it).
			deadline = time.Now().Add(2 * time.Second)
			for _, uc := range conns {
				if attempt == 0 {
					uc.WriteToUDP([]byte("q"), dst)
				}
			}
		}
		for _, uc := range conns {
			uc.Close()
		}
	}
	return replied
}

// procRSS returns the resident set of process pid, bytes.
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// procLimit returns the soft limit named (as in /proc/PID/limits) of pid,
// -1 if unknown or unlimited.
func procLimit(pid int, name string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// goMem are the Go runtime's memory counters of a caddy process.
type goMem struct{ heapInuse, stackInuse int64 }

// goMemStats reads go_memstats_heap_inuse_bytes and
// go_memstats_stack_inuse_bytes from the admin endpoint's /metrics.
func goMemStats(t *testing.T, admin string) goMem {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m goMem
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "go_memstats_heap_inuse_bytes":
			m.heapInuse = int64(v)
		case "go_memstats_stack_inuse_bytes":
			m.stackInuse = int64(v)
		}
	}
	return m
}

// goroutineCount reads the goroutine total from the admin endpoint.
func goroutineCount(t *testing.T, admin string) int64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	// "goroutine profile: total 123"
	f := strings.Fields(line)
	if len(f) == 0 {
		t.Fatalf("goroutine profile: %q", line)
	}
	n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("goroutine profile: %q", line)
	}
	return n
}

// logHeapProfile saves caddy's heap profile (after a collection) and logs
// its top entries by space in use, when the go tool is there to read it;
// the directory is BETWEEN_MEM_PROFILES if set (kept), else a temp dir.
func logHeapProfile(t *testing.T, admin string) {
	dir := os.Getenv("BETWEEN_MEM_PROFILES")
	if dir == "" {
		dir = t.TempDir()
	}
	for _, p := range []struct{ name, url string }{
		{"heap.pb.gz", "/debug/pprof/heap?gc=1"},
		{"goroutine.txt", "/debug/pprof/goroutine?debug=1"},
	} {
		resp, err := http.Get("http://" + admin + p.url)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p.name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return
	}
	for _, args := range [][]string{
		{"tool", "pprof", "-top", "-nodecount=25", "-sample_index=inuse_space", filepath.Join(dir, "heap.pb.gz")},
		{"tool", "pprof", "-top", "-cum", "-nodecount=40", "-sample_index=inuse_space", filepath.Join(dir, "heap.pb.gz")},
	} {
		out, err := exec.Command(goTool, args...).CombinedOutput()
		if err != nil {
			t.Logf("pprof: %v: %s", err, out)
			return
		}
		t.Logf("caddy heap in use (%s):\n%s", strings.Join(args[3:5], " "), out)
	}
	g, _ := os.ReadFile(filepath.Join(dir, "goroutine.txt"))
	// The goroutine stacks that hold most, first lines only.
	var top bytes.Buffer
	for i, block := range strings.Split(string(g), "\n\n") {
		if i >= 6 {
			break
		}
		lines := strings.Split(block, "\n")
		top.WriteString(strings.Join(lines[:min(len(lines), 8)], "\n") + "\n\n")
	}
	t.Logf("caddy goroutines:\n%s", top.String())
}

// measureNginxUDPMemory runs nginx's stream proxy (one worker) in front of
// an echo backend with proxy_responses 1 and proxy_timeout 60s, opens n
// sessions and returns the RSS growth of master and worker per session.
func measureNginxUDPMemory(t *testing.T, n int) int64 {
	nginx := needTool(t, "nginx", "nginx + libnginx-mod-stream")
	backend := udpEchoServer(t, 2)
	listen := freeUDPAddr(t)
	dir := t.TempDir()
	conf := fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
pid %[1]s/nginx.pid;
error_log stderr warn;
worker_processes 1;
worker_rlimit_nofile %[4]d;
events { worker_connections %[4]d; }
stream {
    server {
        listen %[2]s udp;
        proxy_pass %[3]s;
        proxy_responses 1;
        proxy_timeout 60s;
    }
}
`, dir, listen, backend, 2*n+1000)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(nginx, "-e", "stderr", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("nginx output:\n%s", logs.String())
		}
	})
	pids := func() []int {
		ps := []int{cmd.Process.Pid}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				ps = append(ps, p)
			}
		}
		return ps
	}
	rss := func() int64 {
		var sum int64
		for _, p := range pids() {
			sum += procRSS(t, p)
		}
		return sum
	}
	waitFor(t, 10*time.Second, "nginx up", func() bool {
		return openUDPSessions(t, listen, 3<<20, 1) == 1
	})
	if got := openUDPSessions(t, listen, 3<<20+10, 500); got < 450 {
		t.Fatalf("nginx warm-up: %d of 500 sessions replied", got)
	}
	time.Sleep(500 * time.Millisecond)
	rss0 := rss()
	start := time.Now()
	got := openUDPSessions(t, listen, 4<<20, n)
	took := time.Since(start)
	time.Sleep(time.Second)
	rss1 := rss()
	per := (rss1 - rss0) / int64(n)
	t.Logf("nginx: %d sessions (%d replied) in %s; RSS %d -> %d MiB (master + worker): %d bytes per session",
		n, got, took.Round(time.Millisecond), rss0>>20, rss1>>20, per)
	return per
}
