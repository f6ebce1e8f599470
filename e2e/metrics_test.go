package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape returns the samples of GET /metrics on the admin endpoint that start
// with between_, keyed by name and labels as Prometheus prints them
// (`between_backend_up{backend="127.0.0.1:80",server="web"}`).
func (c *instance) scrape(t testing.TB) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "between_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// echoFrom sends n bytes from a client bound to localIP, half-closes and
// returns how many bytes came back.
func echoFrom(t *testing.T, localIP, addr string, n int) int {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	got, _ := io.Copy(io.Discard, conn)
	return int(got)
}

func TestMetricsExactAcrossReload(t *testing.T) {
	const conns, size = 5, 1000
	echo := echoBackend(t)
	addr, otherAddr := freeAddr(t), freeAddr(t)
	web := staticServer(shared(addr), echo.addr)
	web["access"] = map[string]any{"default": "allow", "rules": []string{"deny 127.0.0.2"}}
	other := staticServer(shared(otherAddr), echo.addr)
	cfg := between(map[string]any{"web": web, "other": other})
	c := startCaddy(t, cfg)

	for range conns {
		if got := echoFrom(t, "127.0.0.1", addr, size); got != size {
			t.Fatalf("echoed %d bytes, want %d", got, size)
		}
	}
	// a client the access rules deny: closed without a byte
	if got := echoFrom(t, "127.0.0.2", addr, size); got != 0 {
		t.Fatalf("a denied client got %d bytes back", got)
	}

	srv := func(name, server string) string { return fmt.Sprintf("between_%s{server=%q}", name, server) }
	be := func(name string) string { return fmt.Sprintf("between_%s{backend=%q,server=\"web\"}", name, echo.addr) }
	want := map[string]float64{
		srv("server_backends", "web"):                                  1,
		srv("server_active_connections", "web"):                        0,
		srv("server_connections_total", "web"):                         conns,
		srv("server_refused_connections_total", "web"):                 1,
		srv("server_rx_bytes_total", "web"):                            conns * size,
		srv("server_tx_bytes_total", "web"):                            conns * size,
		be("backend_up"):                                               1,
		be("backend_active_connections"):                               0,
		be("backend_connections_total"):                                conns,
		be("backend_refused_connections_total"):                        0,
		be("backend_rx_bytes_total"):                                   conns * size,
		be("backend_tx_bytes_total"):                                   conns * size,
		`between_discovery_fetches_total{result="error",server="web"}`: 0,
	}
	okFetches := `between_discovery_fetches_total{result="ok",server="web"}`
	// check waits until the counters reach want (a connection's bytes are
	// counted when it ends), then requires every value exactly.
	check := func(stage string, minFetches float64) map[string]float64 {
		t.Helper()
		var m map[string]float64
		waitFor(t, 10*time.Second, stage+": between metrics", func() bool {
			m = c.scrape(t)
			return m[srv("server_rx_bytes_total", "web")] == conns*size && m[srv("server_refused_connections_total", "web")] == 1 &&
				m[be("backend_up")] == 1 && m[okFetches] >= minFetches
		})
		for k, v := range want {
			got, ok := m[k]
			if !ok {
				t.Errorf("%s: %s missing from /metrics", stage, k)
			} else if got != v {
				t.Errorf("%s: %s = %g, want %g", stage, k, got, v)
			}
		}
		return m
	}
	m := check("after traffic", 1)
	if _, ok := m[srv("server_connections_total", "other")]; !ok {
		t.Errorf("handler other missing from /metrics")
	}
	fetches := m[okFetches]

	// the same config again: same states, same counters
	if code, body := c.load(cfg); code != 200 {
		t.Fatalf("reload with the same config: %d %s", code, body)
	}
	m = check("after reloading the same config", fetches)
	fetches = m[okFetches]

	// a changed handler (new state, inherited totals) and a removed one
	web["retries"] = 2
	if code, body := c.load(between(map[string]any{"web": web})); code != 200 {
		t.Fatalf("reload with a changed handler: %d %s", code, body)
	}
	// the new state's discovery fetched once more on top of the inherited count
	m = check("after changing the handler", fetches+1)
	for k := range m {
		if strings.Contains(k, `server="other"`) {
			t.Errorf("removed handler still on /metrics: %s", k)
		}
	}
}
