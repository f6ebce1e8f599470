package e2e

// Faults: a backend that resets mid-stream, a backend black-holed by an
// nftables DROP rule in a network namespace, a discovery endpoint that is
// down for a while, and Caddy's autosave on a full disk.

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	t.Parallel() // with TestSoak
	t.Run("reset mid-stream", testFaultReset)
	t.Run("black-holed backend", testFaultBlackhole)
	t.Run("discovery down", testFaultDiscoveryDown)
	t.Run("autosave on a full disk", testFaultFullDisk)
}

// A backend that sends part of an answer and resets (SO_LINGER 0, Close):
// the client sees the end of its connection within a second.
func testFaultReset(t *testing.T) {
	resetAt := make(chan time.Time, 10)
	be := newBackend(t, func(c net.Conn) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write([]byte("partial answer\n"))
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		resetAt <- time.Now()
		c.Close()
	})
	addr := freeAddr(t)
	startCaddy(t, between(map[string]any{"reset": staticServer(shared(addr), be.addr)}))
	var worst time.Duration
	for i := range 5 {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("hello"))
		got := make([]byte, len("partial answer\n"))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("conn %d: reading the partial answer: %v", i, err)
		}
		n, err := c.Read(make([]byte, 64))
		closedAt := time.Now()
		c.Close()
		if n != 0 || err == nil {
			t.Fatalf("conn %d: read %d more bytes, %v; want the connection's end", i, n, err)
		}
		var at time.Time
		select {
		case at = <-resetAt:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend never reset")
		}
		d := closedAt.Sub(at)
		worst = max(worst, d)
		if d > time.Second {
			t.Errorf("conn %d: the client saw the end %s after the backend's reset (%v), want within 1s", i, d, err)
		}
		if !errors.Is(err, io.EOF) && !isReset(err) {
			t.Errorf("conn %d: the end came as %v, want EOF or a reset", i, err)
		}
	}
	t.Logf("reset mid-stream: the client saw the end at most %s after the backend's reset", worst.Round(time.Microsecond))
}

// nsVeth creates a veth pair between the root namespace and ns with
// 10.213.K.1/30 (root side) and 10.213.K.2/30 (ns side) and returns the
// ns-side address. The pair goes away with the namespace.
func nsVeth(t *testing.T, ip, ns string) string {
	t.Helper()
	for try := 0; try < 10; try++ {
		k := rand.IntN(250) + 1
		root := fmt.Sprintf("bhr%d", nsSeq.Add(1)+int64(os.Getpid()%1000)*100)
		peer := root + "n"
		if out, err := exec.Command(ip, "link", "add", root, "type", "veth", "peer", "name", peer, "netns", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip link add %s: %v\n%s", root, err, out)
		}
		t.Cleanup(func() { exec.Command(ip, "link", "del", root).Run() })
		cmds := [][]string{
			{"addr", "add", fmt.Sprintf("10.213.%d.1/30", k), "dev", root},
			{"link", "set", root, "up"},
			{"-n", ns, "addr", "add", fmt.Sprintf("10.213.%d.2/30", k), "dev", peer},
			{"-n", ns, "link", "set", peer, "up"},
		}
		ok := true
		for _, a := range cmds {
			if out, err := exec.Command(ip, a...).CombinedOutput(); err != nil {
				if a[0] == "addr" { // the subnet is taken here: try another
					ok = false
					exec.Command(ip, "link", "del", root).Run()
					break
				}
				t.Fatalf("ip %s: %v\n%s", strings.Join(a, " "), err, out)
			}
		}
		if ok {
			return fmt.Sprintf("10.213.%d.2", k)
		}
	}
	t.Fatal("no free 10.213.K.0/30 after 10 tries")
	return ""
}

// A backend whose SYNs are dropped (nftables in its network namespace):
// each dial to it times out at backend_connection_timeout and the client is
// served by the other backend; the added latency is about that timeout.
func testFaultBlackhole(t *testing.T) {
	nsNeedRoot(t)
	ip := needTool(t, "ip", "iproute2")
	nft := needTool(t, "nft", "nftables")
	ns := tpNetns(t, ip, "bh")
	host := nsVeth(t, ip, ns)
	var ln net.Listener
	tpInNetns(t, ns, func() error {
		var err error
		ln, err = net.Listen("tcp", host+":0")
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hole\n")
			c.Close()
		}
	}()
	hole := ln.Addr().String()
	if s, err := ask(hole); err != nil || s != "hole" {
		t.Fatalf("the namespace's backend %s before the rule: %q, %v", hole, s, err)
	}
	other := nameBackend(t, "other")

	const timeout = 300 * time.Millisecond
	addr := freeAddr(t)
	srv := staticServer(shared(addr), hole, other.addr)
	srv["balance"] = map[string]any{"policy": "roundrobin"}
	srv["backend_connection_timeout"] = timeout.String()
	srv["retries"] = 1
	c := startCaddy(t, between(map[string]any{"bh": srv}))
	got := map[string]int{}
	waitFor(t, 10*time.Second, "both backends to serve", func() bool {
		if s, err := ask(addr); err == nil {
			got[s]++
		}
		return got["hole"] > 0 && got["other"] > 0
	})

	_, port, _ := net.SplitHostPort(hole)
	rules := fmt.Sprintf("table inet between_bh {\n chain in {\n  type filter hook input priority 0; policy accept;\n  tcp dport %s drop\n }\n}\n", port)
	cmd := exec.Command(ip, "netns", "exec", ns, nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v\n%s", ns, err, out)
	}
	// the rule holds: a direct dial times out
	if conn, err := net.DialTimeout("tcp", hole, 500*time.Millisecond); err == nil {
		conn.Close()
		t.Fatalf("a direct dial to %s connected despite the DROP rule", hole)
	}

	var direct []time.Duration
	for range 10 {
		start := time.Now()
		if _, err := ask(other.addr); err != nil {
			t.Fatal(err)
		}
		direct = append(direct, time.Since(start))
	}
	slices.Sort(direct)
	var fast, slow []time.Duration
	for i := range 20 {
		start := time.Now()
		s, err := ask(addr)
		d := time.Since(start)
		if err != nil || s != "other" {
			t.Fatalf("connection %d with %s black-holed: %q, %v; want the other backend", i, hole, s, err)
		}
		if d >= timeout*9/10 {
			slow = append(slow, d)
		} else {
			fast = append(fast, d)
		}
	}
	slices.Sort(fast)
	slices.Sort(slow)
	if len(slow) == 0 {
		t.Fatalf("no connection was delayed by a dial to the black-holed backend (fast %v)", fast)
	}
	base := direct[len(direct)/2]
	added := slow[len(slow)/2] - base
	t.Logf("black-holed backend, backend_connection_timeout %s: %d of 20 connections went through a timed-out dial, "+
		"median latency %s (slowest %s) vs %s direct to the live backend: %s added", timeout, len(slow), slow[len(slow)/2].Round(time.Millisecond),
		slow[len(slow)-1].Round(time.Millisecond), base.Round(time.Microsecond), added.Round(time.Millisecond))
	if added < timeout*9/10 || added > timeout+time.Second {
		t.Errorf("added latency %s, want about backend_connection_timeout %s", added, timeout)
	}
	m := c.scrape(t)
	if r := metricSum(m, "between_backend_refused_connections_total", `server="bh"`, `backend="`+hole+`"`); r < float64(len(slow)) {
		t.Errorf("between_backend_refused_connections_total for %s = %g, want >= %d (one per timed-out dial)", hole, r, len(slow))
	}
}

// A json discovery endpoint that answers 503 and then refuses connections
// for a while (15 s in CI, 2.5 min in the long variant): the last list is
// kept, traffic continues to both backends, the error fetches are counted;
// when it comes back its new list applies.
func testFaultDiscoveryDown(t *testing.T) {
	down := 15 * time.Second
	if longRun() {
		down = 150 * time.Second
	}
	a, b := nameBackend(t, "a"), nameBackend(t, "b")
	var mu sync.Mutex
	status, list := http.StatusOK, fmt.Sprintf(`[{"host":"127.0.0.1","port":%q},{"host":"127.0.0.1","port":%q}]`, portStr(a.addr), portStr(b.addr))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if status != http.StatusOK {
			http.Error(w, "down for maintenance", status)
			return
		}
		io.WriteString(w, list)
	})
	site := freeAddr(t)
	serve := func() *http.Server {
		ln, err := listenRetry(site)
		if err != nil {
			t.Fatal(err)
		}
		s := &http.Server{Handler: handler}
		go s.Serve(ln)
		return s
	}
	srv := serve()
	t.Cleanup(func() { srv.Close() })

	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"dd": map[string]any{
		"listen":    []string{shared(addr)},
		"balance":   map[string]any{"policy": "roundrobin"},
		"discovery": map[string]any{"kind": "json", "json_endpoint": "http://" + site + "/list", "interval": "500ms"},
	}}))
	discWaitAnswers(t, addr, "a", "b")
	errs := func() float64 {
		return metricSum(c.scrape(t), "between_discovery_fetches_total", `server="dd"`, `result="error"`)
	}
	e0 := errs()

	// down: first 503, then nothing listening
	mu.Lock()
	status = http.StatusServiceUnavailable
	mu.Unlock()
	start := time.Now()
	answers := map[string]int{}
	refusedPhase := false
	for time.Since(start) < down {
		if !refusedPhase && time.Since(start) > down/2 {
			srv.Close()
			refusedPhase = true
		}
		s, err := ask(addr)
		if err != nil {
			t.Fatalf("%s into the discovery outage: %v", time.Since(start).Round(time.Millisecond), err)
		}
		answers[s]++
		time.Sleep(50 * time.Millisecond) // pacing of the probe load, not an assertion
	}
	e1 := errs()
	t.Logf("discovery down for %s (503, then connection refused): answers %v, discovery_fetches_total{result=error} %g -> %g",
		down, answers, e0, e1)
	if answers["a"] == 0 || answers["b"] == 0 || len(answers) != 2 {
		t.Errorf("answers during the outage %v, want both a and b (the last list kept)", answers)
	}
	if want := float64(down/time.Second) / 2 * 0.5; e1-e0 < want { // one fetch per 500ms interval, at least half of them
		t.Errorf("discovery_fetches_total{result=error} grew by %g during %s of outage, want >= %g", e1-e0, down, want)
	}
	if !discLoggedFailure(c, "503") || !discLoggedFailure(c, "refused") {
		t.Errorf("caddy did not log the discovery failures (503 and connection refused)")
	}

	// back, with only b listed: the new list applies
	mu.Lock()
	status, list = http.StatusOK, fmt.Sprintf(`[{"host":"127.0.0.1","port":%q}]`, portStr(b.addr))
	mu.Unlock()
	srv = serve()
	waitFor(t, 10*time.Second, "only b to answer (the new list)", func() bool {
		for range 6 {
			if s, err := ask(addr); err != nil || s != "b" {
				return false
			}
		}
		return true
	})
}

func portStr(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

// Caddy's autosave on a full disk: caddy's HOME/XDG dirs on a 64 KiB
// tmpfs, filled up after the start; a POST /load of a new config applies
// anyway. Caddy logs "unable to autosave config" and goes on (caddy.go,
// changeConfig: autosave errors are logged, never returned); os.WriteFile
// truncates before it writes, so the previous autosave is lost: what
// `caddy run --resume` would find is asserted below as it is.
func testFaultFullDisk(t *testing.T) {
	nsNeedRoot(t)
	mountBin := needTool(t, "mount", "mount")
	umountBin := needTool(t, "umount", "mount")
	dir := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mountBin, "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(umountBin, dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})

	oldBE, newBE := nameBackend(t, "old"), nameBackend(t, "new")
	addr := freeAddr(t)
	c := &instance{t: t, admin: freeAddr(t), home: dir}
	// the new config is larger than a page: os.WriteFile truncates the old
	// autosave first, which frees its page, so a config that fits in it
	// would still be saved on the "full" disk
	cfg := func(be string, pad int) string {
		srv := staticServer(shared(addr), be)
		rules := []string{}
		for i := range pad {
			rules = append(rules, fmt.Sprintf("allow 127.0.%d.%d", i/250, i%250+1))
		}
		srv["access"] = map[string]any{"default": "allow", "rules": rules}
		return fmt.Sprintf(`{"admin":{"listen":%q},"apps":%s}`, c.admin, between(map[string]any{"disk": srv}))
	}
	path := filepath.Join(t.TempDir(), "caddy.json") // the config file itself is not on the tmpfs
	if err := os.WriteFile(path, []byte(cfg(oldBE.addr, 0)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t, "run", "--config", path)
	autosave := filepath.Join(dir, "caddy", "autosave.json")
	waitFor(t, 5*time.Second, "the first autosave", func() bool {
		b, err := os.ReadFile(autosave)
		return err == nil && strings.Contains(string(b), oldBE.addr)
	})
	if s, err := ask(addr); err != nil || s != "old" {
		t.Fatalf("before the reload: %q, %v", s, err)
	}

	// fill the disk
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	var werr error
	for range 1000 { // 64 KiB fill up long before 4 MB
		if _, werr = filler.Write(chunk); werr != nil {
			break
		}
	}
	filler.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", werr)
	}

	resp, err := adminClient.Post("http://"+c.admin+"/load", "application/json", strings.NewReader(cfg(newBE.addr, 1000)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /load on a full disk: %d %s; want 200 (autosave failures are logged, not fatal)", resp.StatusCode, body)
	}
	waitFor(t, 5*time.Second, "the new config to serve", func() bool {
		s, err := ask(addr)
		return err == nil && s == "new"
	})
	waitFor(t, 5*time.Second, `"unable to autosave config" in the log`, func() bool {
		return strings.Contains(c.logs(), "unable to autosave config") && strings.Contains(c.logs(), "no space left on device")
	})
	saved, err := os.ReadFile(autosave)
	state := fmt.Sprintf("%d bytes", len(saved))
	switch {
	case err != nil:
		state = err.Error()
	case strings.Contains(string(saved), newBE.addr):
		t.Errorf("the autosave holds the new config although the disk is full (%d bytes)", len(saved))
	case strings.Contains(string(saved), oldBE.addr) && strings.HasSuffix(strings.TrimSpace(string(saved)), "}"):
		state += ", the old config intact"
	default:
		state += ", truncated (os.WriteFile truncates first): --resume would not load it"
	}
	t.Logf("autosave on a full disk: POST /load %d, new config serving, logged \"unable to autosave config\"; autosave.json: %s", resp.StatusCode, state)

	// room again: the next load is autosaved
	os.Remove(filepath.Join(dir, "filler"))
	resp, err = adminClient.Post("http://"+c.admin+"/load", "application/json", strings.NewReader(cfg(oldBE.addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, 5*time.Second, "the autosave after space came back", func() bool {
		b, err := os.ReadFile(autosave)
		return err == nil && strings.Contains(string(b), oldBE.addr) && strings.HasSuffix(strings.TrimSpace(string(b)), "}")
	})
}
