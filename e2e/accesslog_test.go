package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// accessLogger is the name of the between handler's access logger.
const accessLogger = "layer4.handlers.between.access"

// jsonLines parses the JSON log lines of text for which keep is true.
func jsonLines(text string, keep func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(text, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// accessLines are the access log lines in text.
func accessLines(text string) []map[string]any {
	return jsonLines(text, func(e map[string]any) bool { return e["logger"] == accessLogger })
}

// echoOnce sends payload through addr to an echo backend, half-closes and
// reads the echo back; it returns the client's local address.
func echoOnce(addr string, payload []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if !bytes.Equal(got, payload) {
		return "", fmt.Errorf("echo: got %d bytes, want %d", len(got), len(payload))
	}
	return c.LocalAddr().String(), nil
}

// TestAccessLog: every proxied connection gives one INFO line on the access
// logger with its client, handler, backend, duration, bytes each way and why
// it closed.
func TestAccessLog(t *testing.T) {
	addr := freeAddr(t)
	echo := echoBackend(t)
	c := startCaddy(t, between(map[string]any{"web": staticServer(shared(addr), echo.addr)}))
	const n = 20
	want := map[string]int{} // client -> payload size
	for i := range n {
		size := 100 + i
		client, err := echoOnce(addr, bytes.Repeat([]byte{'x'}, size))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		want[client] = size
	}
	var lines []map[string]any
	waitFor(t, 5*time.Second, fmt.Sprintf("%d access lines", n), func() bool {
		lines = accessLines(c.logs())
		return len(lines) >= n
	})
	if len(lines) != n {
		t.Fatalf("%d access lines for %d connections", len(lines), n)
	}
	t.Logf("an access line: %v", lines[0])
	for _, e := range lines {
		client, _ := e["client"].(string)
		size, ok := want[client]
		if !ok {
			t.Errorf("access line for an unknown client: %v", e)
			continue
		}
		delete(want, client)
		if e["level"] != "info" || e["msg"] != "connection closed" || e["handler"] != "web" || e["backend"] != echo.addr ||
			e["tx"] != float64(size) || e["rx"] != float64(size) || e["close_reason"] != "client closed" {
			t.Errorf("access line %v, want level info, handler web, backend %s, tx=rx=%d, close_reason client closed (the client half-closes first)", e, echo.addr, size)
		}
		if _, ok := e["duration"].(float64); !ok {
			t.Errorf("access line without a numeric duration: %v", e)
		}
		if _, ok := e["error"]; ok {
			t.Errorf("access line of a clean close with an error: %v", e)
		}
	}
}

// TestRefusalLogRateLimited: a flood of denied clients gives a few lines
// whose counts add up to every refusal, not a line per client.
func TestRefusalLogRateLimited(t *testing.T) {
	addr := freeAddr(t)
	srv := staticServer(shared(addr), nameBackend(t, "web").addr)
	srv["access"] = map[string]any{"default": "allow", "rules": []string{"deny 127.0.0.2"}}
	c := startCaddy(t, between(map[string]any{"flood": srv}))
	const n = 500
	started := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range 50 {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 2 * time.Second}
			for range next {
				conn, err := d.Dial("tcp", addr)
				if err == nil {
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					var b [16]byte
					var k int
					k, err = conn.Read(b[:])
					conn.Close()
					if err == io.EOF && k == 0 {
						err = nil // refused: closed without a byte
					} else if err == nil {
						err = fmt.Errorf("denied client got %q", b[:k])
					}
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	flood := time.Since(started)
	if len(failed) > 0 {
		t.Fatalf("%d of %d denied clients not closed cleanly, first: %v", len(failed), n, failed[0])
	}
	refusals := func() ([]map[string]any, int) {
		lines := jsonLines(c.logs(), func(e map[string]any) bool {
			return e["msg"] == "client denied by access rules" && e["handler"] == "flood"
		})
		sum := 0
		for _, e := range lines {
			k, _ := e["count"].(float64)
			sum += int(k)
		}
		return lines, sum
	}
	// the remainder of the last second is flushed within about a second
	waitFor(t, 5*time.Second, "refusal counts adding up to every denied client", func() bool {
		_, sum := refusals()
		return sum >= n
	})
	lines, sum := refusals()
	counts := make([]any, len(lines))
	for i, e := range lines {
		counts[i] = e["count"]
	}
	t.Logf("%d denied clients in %v: %d lines with counts %v", n, flood.Round(time.Millisecond), len(lines), counts)
	if sum != n {
		t.Errorf("counts sum to %d, want %d", sum, n)
	}
	// one line per second at most, plus the first refusal and the flush
	if limit := int(flood/time.Second) + 3; len(lines) > limit {
		t.Errorf("%d refusal lines for a %v flood, want at most %d", len(lines), flood, limit)
	}
	if a := accessLines(c.logs()); len(a) != 0 {
		t.Errorf("access lines for refused clients: %v", a[0])
	}
	// traffic from elsewhere still flows
	if name, err := ask(addr); err != nil || name != "web" {
		t.Fatalf("allowed client: got %q, %v", name, err)
	}
}

// TestAccessLogExcluded: Caddy's logging config switches the access log off
// (exclude on the default log) and sends it to a file instead (include),
// while traffic flows and the handler's other lines still appear.
func TestAccessLogExcluded(t *testing.T) {
	addr := freeAddr(t)
	backend := nameBackend(t, "web")
	file := filepath.Join(t.TempDir(), "access.log")
	apps := between(map[string]any{"quiet": staticServer(shared(addr), backend.addr)})
	c := &instance{t: t, admin: freeAddr(t)}
	cfg := fmt.Sprintf(`{"admin":{"listen":%q},"logging":{"logs":{
		"default":{"level":"DEBUG","exclude":[%q]},
		"access":{"writer":{"output":"file","filename":%q},"include":[%q]}}},"apps":%s}`,
		c.admin, accessLogger, file, accessLogger, apps)
	path := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(t, "run", "--config", path)
	const n = 5
	var clients []string
	for i := range n {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		got, err := io.ReadAll(conn)
		clients = append(clients, conn.LocalAddr().String())
		conn.Close()
		if err != nil || string(got) != "web\n" {
			t.Fatalf("connection %d: got %q, %v; want web", i, got, err)
		}
	}
	var lines []map[string]any
	waitFor(t, 5*time.Second, fmt.Sprintf("%d access lines in the file", n), func() bool {
		b, _ := os.ReadFile(file)
		lines = accessLines(string(b))
		return len(lines) >= n
	})
	var got []string
	for _, e := range lines {
		got = append(got, fmt.Sprint(e["client"]))
		if e["handler"] != "quiet" || e["backend"] != backend.addr || e["rx"] != float64(4) || e["tx"] != float64(0) {
			t.Errorf("access line %v", e)
		}
	}
	slices.Sort(got)
	slices.Sort(clients)
	if !slices.Equal(got, clients) {
		t.Errorf("access lines for clients %v, want %v", got, clients)
	}
	// each line goes to every log in one write: by now the default log
	// would hold at least n-1 of them
	if a := accessLines(c.logs()); len(a) != 0 {
		t.Errorf("access line in the default log although excluded: %v", a[0])
	}
	if !c.logged("between handler started", map[string]any{"handler": "quiet"}) {
		t.Error("the handler's other lines are gone from the default log too")
	}
}
