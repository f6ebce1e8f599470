package e2e

// Reloads under load: 15 000 short connections while POST /load alternates
// two configs every 50 ms, on a between+tcp/ address (root namespace) and on a
// plain address inside a network namespace with net.ipv4.tcp_migrate_req 0
// and 1. The namespace runs a copy of this test binary (netnsChild)
// that starts caddy, the backend and the clients inside it.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	nsLoadConns   = 15000
	nsLoadWorkers = 4
	nsLoadEvery   = 50 * time.Millisecond
	// nsLoadLimit bounds one setup's load phase.
	nsLoadLimit = 3 * time.Minute
	// nsChildEnv marks the copy of the test binary that runs
	// inside a network namespace.
	nsChildEnv     = "BETWEEN_E2E_NETNS_CHILD"
	nsResultPrefix = "BETWEEN-RELOAD-RESULT "
	// the warning Between logs for a plain TCP address while the sysctl is 0
	nsMigrateWarning = "tcp_migrate_req = 0"
)

// nsLoadResult is what one run of nsLoad measured.
type nsLoadResult struct {
	Listen         string         `json:"listen"`
	Conns          int            `json:"conns"`   // connections attempted
	Failed         int            `json:"failed"`  // connections that did not get their answer
	Reloads        int            `json:"reloads"` // successful POST /load
	FailedByKind   map[string]int `json:"failed_by_kind"`
	FirstErrors    []string       `json:"first_errors"`
	MigrateReq     string         `json:"migrate_req"`     // net.ipv4.tcp_migrate_req where it ran
	MigrateWarning bool           `json:"migrate_warning"` // caddy logged the tcp_migrate_req warning
	Seconds        float64        `json:"seconds"`
	// clients the between handler refused, by the reason it logged
	Refused map[string]int `json:"refused"`
	// caddy's log lines at WARN level and above (the first few)
	Warnings []string `json:"warnings"`
}

// nsLoad runs nsLoadConns connections (nsLoadWorkers in
// parallel: dial, write a byte, read the backend's answer, close) against a
// caddy listening on prefix+127.0.0.1:PORT while the test goroutine reloads
// between two different configs every nsLoadEvery.
func nsLoad(t *testing.T, prefix string) nsLoadResult {
	be := newBackend(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		c.Write(b)
	})
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	configs := [2]string{}
	for i := range configs {
		configs[i] = cmpApps(prefix+addr, []map[string]any{{
			"handle": []any{cmpHandler("load", map[string]any{"retries": 1 + i, "max_connections": 10000 + i}, be.addr)},
		}}, nil)
	}
	c := startCaddy(t, configs[0])
	res := nsLoadResult{Listen: prefix + addr, FailedByKind: map[string]int{}}
	if v, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req"); err == nil {
		res.MigrateReq = strings.TrimSpace(string(v))
	}

	var (
		next    atomic.Int64
		mu      sync.Mutex
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		done    = make(chan struct{})
		started = time.Now()
	)
	fail := func(kind string, err error) {
		mu.Lock()
		defer mu.Unlock()
		res.Failed++
		res.FailedByKind[kind]++
		if len(res.FirstErrors) < 5 {
			res.FirstErrors = append(res.FirstErrors, fmt.Sprintf("%s after %s: %v", kind, time.Since(started).Round(time.Millisecond), err))
		}
	}
	one := func(i int64) {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fail("dial", err)
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		out := []byte{byte('a' + i%26)}
		if _, err := nc.Write(out); err != nil {
			fail("write", err)
			return
		}
		in := make([]byte, 1)
		if _, err := io.ReadFull(nc, in); err != nil {
			kind := "read"
			if errors.Is(err, io.EOF) {
				kind = "read EOF"
			} else if errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "reset") {
				kind = "read reset"
			}
			fail(kind, err)
			return
		}
		if in[0] != out[0] {
			fail("wrong answer", fmt.Errorf("got %q, want %q", in, out))
		}
	}
	for range nsLoadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := next.Add(1)
				if i > nsLoadConns {
					return
				}
				one(i)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	defer func() { // also when a reload fails: no worker outlives the test
		close(stop)
		<-done
	}()

	limit := time.NewTimer(nsLoadLimit)
	defer limit.Stop()
	tick := time.NewTicker(nsLoadEvery)
	defer tick.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-limit.C:
			t.Fatalf("%s: only %d of %d connections done after %s", prefix+addr, min(next.Load(), nsLoadConns), nsLoadConns, nsLoadLimit)
		case <-tick.C:
			if code, body := c.load(configs[(res.Reloads+1)%2]); code != 200 {
				t.Fatalf("reload %d: %d %s", res.Reloads+1, code, body)
			}
			res.Reloads++
		}
	}
	res.Seconds = time.Since(started).Seconds()
	res.Conns = nsLoadConns
	logs := c.logs()
	res.MigrateWarning = strings.Contains(logs, nsMigrateWarning)
	res.Refused = map[string]int{}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"msg":"client refused"`) {
			var entry struct {
				Reason string
				Count  int // refusals the line stands for (refusal lines are rate-limited)
			}
			json.Unmarshal([]byte(line), &entry)
			res.Refused[entry.Reason] += max(entry.Count, 1)
		}
		if len(res.Warnings) < 10 && (strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`)) {
			res.Warnings = append(res.Warnings, line)
		}
	}
	// every served connection is in the handler's statistics, which
	// survive the reloads (a failed one may or may not have reached it)
	waitFor(t, 5*time.Second, "the statistics to count every served connection", func() bool {
		s := cmpGetStats(t, c, "load")
		return s.TotalConnections >= uint64(res.Conns-res.Failed) && s.TotalConnections <= uint64(res.Conns) && s.ActiveConnections == 0
	})
	return res
}

func nsLogResult(t *testing.T, setup string, r nsLoadResult) {
	t.Helper()
	kinds := make([]string, 0, len(r.FailedByKind))
	for k, n := range r.FailedByKind {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("%s: listen %s, tcp_migrate_req=%s: %d of %d connections failed %v, %d reloads in %.1fs, clients refused by between %v, migrate_req warning logged: %v",
		setup, r.Listen, r.MigrateReq, r.Failed, r.Conns, kinds, r.Reloads, r.Seconds, r.Refused, r.MigrateWarning)
	for _, e := range r.FirstErrors {
		t.Logf("  %s", e)
	}
	for _, w := range r.Warnings {
		t.Logf("  caddy: %s", w)
	}
}

func TestReloadNetns(t *testing.T) {
	if os.Getenv(nsChildEnv) != "" {
		netnsChild(t)
		return
	}
	t.Run("between+tcp", func(t *testing.T) {
		r := nsLoad(t, "between+tcp/")
		nsLogResult(t, "between+tcp/ in the root namespace", r)
		if r.Failed != 0 {
			t.Errorf("%d connections failed across %d reloads on a between+tcp/ address, want 0 (between refused %v)", r.Failed, r.Reloads, r.Refused)
		}
		if r.MigrateWarning {
			t.Errorf("the tcp_migrate_req warning was logged for a between+tcp/ address")
		}
		nsCheckReloads(t, r)
	})
	for _, migrate := range []int{0, 1} {
		t.Run(fmt.Sprintf("plain,tcp_migrate_req=%d", migrate), func(t *testing.T) {
			r := nsLoadInNetns(t, migrate)
			nsLogResult(t, fmt.Sprintf("plain address in a netns with tcp_migrate_req=%d", migrate), r)
			if r.MigrateReq != strconv.Itoa(migrate) {
				t.Fatalf("the child saw tcp_migrate_req=%q, want %d", r.MigrateReq, migrate)
			}
			nsCheckReloads(t, r)
			if migrate == 1 {
				// The kernel migrates queued connections to the new
				// config's socket, but not every time under a reload
				// every 50 ms: a handshake that completes just as its
				// migration target closes too is reset (1 of 15 000 seen
				// once in CI). Without the sysctl it is dozens per
				// thousand; between+tcp/ above must lose none.
				if r.Failed > r.Conns/5000 {
					t.Errorf("%d of %d connections failed across %d reloads with tcp_migrate_req=1, want at most 1 in 5000 (between refused %v)", r.Failed, r.Conns, r.Reloads, r.Refused)
				}
				if r.MigrateWarning {
					t.Errorf("the tcp_migrate_req warning was logged although the sysctl is 1")
				}
			} else if !r.MigrateWarning {
				t.Errorf("no tcp_migrate_req warning logged for a plain TCP address with the sysctl at 0")
			}
		})
	}
}

func nsCheckReloads(t *testing.T, r nsLoadResult) {
	t.Helper()
	if r.Reloads < 10 {
		t.Errorf("only %d reloads happened during the load, want at least 10", r.Reloads)
	}
}

// netnsChild is the part of TestReloadNetns that runs inside a network
// namespace, in a copy of the test binary that nsLoadInNetns starts with
// nsChildEnv set; it reports its result on stdout.
func netnsChild(t *testing.T) {
	r := nsLoad(t, "")
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\n%s%s\n", nsResultPrefix, b)
}

// nsNeedRoot skips (fails in CI) when the test cannot create network namespaces.
func nsNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("network namespaces need root; CI runs as root")
	}
	t.Skip("network namespaces need root; skipping")
}

var nsSeq atomic.Int64

// nsLoadInNetns creates a network namespace with lo up and the
// given net.ipv4.tcp_migrate_req, runs netnsChild in it, and
// returns its result. The namespace and everything left in it go away
// with the test.
func nsLoadInNetns(t *testing.T, migrate int) nsLoadResult {
	nsNeedRoot(t)
	ip := needTool(t, "ip", "iproute2")
	sysctl := needTool(t, "sysctl", "procps")
	run := func(name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	ns := fmt.Sprintf("between-e2e-%d-%d", os.Getpid(), nsSeq.Add(1))
	run(ip, "netns", "add", ns)
	t.Cleanup(func() {
		// stop what is still running in the namespace (only processes this
		// test started can be there), then delete it
		if out, err := exec.Command(ip, "netns", "pids", ns).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
					if p, err := os.FindProcess(pid); err == nil {
						p.Kill()
					}
				}
			}
		}
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	run(ip, "-n", ns, "link", "set", "lo", "up")
	key := "net.ipv4.tcp_migrate_req"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out, err := exec.CommandContext(ctx, ip, "netns", "exec", ns, sysctl, "-w", fmt.Sprintf("%s=%d", key, migrate)).CombinedOutput()
	cancel()
	if err != nil {
		// the sysctl exists since Linux 5.14
		if os.Getenv("CI") == "true" {
			t.Fatalf("sysctl -w %s=%d in the namespace: %v\n%s", key, migrate, err, out)
		}
		t.Skipf("sysctl -w %s=%d in the namespace: %v\n%s", key, migrate, err, out)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), nsLoadLimit+2*time.Minute)
	defer cancel()
	// ip netns exec replaces itself with the test binary: the child's PID
	// is the one started here
	cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, exe,
		"-test.run=^TestReloadNetns$", "-test.count=1", "-test.v", "-test.timeout="+(nsLoadLimit+time.Minute).String())
	cmd.Env = append(os.Environ(), nsChildEnv+"=1", "BETWEEN_CADDY="+caddyBin)
	cmd.Dir = t.TempDir()
	cmd.WaitDelay = 10 * time.Second
	var output strings.Builder
	cmd.Stdout, cmd.Stderr = &output, &output
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("the test binary in namespace %s did not finish in time; output:\n%s", ns, tail(output.String(), logTail()))
	}
	if err != nil {
		t.Fatalf("the test binary in namespace %s: %v; output:\n%s", ns, err, tail(output.String(), logTail()))
	}
	sc := bufio.NewScanner(strings.NewReader(output.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), nsResultPrefix); ok {
			var r nsLoadResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("result %q: %v", line, err)
			}
			return r
		}
	}
	t.Fatalf("the test binary in namespace %s reported no result; output:\n%s", ns, tail(output.String(), logTail()))
	return nsLoadResult{}
}
